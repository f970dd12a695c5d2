"""Task selection on constructed feature sets: metrics, plateau rule, strategies, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtft_ray.errors import MtftError
from mtft_ray.selection import (
    STRATEGIES, SetStats, ablations, consistency, coverage, greedy_select, mahalanobis_diversity,
    plateau_k, plot_selection, select, task_means,
)

D = 16


def _axis(i: int, d: int = D) -> np.ndarray:
    e = np.zeros(d, np.float32)
    e[i] = 1.0
    return e


def _around(direction: np.ndarray, n: int, rng, spread: float = 0.05) -> np.ndarray:
    return (direction + spread * rng.standard_normal((n, len(direction)))).astype(np.float32)


@pytest.fixture
def two_directions():
    """Target spread over e0 and e1; pool blocks of 10 samples near e0, e1, e2 and e0+e1."""
    rng = np.random.default_rng(0)
    target = np.concatenate([_around(_axis(0), 20, rng), _around(_axis(1), 20, rng)])
    features = np.concatenate([_around(_axis(0), 10, rng), _around(_axis(1), 10, rng),
                               _around(_axis(2), 10, rng), _around((_axis(0) + _axis(1)) / 2, 10, rng)])
    tasks = {"e0": np.arange(0, 10), "e1": np.arange(10, 20), "e2": np.arange(20, 30), "mid": np.arange(30, 40)}
    return features, tasks, target


@pytest.fixture
def random_pool():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((400, 24)).astype(np.float32)
    task_samples = rng.integers(0, 400, size=(40, 12))
    target = rng.standard_normal((8, 24)).astype(np.float32) + features[task_samples[7]].mean(0)
    return features, task_samples, target


def _ledoit_wolf_distance(x: np.ndarray, target_mean: np.ndarray) -> float:
    """Textbook computation (scikit-learn's ``ledoit_wolf`` formula) on the centred samples."""
    x = x.astype(np.float64)
    n, d = x.shape
    xc = x - x.mean(0)
    s = xc.T @ xc / n
    nu = np.trace(s) / d
    beta = ((xc**2).T @ (xc**2)).sum() / n - (s**2).sum()
    beta /= d * n
    delta = ((s - nu * np.eye(d)) ** 2).sum() / d
    alpha = min(beta, delta) / delta
    sigma = (1 - alpha) * s + alpha * nu * np.eye(d)
    v = target_mean - x.mean(0)
    return float(np.sqrt(v @ np.linalg.solve(sigma, v)))


# --- metrics -------------------------------------------------------------------------------


def test_candidate_identical_to_target_has_consistency_one_and_ranks_first(random_pool):
    features, task_samples, _ = random_pool
    target = features[task_samples[23]]
    cons = consistency(task_means(features, task_samples), target.mean(0))
    assert cons[23] == pytest.approx(1.0, abs=1e-6)
    assert cons.max() <= 1.0 + 1e-9 and np.sum(cons > 1 - 1e-6) == 1
    result = greedy_select(features, task_samples, target, max_k=3)
    assert result.selected[0] == 23 and result.consistency[0] == pytest.approx(1.0, abs=1e-6)


def test_task_means_match_direct_mean(random_pool):
    features, task_samples, _ = random_pool
    np.testing.assert_allclose(task_means(features, task_samples), features[task_samples].mean(1), atol=1e-5)


def test_new_direction_increases_coverage_and_mahalanobis_diversity(two_directions):
    features, tasks, target = two_directions
    one = features[tasks["e0"]]
    both = features[np.concatenate([tasks["e0"], tasks["e1"]])]
    assert coverage(one, target) == pytest.approx(0.5, abs=0.05)  # half the target is covered
    assert coverage(both, target) > 0.95
    assert mahalanobis_diversity(both, target) > mahalanobis_diversity(one, target) + 1.0
    # an unrelated direction adds nothing to coverage, and never lowers it
    stats = SetStats(features, target)
    stats.add(np.concatenate([tasks["e0"], tasks["e1"]]))
    before = stats.coverage()
    stats.add(tasks["e2"])
    assert before <= stats.coverage() <= before + 1e-6


def test_greedy_walk_ranks_by_consistency_and_covers_both_directions(two_directions):
    features, tasks, target = two_directions
    task_samples = np.stack([tasks[name] for name in ("e2", "e0", "e1", "mid")])
    result = greedy_select(features, task_samples, target, measure="coverage", rel_tol=0.01, patience=1)
    assert result.selected[0] == 3  # "mid" points where the target mean does
    assert set(result.selected) >= {1, 2} and 0 not in result.selected
    assert result.coverage_curve == sorted(result.coverage_curve)  # coverage never decreases
    assert result.coverage > 0.95


def test_shrinkage_keeps_distance_finite_and_matches_textbook_when_samples_below_dims():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((10, 64)).astype(np.float32) * np.linspace(0.2, 2, 64, dtype=np.float32)
    target = rng.standard_normal((5, 64)).astype(np.float32)
    assert np.linalg.matrix_rank(np.cov(x.T)) < 64  # the plain covariance is singular
    stats = SetStats(x, target)
    stats.add(np.arange(10))
    dist = stats.mahalanobis_distance()
    assert np.isfinite(dist) and dist > 0 and 0 < stats.shrinkage <= 1
    assert dist == pytest.approx(_ledoit_wolf_distance(x, target.mean(0).astype(np.float64)), rel=1e-6)


def test_fixed_shrinkage_one_is_euclidean_over_mean_variance():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 12)).astype(np.float32) * 2.0
    target = rng.standard_normal((4, 12)).astype(np.float32) + 1.0
    stats = SetStats(x, target, shrinkage=1.0)
    stats.add(np.arange(30))
    nu = np.trace(np.cov(x.T.astype(np.float64), bias=True)) / 12
    expected = np.linalg.norm(target.mean(0).astype(np.float64) - x.mean(0)) / np.sqrt(nu)
    assert stats.mahalanobis_distance() == pytest.approx(expected, rel=1e-6)
    assert stats.shrinkage == 1.0


