"""Few-shot episodes on cached features: sampling, nearest-centroid accuracy, 95% CI.

An episode is ``n_way`` classes with ``n_shot`` support and ``n_query`` query samples each,
all given as row ids into one features array (the cached embedding of an evaluation split).
Both sampling and scoring are vectorised over episodes: thousands of episodes take well under
a second, and the result equals a plain per-episode loop (see ``mtft_ray/evaluation/bench.py``).

Example:
    >>> import numpy as np
    >>> labels = np.repeat(np.arange(6), 10)                   # 6 classes x 10 samples
    >>> feats = np.eye(6, dtype=np.float32)[labels] + 0.1      # perfectly separable
    >>> eps = sample_episodes(labels, n_way=5, n_shot=1, n_query=3, n_episodes=100, seed=0)
    >>> eps.support.shape, eps.query.shape, eps.classes.shape
    ((100, 5, 1), (100, 5, 3), (100, 5))
    >>> acc, ci = mean_ci95(episode_accuracy(feats, eps))
    >>> acc, ci
    (1.0, 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mtft_ray.errors import MtftError

__all__ = ["Episodes", "PROTOTYPES", "sample_episodes", "sample_episodes_within", "episode_accuracy", "mean_ci95"]

# Gathered query rows per chunk, in bytes: small enough that the buffer stays in L3 cache
# between the gather and the matmul (a fully batched gather is memory-bound and several times
# slower), large enough that one bmm call amortises its overhead. Measured on 2 cores with a
# 32 MiB L3 (15-way 5-shot 15-query, 1280-d): 6-16 MiB best, 32 MiB +15%.
_CHUNK_BYTES = 16 << 20
# Centroids, their norms and the argmax are computed per block of chunks: every torch op is
# one parallel region, and on a loaded machine each region waits a scheduler tick (~8 ms)
# for its second thread, so fewer, larger ops matter more than their size.
_CHUNKS_PER_BLOCK = 16
_EPS = 1e-12


@dataclass(frozen=True)
class Episodes:
    """A batch of N-way K-shot episodes, as sample ids into a features array.

    Attributes:
        support: ``(E, N, K)`` int64 sample ids; ``support[e, n]`` are the shots of class
            ``classes[e, n]``.
        query: ``(E, N, Q)`` int64 sample ids, disjoint from the episode's support.
        classes: ``(E, N)`` int64 class id of each way.
    """

    support: np.ndarray
    query: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        for name in ("support", "query", "classes"):
            value = np.asarray(getattr(self, name))
            if not np.issubdtype(value.dtype, np.integer):
                raise MtftError(f"episode {name} must hold integer ids, got {value.dtype}")
            object.__setattr__(self, name, value)
        s, q, c = self.support, self.query, self.classes
        if s.ndim != 3 or q.ndim != 3 or c.ndim != 2 or s.shape[:2] != c.shape or q.shape[:2] != c.shape:
            raise MtftError(
                f"episodes need support (E, N, K), query (E, N, Q) and classes (E, N) with the same E and N; "
                f"got {s.shape}, {q.shape} and {c.shape}")

    @property
    def n_episodes(self) -> int:
        """Number of episodes E."""
        return self.support.shape[0]

    @property
    def n_way(self) -> int:
        """Classes per episode N."""
        return self.support.shape[1]

    @property
    def n_shot(self) -> int:
        """Support samples per class K."""
        return self.support.shape[2]

    @property
    def n_query(self) -> int:
        """Query samples per class Q."""
        return self.query.shape[2]


def sample_episodes(labels: np.ndarray, n_way: int, n_shot: int, n_query: int, n_episodes: int,
                    seed: int, classes: np.ndarray | None = None) -> Episodes:
    """Samples few-shot episodes, deterministically under ``seed``.

    Each episode draws ``n_way`` distinct classes among those with at least
    ``n_shot + n_query`` samples, then per class ``n_shot + n_query`` distinct samples, the
    first ``n_shot`` of which are the support. All episodes are drawn at once (no loop over
    episodes), with ``np.random.default_rng(seed)``.

    Args:
        labels: ``(n_samples,)`` integer class id of each row of the features array.
        n_way: classes per episode.
        n_shot: support samples per class.
        n_query: query samples per class.
        n_episodes: number of episodes.
        seed: seed of the random generator.
        classes: class ids to draw from (default: every class in ``labels``).

    Returns:
        The episodes; ``Episodes.classes`` holds class ids as they appear in ``labels``.

    Raises:
        MtftError: a count below 1, unknown ``classes``, or fewer eligible classes than ``n_way``.
    """
    counts_asked = {"n_way": n_way, "n_shot": n_shot, "n_query": n_query, "n_episodes": n_episodes}
    for name, value in counts_asked.items():
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise MtftError(f"{name} must be an integer >= 1, got {value!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise MtftError(f"labels must be a 1-D integer array, got {labels.dtype} of shape {labels.shape}")
    per_class = n_shot + n_query

    order = np.argsort(labels, kind="stable")               # sample ids grouped by class
    class_ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    if classes is not None:
        wanted = np.unique(np.asarray(classes))
        missing = np.setdiff1d(wanted, class_ids)
        if len(missing):
            shown = ", ".join(str(c) for c in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise MtftError(f"{len(missing)} of the requested classes have no samples in labels: {shown}")
        keep = np.isin(class_ids, wanted)
        class_ids, starts, counts = class_ids[keep], starts[keep], counts[keep]
    eligible = counts >= per_class
    if eligible.sum() < n_way:
        raise MtftError(f"{n_way}-way {n_shot}-shot {n_query}-query episodes need {n_way} classes with >= "
                        f"{per_class} samples; only {eligible.sum()} of {len(class_ids)} classes have that many")
    class_ids, starts, counts = class_ids[eligible], starts[eligible], counts[eligible]

    rng = np.random.default_rng(seed)
    # n_way distinct classes per episode: the first n_way of a random permutation of the classes.
    way = np.argsort(rng.random((n_episodes, len(class_ids))), axis=1)[:, :n_way]      # (E, N)
    picks = _sample_without_replacement(rng, counts[way].reshape(-1), per_class)       # (E*N, K+Q)
    ids = order[starts[way].reshape(-1, 1) + picks].reshape(n_episodes, n_way, per_class)
    return Episodes(support=np.ascontiguousarray(ids[:, :, :n_shot]),
                    query=np.ascontiguousarray(ids[:, :, n_shot:]),
                    classes=class_ids[way].astype(np.int64))


def sample_episodes_within(labels: np.ndarray, groups: np.ndarray, n_way: int, n_shot: int, n_query: int,
                           n_episodes: int, seed: int) -> Episodes:
    """:func:`sample_episodes` with every episode's classes from one group (a domain).

    Groups with at least ``n_way`` classes of ``n_shot + n_query`` samples share the episodes in
    proportion to those classes (largest remainder, ties to the lower group id); each group's
    episodes are drawn with its own seed, so the episodes do not depend on the others' sizes.

    Args:
        labels: ``(n_samples,)`` class id of each row.
        groups: ``(n_samples,)`` group id of each row (constant within a class).

    Raises:
        MtftError: no group has ``n_way`` usable classes.
    """
    labels, groups = np.asarray(labels), np.asarray(groups)
    classes, first = np.unique(labels, return_index=True)
    counts = np.bincount(np.searchsorted(classes, labels), minlength=len(classes))
    usable = classes[counts >= n_shot + n_query]
    class_group = groups[first][counts >= n_shot + n_query]
    ids, per = np.unique(class_group, return_counts=True)
    keep = per >= n_way
    ids, per = ids[keep], per[keep]
    if not len(ids):
        raise MtftError(f"no domain has {n_way} classes with >= {n_shot + n_query} samples for within-domain "
                        f"{n_way}-way {n_shot}-shot episodes (eval.within_domain)")
    share = n_episodes * per / per.sum()
    alloc = np.floor(share).astype(int)
    for i in np.lexsort((ids, -(share - alloc)))[: n_episodes - alloc.sum()]:
        alloc[i] += 1
    parts = [sample_episodes(labels, n_way, n_shot, n_query, int(n), seed=seed * 1009 + int(g),
                             classes=usable[class_group == g]) for g, n in zip(ids, alloc) if n]
    return Episodes(support=np.concatenate([p.support for p in parts]), query=np.concatenate([p.query for p in parts]),
                    classes=np.concatenate([p.classes for p in parts]))


def _sample_without_replacement(rng: np.random.Generator, population: np.ndarray, k: int) -> np.ndarray:
    """Row r: ``k`` distinct ints from ``[0, population[r])`` in uniformly random order.

    Floyd's algorithm, vectorised over rows (``k`` steps, no per-row loop), then a random
    permutation of each row; cost O(rows * k^2), independent of the population sizes.
    """
    rows = len(population)
    dtype = np.int32 if population.max() < 2**31 else np.int64     # halves the compare traffic
    tops = (population[None, :] - k + np.arange(k)[:, None]).astype(dtype)  # step i: [0, tops[i]]
    # floor(u * (top + 1)) with u in [0, 1) is uniform on [0, top] up to 2**-53, and ~4x
    # faster than rng.integers with an array of bounds.
    draws = np.minimum((rng.random((k, rows)) * (tops + 1.0)).astype(dtype), tops)
    out = np.empty((k, rows), dtype)                                   # steps x rows: contiguous
    for i in range(k):
        taken = (out[:i] == draws[i]).any(axis=0)
        out[i] = np.where(taken, tops[i], draws[i])
    return np.take_along_axis(out.T, np.argsort(rng.random((rows, k)), axis=1), axis=1)


PROTOTYPES = ("raw_mean", "normalized_mean")


def episode_accuracy(features: torch.Tensor | np.ndarray, episodes: Episodes,
                     chunk: int | None = None, prototype: str = "raw_mean") -> np.ndarray:
    """Nearest-centroid (cosine) accuracy of each episode.

    A class's centroid is the mean of its support features, either of the raw features
    (``prototype="raw_mean"``, the paper's protocol and its training loss: the mean is then
    compared by cosine, i.e. normalised) or of the L2-normalised ones (``"normalized_mean"``);
    the two agree at 1 shot. Each query is assigned to the centroid of highest cosine similarity.
    Queries are gathered ``chunk`` episodes at a time into a preallocated buffer and scored by
    one ``bmm`` against the centroids, so the working set stays in cache; centroids (shots
    gathered and summed by one ``embedding_bag``) and predictions are computed for blocks of
    chunks. Runs on the features' device; float64
    features are scored in float64, anything else in float32.

    Args:
        features: ``(n_samples, dim)`` features, rows indexed by the episodes' sample ids.
        episodes: the episodes to score.
        chunk: episodes per chunk (default: about 16 MiB of gathered query rows).
        prototype: ``"raw_mean"`` or ``"normalized_mean"`` (see above).

    Returns:
        ``(E,)`` float64 fraction of correctly classified queries per episode.

    Raises:
        MtftError: features not 2-D, sample ids out of range, ``chunk`` below 1, or an unknown
            ``prototype``.
    """
    if prototype not in PROTOTYPES:
        raise MtftError(f"prototype must be one of {', '.join(PROTOTYPES)}; got {prototype!r}")
    feats = torch.as_tensor(features)
    if feats.ndim != 2:
        raise MtftError(f"features must be (n_samples, dim), got shape {tuple(feats.shape)}")
    if feats.dtype != torch.float64:
        feats = feats.to(torch.float32)
    n_samples, dim = feats.shape
    e, n, k, q = episodes.n_episodes, episodes.n_way, episodes.n_shot, episodes.n_query
    if e == 0:
        return np.zeros(0, np.float64)
    for name, ids in (("support", episodes.support), ("query", episodes.query)):
        if ids.size and (ids.min() < 0 or ids.max() >= n_samples):
            raise MtftError(f"episode {name} ids must lie in [0, {n_samples}) (the rows of features); "
                            f"got [{ids.min()}, {ids.max()}]")
    if chunk is None:
        chunk = _CHUNK_BYTES // (n * q * dim * feats.element_size())
    elif chunk < 1:
        raise MtftError(f"chunk must be >= 1, got {chunk}")
    chunk = int(min(max(chunk, 1), e))

    device = feats.device
    unit = feats / torch.linalg.vector_norm(feats, dim=1, keepdim=True).clamp_min(_EPS)
    shots = feats if prototype == "raw_mean" else unit
    support_ids = torch.as_tensor(episodes.support.reshape(e * n, k), dtype=torch.int64, device=device)
    query_ids = torch.as_tensor(episodes.query.reshape(e, n * q), dtype=torch.int64, device=device)

    block = min(chunk * _CHUNKS_PER_BLOCK, e)
    query_buf = unit.new_empty(chunk * n * q, dim)
    score_buf = unit.new_empty(block, n, n * q)
    best_buf = unit.new_empty(block, n * q)
    pred = torch.empty(e, n * q, dtype=torch.int64, device=device)
    for block_start in range(0, e, block):
        block_stop = min(block_start + block, e)
        # Gather-and-sum of the shots in one op; the sum points where the mean does, and the
        # centroid's length is divided out of the scores below.
        centroids = F.embedding_bag(support_ids[block_start * n:block_stop * n], shots, mode="sum")
        centroids = centroids.view(block_stop - block_start, n, dim)
        for start in range(block_start, block_stop, chunk):
            stop = min(start + chunk, block_stop)
            queries = torch.index_select(unit, 0, query_ids[start:stop].reshape(-1),
                                         out=query_buf[:(stop - start) * n * q])
            # (b, N, D) @ (b, D, N*Q): on CPU twice as fast as queries @ centroids^T.
            torch.bmm(centroids[start - block_start:stop - block_start],
                      queries.view(stop - start, n * q, dim).transpose(1, 2),
                      out=score_buf[start - block_start:stop - block_start])
        scores = score_buf[:block_stop - block_start]
        scores.div_(torch.linalg.vector_norm(centroids, dim=2, keepdim=True).clamp_min_(_EPS))
        # max over the middle dim is vectorised where argmax is not (8x faster); both return
        # the first of tied maxima.
        torch.max(scores, dim=1, out=(best_buf[:block_stop - block_start], pred[block_start:block_stop]))
    target = torch.arange(n, device=device).repeat_interleave(q)                    # way of each query
    return (pred == target).sum(dim=1).cpu().numpy().astype(np.float64) / (n * q)


def mean_ci95(acc: np.ndarray) -> tuple[float, float]:
    """Mean and 95% confidence half-width of per-episode accuracies.

    Args:
        acc: ``(E,)`` accuracy per episode.

    Returns:
        ``(mean, 1.96 * std(ddof=1) / sqrt(E))``; the half-width is 0.0 for a single episode.

    Raises:
        MtftError: ``acc`` is empty or not 1-D.
    """
    acc = np.asarray(acc, dtype=np.float64)
    if acc.ndim != 1 or acc.size == 0:
        raise MtftError(f"mean_ci95 needs a non-empty 1-D array of accuracies, got shape {acc.shape}")
    if acc.size == 1:
        return float(acc[0]), 0.0
    return float(acc.mean()), float(1.96 * acc.std(ddof=1) / np.sqrt(acc.size))
