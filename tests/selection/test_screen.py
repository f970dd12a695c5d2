"""Screening proxies on constructed arrays whose answers are known: LogME against the exact
Gaussian evidence and on separable vs shuffled labels, prototype accuracy on separated vs
overlapping clusters, Algorithm 1's measures against the greedy module's, the subset sample,
and the mean rank."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from mtft_ray.errors import MtftError
from mtft_ray.selection.greedy import Pool, evaluate
from mtft_ray.selection.metrics import SetStats
from mtft_ray.selection.screen import (
    Algorithm1Scores,
    _evidence,
    _posterior,
    _spectrum,
    candidate_subsets,
    logme,
    logme_draws,
    mean_rank,
    prototype_accuracy,
)


def clusters(n_classes: int, per_class: int, dim: int, spread: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters around random unit centres; ``spread`` is the within-class std."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_classes), per_class)
    return (centres[labels] + spread * rng.standard_normal((len(labels), dim))).astype(np.float32), labels


def _direct_fixed_point(f: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """α, β of the fixed point, iterated to convergence from a plain SVD (independent of _spectrum)."""
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    z2 = ((u.T @ y) ** 2)[:, None]
    outside = np.array([y @ y - z2.sum()])
    a, b = 1.0, 1.0
    for _ in range(2000):
        g, m2, r2 = _posterior(s ** 2, z2, outside, np.array([a / b]))
        a, b = float(g[0] / m2[0]), float((len(y) - g[0]) / r2[0])
    return a, b


@pytest.mark.parametrize("n,d", [(60, 12), (25, 80)])  # both branches: n > d (fᵀf) and n <= d (f fᵀ)
def test_logme_is_the_exact_gaussian_evidence_at_its_maximum(n, d):
    """Per class, LogME is log N(y; 0, α⁻¹FFᵀ + β⁻¹I) / n at the fixed point, and moving α or β
    away from it does not raise that density: the fixed point maximises the evidence."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, n)
    f = rng.standard_normal((n, d)) + 2 * np.eye(3, d)[labels]
    onehot = np.eye(3)[labels]
    sigma, z = _spectrum(f, onehot)
    per_class = _evidence(sigma, z ** 2, np.maximum(onehot.sum(0) - (z ** 2).sum(0), 0), n, d, 1e-10, 1000)
    for c in range(3):
        y = onehot[:, c]
        a, b = _direct_fixed_point(f, y)
        def density(fa: float, fb: float, a=a, b=b, y=y) -> float:
            return multivariate_normal(np.zeros(n), f @ f.T / (a * fa) + np.eye(n) / (b * fb)).logpdf(y) / n

        assert per_class[c] == pytest.approx(density(1, 1), abs=1e-7)
        assert density(1.3, 1) < density(1, 1) and density(0.7, 1) < density(1, 1)
        # with n <= d a column can be fit exactly: the evidence then rises towards its supremum
        # as β → ∞ and is flat in β near the end of the iteration
        assert density(1, 1.3) < density(1, 1) + 1e-8 and density(1, 0.7) < density(1, 1) + 1e-8
    assert logme(f, labels) == pytest.approx(per_class.mean(), abs=1e-4)  # default tol and max_iter


def test_logme_prefers_linearly_separable_labels_and_ignores_scale():
    feats, labels = clusters(5, 40, 16, spread=0.3)
    rng = np.random.default_rng(0)
    true, shuffled = logme(feats, labels), logme(feats, rng.permutation(labels))
    assert true > shuffled + 0.2, (true, shuffled)
    assert logme(100 * feats, labels) == pytest.approx(true, abs=1e-7)  # the evidence is maximised over α
    # the same labels on ever less separable features: ever lower evidence
    by_spread = [logme(*clusters(5, 40, 16, spread=s)) for s in (0.1, 0.3, 0.6, 1.0, 2.0)]
    assert by_spread == sorted(by_spread, reverse=True) and by_spread[0] - by_spread[-1] > 1.0, by_spread


def test_logme_draws_score_every_subset_on_one_shape():
    feats, labels = clusters(12, 20, 16, spread=0.5)
    a = logme_draws(feats, labels, n_classes=4, per_class=8, draws=3, seed=0)
    assert a == logme_draws(feats, labels, n_classes=4, per_class=8, draws=3, seed=0)  # seeded
    assert a != logme_draws(feats, labels, n_classes=4, per_class=8, draws=3, seed=1)
    # the shape, not the size of the data, decides the scale: a twice-as-large copy scores alike
    big = logme_draws(np.concatenate([feats, feats]), np.concatenate([labels, labels + 12]), 4, 8, draws=20, seed=0)
    small = logme_draws(feats, labels, 4, 8, draws=20, seed=0)
    assert abs(big - small) < 0.05 and abs(logme(feats, labels) - small) > 0.05
    with pytest.raises(MtftError, match="4 classes with >= 30 samples needed; 0 of 12"):
        logme_draws(feats, labels, 4, 30)


def test_logme_refuses_bad_input():
    with pytest.raises(MtftError, match="at least 2 samples of 2 classes"):
        logme(np.ones((5, 3)), np.zeros(5, int))
    with pytest.raises(MtftError, match="labels must be 5 integers"):
        logme(np.ones((5, 3)), np.zeros(4, int))
    with pytest.raises(MtftError, match="NaN or inf"):
        logme(np.full((4, 3), np.nan), np.array([0, 0, 1, 1]))