def test_incremental_and_weighted_statistics_match_textbook():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((300, 20)) * np.linspace(0.1, 3, 20) + 5.0).astype(np.float32)
    target = rng.standard_normal((7, 20)).astype(np.float32) + 5.3
    ids = rng.integers(0, 300, size=240)  # with repeats
    expected = _ledoit_wolf_distance(x[ids], target.mean(0).astype(np.float64))
    one_by_one = SetStats(x, target)
    for lo in range(0, len(ids), 12):
        one_by_one.add(ids[lo : lo + 12])
    uniq, counts = np.unique(ids, return_counts=True)
    weighted = SetStats(x, target)
    weighted.add(uniq, counts)
    assert one_by_one.mahalanobis_distance() == pytest.approx(expected, rel=1e-6)
    assert weighted.mahalanobis_distance() == pytest.approx(expected, rel=1e-6)
    assert weighted.coverage() == pytest.approx(one_by_one.coverage(), abs=1e-7)


# --- plateau rule --------------------------------------------------------------------------

CURVE = [1.0, 2.0, 3.0, 3.01, 3.02, 3.5, 3.51, 3.52, 3.53, 3.54]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(rel_tol=0.05, patience=2), (3, 5)),  # 3.01, 3.02 are < 5% better than 3
        (dict(rel_tol=0.05, patience=3), (6, 9)),  # patience 3 reaches the jump to 3.5
        (dict(rel_tol=0.0, patience=2), (10, 10)),  # every gain counts: the walk runs out
        (dict(rel_tol=0.05, patience=2, min_k=8), (8, 8)),  # walks to min_k, selects >= min_k
        (dict(rel_tol=0.05, patience=5, max_k=4), (3, 4)),  # never walks past max_k
    ],
)
def test_plateau_rule_on_hand_made_curve(kwargs, expected):
    assert plateau_k(CURVE, **kwargs) == expected


