import math

import numpy as np
import pytest
import torch

from mtft_ray.errors import MtftError
from mtft_ray.tasks.episodes import Episodes, episode_accuracy, mean_ci95, sample_episodes


def _labels(n_classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    """Class ids in shuffled order, so sample ids are not grouped by class."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(n_classes), per_class))


def _loop_accuracy(features: np.ndarray, eps: Episodes, prototype: str = "raw_mean") -> np.ndarray:
    """Plain per-episode nearest-centroid (cosine) reference, in float64 numpy."""
    raw = features.astype(np.float64)
    f = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    shots = raw if prototype == "raw_mean" else f
    target = np.repeat(np.arange(eps.n_way), eps.n_query)
    out = []
    for support, query in zip(eps.support, eps.query):
        centroids = shots[support].mean(axis=1)
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        pred = (f[query.reshape(-1)] @ centroids.T).argmax(axis=1)
        out.append((pred == target).mean())
    return np.array(out)


# --- sampling -----------------------------------------------------------------------------------

def test_shapes_dtypes_and_properties():
    eps = sample_episodes(_labels(12, 30), n_way=5, n_shot=3, n_query=7, n_episodes=40, seed=1)
    assert eps.support.shape == (40, 5, 3) and eps.query.shape == (40, 5, 7) and eps.classes.shape == (40, 5)
    assert eps.support.dtype == eps.query.dtype == eps.classes.dtype == np.int64
    assert (eps.n_episodes, eps.n_way, eps.n_shot, eps.n_query) == (40, 5, 3, 7)


def test_classes_distinct_ids_disjoint_and_labels_match():
    labels = _labels(10, 25)
    labels = labels * 7 + 3                        # class ids need not be 0..C-1
    eps = sample_episodes(labels, n_way=6, n_shot=2, n_query=4, n_episodes=200, seed=3)
    for e in range(eps.n_episodes):
        assert len(set(eps.classes[e])) == 6
        ids = np.concatenate([eps.support[e].ravel(), eps.query[e].ravel()])
        assert len(set(ids)) == ids.size           # support ∩ query = ∅, no repeats
    assert (labels[eps.support] == eps.classes[:, :, None]).all()
    assert (labels[eps.query] == eps.classes[:, :, None]).all()
    assert set(np.unique(eps.classes)) <= set(np.unique(labels))


def test_deterministic_under_seed():
    labels = _labels(8, 20)
    a = sample_episodes(labels, 4, 1, 5, 50, seed=11)
    b = sample_episodes(labels, 4, 1, 5, 50, seed=11)
    c = sample_episodes(labels, 4, 1, 5, 50, seed=12)
    for field in ("support", "query", "classes"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.support, c.support)
    assert not np.array_equal(a.classes, c.classes)


def test_classes_restriction_respected():
    labels = _labels(10, 20)
    allowed = np.array([2, 5, 7, 9])
    eps = sample_episodes(labels, 3, 2, 3, 100, seed=0, classes=allowed)
    assert set(np.unique(eps.classes)) == set(allowed.tolist())
    assert np.isin(labels[eps.query], allowed).all()


def test_unknown_restricted_class_is_an_error():
    with pytest.raises(MtftError, match="1 of the requested classes have no samples in labels: 42"):
        sample_episodes(_labels(5, 10), 2, 1, 1, 3, seed=0, classes=np.array([0, 1, 42]))


def test_each_selected_sample_is_support_with_probability_k_over_k_plus_q():
    # One class of 6 samples, 1 shot + 2 queries: every sample is drawn half the time and,
    # when drawn, is the shot a third of the time (an unshuffled Floyd's sample is biased here).
    eps = sample_episodes(np.zeros(6, np.int64), 1, 1, 2, 6000, seed=0)
    drawn = np.bincount(np.concatenate([eps.support.ravel(), eps.query.ravel()]), minlength=6)
    shots = np.bincount(eps.support.ravel(), minlength=6)
    np.testing.assert_allclose(drawn / 6000, 0.5, atol=0.04)
    np.testing.assert_allclose(shots / drawn, 1 / 3, atol=0.04)


def test_too_few_classes_states_the_numbers():
    labels = np.concatenate([np.repeat(np.arange(3), 20), np.repeat(np.arange(3, 12), 10)])
    with pytest.raises(MtftError) as err:
        sample_episodes(labels, n_way=5, n_shot=5, n_query=15, n_episodes=10, seed=0)
    assert str(err.value) == ("5-way 5-shot 15-query episodes need 5 classes with >= 20 samples; "
                              "only 3 of 12 classes have that many")


def test_too_few_samples_per_class_states_the_numbers():
    with pytest.raises(MtftError, match=r"need 2 classes with >= 8 samples; only 0 of 4 classes"):
        sample_episodes(_labels(4, 7), n_way=2, n_shot=3, n_query=5, n_episodes=1, seed=0)


@pytest.mark.parametrize("name", ["n_way", "n_shot", "n_query", "n_episodes"])
def test_counts_below_one_are_errors(name):
    kwargs = dict(n_way=2, n_shot=1, n_query=1, n_episodes=1) | {name: 0}
    with pytest.raises(MtftError, match=f"{name} must be an integer >= 1, got 0"):
        sample_episodes(_labels(3, 5), seed=0, **kwargs)


def test_exactly_enough_samples_uses_all_of_them():
    eps = sample_episodes(_labels(3, 4), n_way=3, n_shot=1, n_query=3, n_episodes=5, seed=0)
    for e in range(5):
        assert sorted(np.concatenate([eps.support[e].ravel(), eps.query[e].ravel()])) == list(range(12))


# --- accuracy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("prototype", ["raw_mean", "normalized_mean"])
@pytest.mark.parametrize("n_way,n_shot,n_query,chunk", [
    (5, 1, 3, None), (5, 1, 3, 1), (4, 3, 2, 7), (7, 5, 5, 3), (3, 2, 1, 1000)])
def test_vectorised_equals_loop_reference(n_way, n_shot, n_query, chunk, prototype):
    rng = np.random.default_rng(n_way * 100 + n_shot)
    labels = _labels(9, 20, seed=n_shot)
    means = rng.standard_normal((9, 24))
    feats = means[labels] * 0.4 + rng.standard_normal((labels.size, 24))       # far from 0 or 1
    eps = sample_episodes(labels, n_way, n_shot, n_query, n_episodes=23, seed=n_query)
    ref = _loop_accuracy(feats, eps, prototype)
    assert 0.2 < ref.mean() < 0.95
    np.testing.assert_array_equal(episode_accuracy(feats, eps, chunk=chunk, prototype=prototype), ref)  # float64
    as_float32 = torch.from_numpy(feats.astype(np.float32))
    np.testing.assert_allclose(episode_accuracy(as_float32, eps, chunk=chunk, prototype=prototype), ref, atol=1e-12)


def test_many_blocks_with_a_ragged_last_one_equal_loop_reference():
    # chunk=2 -> blocks of 32 episodes: 75 episodes are 2 full blocks and one of 11.
    rng = np.random.default_rng(5)
    labels = _labels(8, 12, seed=5)
    feats = rng.standard_normal((8, 16))[labels] * 0.5 + rng.standard_normal((labels.size, 16))
    eps = sample_episodes(labels, 4, 2, 3, n_episodes=75, seed=5)
    np.testing.assert_array_equal(episode_accuracy(feats, eps, chunk=2), _loop_accuracy(feats, eps))


def test_hand_computed_2d_cases():
    # Episode 0, 1-shot: shots A=(10, 0), B=(0, 1). Query of B at (1, 2): the raw dot product
    # prefers A (10 > 2), cosine prefers B (0.89 > 0.45); query of A at (3, 1) -> A. Acc 1.0.
    # Episode 1: shots A=(1, 0), B=(0, 1); query of A at (0.2, 1) is nearer B -> wrong; query
    # of B at (0, 1) -> B. Acc 0.5.
    feats = np.array([[10, 0], [0, 1], [3, 1], [1, 2],
                      [1, 0], [0, 1], [0.2, 1], [0, 1]], np.float32)
    eps = Episodes(support=np.array([[[0], [1]], [[4], [5]]]), query=np.array([[[2], [3]], [[6], [7]]]),
                   classes=np.array([[0, 1], [0, 1]]))
    np.testing.assert_array_equal(episode_accuracy(feats, eps), [1.0, 0.5])


def _deg(a: float) -> list[float]:
    return [math.cos(math.radians(a)), math.sin(math.radians(a))]


def test_normalized_mean_centroid_is_mean_of_normalised_shots():
    # 2-shot: A's shots (100, 0) and (0, 1) average, once normalised, to 45 degrees (the raw
    # mean points at 0.6 degrees); B's shots are both at 55 degrees. A's query at 30 degrees
    # is 15 degrees from A (raw mean: 29.4) and 25 from B, so only the normalised mean gets it;
    # B's query at 70 degrees is B's under both.
    feats = np.array([[100, 0], [0, 1], _deg(55), _deg(55), _deg(30), _deg(70)])
    eps = Episodes(support=np.array([[[0, 1], [2, 3]]]), query=np.array([[[4], [5]]]),
                   classes=np.array([[0, 1]]))
    np.testing.assert_array_equal(episode_accuracy(feats, eps, prototype="normalized_mean"), [1.0])
    np.testing.assert_array_equal(episode_accuracy(feats, eps, prototype="raw_mean"), [0.5])


def test_paper_5_shot_prototype_is_the_raw_mean_by_hand():
    # The paper's protocol (the default): average the raw 5 shots, then compare by cosine.
    # A's shots (10, 0) and 4 x (0, 1): raw mean (2, 0.8) at 21.8 degrees; the mean of the
    # normalised shots (0.2, 0.8) is at 76.0 degrees. B's 5 shots are all at 50 degrees.
    # A's query at 10 degrees: 11.8 from A's raw mean vs 40 from B -> A (right); but 66 from the
    # normalised mean -> B (wrong). B's query at 50 degrees is B's under both.
    feats = np.array([[10, 0], [0, 1], [0, 1], [0, 1], [0, 1], *[_deg(50)] * 5, _deg(10), _deg(50)])
    eps = Episodes(support=np.array([[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]]), query=np.array([[[10], [11]]]),
                   classes=np.array([[0, 1]]))
    raw_mean = feats[:5].mean(axis=0)
    assert math.degrees(math.atan2(raw_mean[1], raw_mean[0])) == pytest.approx(21.8, abs=0.05)
    np.testing.assert_array_equal(episode_accuracy(feats, eps), [1.0])
    np.testing.assert_array_equal(episode_accuracy(feats, eps, prototype="normalized_mean"), [0.5])
    with pytest.raises(MtftError, match="prototype must be one of raw_mean, normalized_mean"):
        episode_accuracy(feats, eps, prototype="median")


def test_tied_centroids_go_to_the_first_way():
    # Both ways' shots are the same vector: every query ties, argmax-style the first way wins.
    feats = np.array([[1, 1], [1, 1], [2, 1], [1, 2]], np.float32)
    eps = Episodes(support=np.array([[[0], [1]]]), query=np.array([[[2], [3]]]), classes=np.array([[4, 5]]))
    np.testing.assert_array_equal(episode_accuracy(feats, eps), [0.5])


def test_separable_features_score_one():
    labels = _labels(10, 12)
    feats = np.eye(10, dtype=np.float32)[labels] * 5 + np.random.default_rng(0).random((120, 10), np.float32)
    eps = sample_episodes(labels, 5, 2, 4, 300, seed=0)
    assert (episode_accuracy(feats, eps, chunk=16) == 1.0).all()


def test_accuracy_rejects_bad_input():
    eps = Episodes(support=np.array([[[0], [1]]]), query=np.array([[[2], [9]]]), classes=np.array([[0, 1]]))
    with pytest.raises(MtftError, match=r"query ids must lie in \[0, 4\).*got \[2, 9\]"):
        episode_accuracy(np.ones((4, 3)), eps)
    with pytest.raises(MtftError, match="features must be"):
        episode_accuracy(np.ones(12), eps)
    with pytest.raises(MtftError, match="chunk must be >= 1"):
        episode_accuracy(np.ones((10, 3)), eps, chunk=0)
    with pytest.raises(MtftError, match="same E and N"):
        Episodes(support=np.zeros((2, 3, 1), int), query=np.zeros((2, 4, 1), int), classes=np.zeros((2, 3), int))
    with pytest.raises(MtftError, match="support must hold integer ids, got float64"):
        Episodes(support=np.zeros((2, 3, 1)), query=np.zeros((2, 3, 1), int), classes=np.zeros((2, 3), int))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(0)
    labels = _labels(20, 50)
    feats = (rng.standard_normal((20, 64))[labels] * 0.3 + rng.standard_normal((1000, 64))).astype(np.float32)
    eps = sample_episodes(labels, 15, 5, 15, 200, seed=0)
    cpu = episode_accuracy(feats, eps)
    np.testing.assert_allclose(episode_accuracy(torch.from_numpy(feats).cuda(), eps), cpu, atol=1e-12)


# --- confidence interval ------------------------------------------------------------------------

def test_mean_ci95_by_hand():
    mean, half = mean_ci95(np.array([0.5, 0.7, 0.9]))          # std(ddof=1) = 0.2
    assert mean == pytest.approx(0.7)
    assert half == pytest.approx(1.96 * 0.2 / math.sqrt(3))
    assert mean_ci95(np.array([0.25])) == (0.25, 0.0)
    with pytest.raises(MtftError):
        mean_ci95(np.array([]))


def test_within_domain_episodes_keep_each_episode_in_one_domain_and_share_episodes_by_usable_classes():
    from mtft_ray.tasks.episodes import sample_episodes_within

    labels = np.repeat(np.arange(13), 10)
    labels = labels[~((labels == 12) & (np.arange(len(labels)) % 10 > 2))]  # class 12: 3 samples, unusable
    groups = np.array([0] * 5 + [1] * 6 + [2] * 2)[labels]  # domain 2 has a single usable class: no episodes
    eps = sample_episodes_within(labels, groups, n_way=5, n_shot=1, n_query=4, n_episodes=100, seed=3)
    ep_groups = groups[np.searchsorted(labels, eps.classes)]
    assert eps.n_episodes == 100 and (ep_groups == ep_groups[:, :1]).all()
    assert np.bincount(ep_groups[:, 0], minlength=3).tolist() == [45, 55, 0]  # 5 : 6 usable classes
    assert (labels[eps.support[..., 0]] == eps.classes).all() and (labels[eps.query] == eps.classes[..., None]).all()
    again = sample_episodes_within(labels, groups, n_way=5, n_shot=1, n_query=4, n_episodes=100, seed=3)
    assert np.array_equal(again.query, eps.query)  # seeded
    with pytest.raises(MtftError, match="no domain has 7 classes"):
        sample_episodes_within(labels, groups, n_way=7, n_shot=1, n_query=4, n_episodes=10, seed=0)