def test_prototype_accuracy_separated_vs_overlapping_clusters():
    sep, sep_labels = clusters(8, 20, 32, spread=0.05)
    acc, ci = prototype_accuracy(sep, sep_labels, n_way=5, n_shot=1, n_query=5, episodes=200, seed=0)
    assert acc == 1.0 and ci == 0.0
    # overlapping: every class drawn from one distribution; chance is 1/5
    rng = np.random.default_rng(0)
    same = (rng.standard_normal((160, 32)) + 3.0).astype(np.float32)
    acc, ci = prototype_accuracy(same, sep_labels, n_way=5, n_shot=1, n_query=5, episodes=400, seed=0)
    assert abs(acc - 0.2) < max(2 * ci, 0.02), (acc, ci)
    mid, _ = prototype_accuracy(clusters(8, 20, 32, spread=0.25)[0], sep_labels, 5, 1, 5, episodes=200, seed=0)
    assert 0.3 < mid < 1.0
    with pytest.raises(MtftError, match="need 5 classes with >= 21 samples"):
        prototype_accuracy(sep, sep_labels, n_way=5, n_shot=1, n_query=20)


def test_candidate_subsets_all_in_grid_order_under_the_cap():
    subsets = candidate_subsets(4, max_subsets=15)
    grid = [c for k in range(1, 5) for c in itertools.combinations(range(4), k)]
    assert subsets == grid and len(subsets) == 15
    assert candidate_subsets(4) == grid


@pytest.mark.parametrize("n_items", [12, 70])  # integer masks, and include-flag rows past 62 items
def test_candidate_subsets_seeded_sample_capped(n_items):
    a = candidate_subsets(n_items, max_subsets=40, seed=3)
    assert len(a) == 40 == len(set(a))
    assert all(s and list(s) == sorted(set(s)) and 0 <= s[0] and s[-1] < n_items for s in a)
    assert a == candidate_subsets(n_items, max_subsets=40, seed=3)
    assert a != candidate_subsets(n_items, max_subsets=40, seed=4)
    assert a == sorted(a, key=lambda s: (len(s), s))
    with pytest.raises(MtftError, match="max_subsets must be an integer >= 1"):
        candidate_subsets(n_items, max_subsets=0)


def test_candidate_subsets_sample_is_uniform_enough():
    """Every one of the 63 subsets of 6 items is about as likely to be among 20 sampled."""
    counts = np.zeros(64)
    for seed in range(300):
        for s in candidate_subsets(6, max_subsets=20, seed=seed):
            counts[sum(1 << i for i in s)] += 1
    expected = 300 * 20 / 63
    assert counts[0] == 0 and np.all(np.abs(counts[1:] - expected) < 0.35 * expected), counts


def test_algorithm1_scores_equal_the_greedy_evaluation_of_the_same_units():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((900, 24)).astype(np.float32)
    units = np.repeat(np.arange(4), 10)
    tasks = np.stack([rng.choice(np.arange(u * 200, u * 200 + 200), 15, replace=False) for u in units])
    pool = Pool(feats, tasks, feats[850:], units)
    score = Algorithm1Scores(pool)
    for subset in ([2], [0, 3], [0, 1, 2, 3]):
        got = score(subset)
        diversity, cover, _ = evaluate(pool, np.array(subset))
        assert got["diversity"] == pytest.approx(diversity, rel=1e-6)
        assert got["coverage"] == pytest.approx(cover, rel=1e-6)
        assert got["consistency"] == pytest.approx(pool.consistency[subset].mean())
    with pytest.raises(MtftError, match="non-empty positions in 0..3"):
        score([4])
    with pytest.raises(MtftError, match="unit-level pool"):
        Algorithm1Scores(Pool(feats, tasks, feats[850:]))


def test_set_stats_merge_equals_adding_every_sample():
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((300, 8)).astype(np.float32)
    target = feats[:20]
    whole, a, b = SetStats(feats, target), SetStats(feats, target), SetStats(feats, target)
    whole.add(np.arange(30, 300))
    a.add(np.arange(30, 100))
    b.add(np.arange(100, 300))
    a.merge(b)
    assert a.mahalanobis_distance() == pytest.approx(whole.mahalanobis_distance(), rel=1e-9)
    assert a.coverage() == whole.coverage() and a.n == whole.n
    with pytest.raises(MtftError, match="different targets"):
        a.merge(SetStats(feats, feats[20:40]))


def test_mean_rank_averages_ranks_with_ties_and_nan_last():
    r = mean_rank({"logme": np.array([0.3, 0.1, 0.3, np.nan])})
    assert r.tolist() == [1.5, 3.0, 1.5, 4.0]
    both = mean_rank({"logme": np.array([3.0, 2.0, 1.0]), "coverage": np.array([1.0, 3.0, 2.0])})
    assert both.tolist() == [2.0, 1.5, 2.5]
    assert mean_rank({"x": np.array([1.0, 2.0])}, {"x": False}).tolist() == [1.0, 2.0]  # smaller first
    with pytest.raises(MtftError, match="different lengths"):
        mean_rank({"a": np.ones(2), "b": np.ones(3)})