def test_plateau_rule_on_negative_distances_and_decreasing_curves():
    assert plateau_k([-4.0, -3.0, -2.99, -2.98, -2.0], rel_tol=0.01, patience=2) == (2, 4)
    assert plateau_k([5.0, 4.0, 3.0, 2.0], rel_tol=0.0, patience=2) == (1, 3)


# --- strategies ----------------------------------------------------------------------------


@pytest.mark.parametrize("strategy, k", [("random", 5), ("no_consistency", None)])
def test_seeded_strategies_are_deterministic_and_seed_dependent(random_pool, strategy, k):
    features, task_samples, target = random_pool
    runs = [select(strategy, features, task_samples, target, k=k, seed=s, max_k=None).selected for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_ablations_return_k_where_promised(random_pool):
    features, task_samples, target = random_pool
    runs = ablations(features, task_samples, target, rel_tol=0.01, patience=3)
    assert list(runs) == list(STRATEGIES)
    k = runs["selected"].k
    for name, result in runs.items():
        assert result.k == len(result.selected) == len(result.consistency), name
        assert len(set(result.selected)) == result.k, name
    assert runs["random"].k == runs["no_diversity"].k == k
    assert runs["all"].k == len(task_samples)
    # same set as Algorithm 1 at its k: the one-pass evaluation agrees with the walk
    assert runs["no_diversity"].selected == runs["selected"].selected
    assert runs["no_diversity"].diversity == pytest.approx(runs["selected"].diversity, rel=1e-6)
    assert runs["selected"].mean_consistency >= runs["random"].mean_consistency


def test_domain_level_selection_returns_unit_ids(random_pool):
    features, task_samples, _ = random_pool
    units = np.repeat([10, 20, 30, 40], 10)
    target = features[np.unique(task_samples[units == 30])]
    result = greedy_select(features, task_samples, target, task_units=units, patience=1, max_k=100)
    assert result.level == "unit" and result.selected[0] == 30
    assert set(result.selected) <= {10, 20, 30, 40}
    assert result.consistency[0] == pytest.approx(1.0, abs=1e-6)
    fixed = select("random", features, task_samples, target, task_units=units, k=2, seed=0)
    assert fixed.k == 2 and set(fixed.selected) <= {10, 20, 30, 40}


def test_result_json_and_plot(random_pool, tmp_path):
    features, task_samples, target = random_pool
    result = select("selected", features, task_samples, target, measure="coverage")
    payload = json.loads(json.dumps(result.to_json()))
    assert {"strategy", "k", "selected", "consistency", "diversity_curve"} <= set(payload)
    assert payload["k"] == result.k and len(payload["diversity_curve"]) >= result.k
    path = plot_selection(result, tmp_path / "walk.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(task_samples=np.zeros((0, 12), np.int64)), r"empty task pool"),
        (dict(target=np.zeros((0, 24), np.float32)), r"target has no samples"),
        (dict(target=np.zeros((4, 10), np.float32)), r"target features are 10-d but the pool's are 24-d"),
        (dict(task_samples=np.full((3, 12), 400)), r"task 0 has sample ids outside 0\.\.399"),
        (dict(k=41, strategy="random"), r"k=41 is outside the pool: it has 40 tasks"),
        (dict(k=3, strategy="selected"), r"chooses k itself"),
        (dict(strategy="random"), r"needs k"),
        (dict(strategy="best"), r"unknown selection strategy 'best'; known: selected, no_consistency"),
        (dict(measure="entropy"), r"unknown measure 'entropy'; known: mahalanobis, coverage"),
        (dict(task_units=np.zeros(5, int)), r"task_units must be 40 integers"),
        (dict(shrinkage=1.5), r"shrinkage must be in \[0, 1\]"),
        (dict(min_k=50), r"min_k=50 is outside the pool: it has 40 tasks"),
    ],
)
def test_bad_input_raises_one_line_error(random_pool, change, message):
    features, task_samples, target = random_pool
    args = dict(strategy="selected", features=features, task_samples=task_samples, target=target)
    args.update(change)
    with pytest.raises(MtftError, match=message) as info:
        select(args.pop("strategy"), **args)
    assert "\n" not in str(info.value)
