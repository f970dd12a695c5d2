"""Screening task subsets without finetuning: cheap proxies on pretrained features.

With ``k`` candidate source domains there are ``2^k - 1`` non-empty subsets; a sweep that
finetunes on each costs minutes to hours per subset. Screening scores every subset (or a
seeded sample of them, :func:`candidate_subsets`) in well under a second each, from the
pretrained backbone's cached features, with three kinds of proxy:

* **Algorithm 1's measures** (:class:`Algorithm1Scores`): the mean consistency of the subset's
  domains with the target and the Mahalanobis diversity and coverage of the subset's tasks'
  samples, computed by :mod:`mtft_ray.selection.greedy` / :mod:`~mtft_ray.selection.metrics`
  exactly as a trial reports them (``selection.strategy: all``).
* **LogME** (:func:`logme`; You et al. 2021, "LogME: Practical Assessment of Pre-trained
  Models for Transfer Learning"): the log marginal likelihood per sample of the labels given the
  features, under Bayesian linear regression with the prior and noise precisions set by evidence
  maximisation. Screening compares *data sets* for one model (LogME was made to compare models
  on one data set), and LogME grows with the number of classes and shrinks with the number of
  samples, so :func:`logme_draws` scores every subset on the same shape: ``draws`` seeded draws
  of ``n_classes`` classes × ``per_class`` samples each, averaged.
* **Prototype accuracy** (:func:`prototype_accuracy`): nearest-centroid accuracy on N-way K-shot
  episodes drawn from the subset's classes (the target evaluation's shape and rule): how well
  the pretrained features already separate the subset's classes.

:func:`mean_rank` combines proxies by their mean rank (scale-free; see its docstring for when
that is justified). Everything here is a pure function on arrays.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat(np.arange(4), 30)
    >>> separable = np.eye(4)[labels] * 3 + 0.3 * rng.standard_normal((120, 4))
    >>> logme(separable, labels) > logme(separable, rng.permutation(labels))
    True
    >>> candidate_subsets(3, max_subsets=10, seed=0)
    [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from threadpoolctl import threadpool_limits

from mtft_ray.errors import MtftError
from mtft_ray.selection.greedy import Pool
from mtft_ray.selection.metrics import SetStats
from mtft_ray.tasks.episodes import PROTOTYPES, episode_accuracy, mean_ci95, sample_episodes

__all__ = [
    "PROXIES",
    "Algorithm1Scores",
    "candidate_subsets",
    "logme",
    "logme_draws",
    "mean_rank",
    "prototype_accuracy",
]

# proxy -> True when larger values should rank a subset higher
PROXIES = {"consistency": True, "diversity": True, "coverage": True, "logme": True, "proto_acc": True}
_EPS = 1e-12
_MAX_BITS = 62  # masks of up to 62 items are sampled as integers below 2^62


def candidate_subsets(n_items: int, max_subsets: int | None = None, seed: int = 0) -> list[tuple[int, ...]]:
    """Non-empty subsets of ``range(n_items)`` as sorted index tuples, smallest first.

    All ``2^n - 1`` of them when that is at most ``max_subsets`` (or no cap is given), in the
    order a grid search walks them (by size, then :func:`itertools.combinations` order); else a
    seeded uniform sample of ``max_subsets`` distinct ones, in that same order.

    >>> len(candidate_subsets(10, max_subsets=50, seed=1)), candidate_subsets(10, 50, 1) == candidate_subsets(10, 50, 1)
    (50, True)

    Raises:
        MtftError: ``n_items`` or ``max_subsets`` below 1.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer)) or n_items < 1:
        raise MtftError(f"candidate subsets need at least 1 item, got n_items={n_items!r}")
    if max_subsets is not None and (isinstance(max_subsets, bool) or not isinstance(max_subsets, (int, np.integer))
                                    or max_subsets < 1):
        raise MtftError(f"max_subsets must be an integer >= 1 (or None for all), got {max_subsets!r}")
    total = 2 ** n_items - 1
    if max_subsets is None or total <= max_subsets:
        return [c for size in range(1, n_items + 1) for c in itertools.combinations(range(n_items), size)]
    rng = np.random.default_rng([seed, 4099])
    if n_items <= _MAX_BITS:
        masks = (int(m) + 1 for m in rng.choice(total, size=int(max_subsets), replace=False))
        picked = {tuple(i for i in range(n_items) if m >> i & 1) for m in masks}
    else:  # too many bits for one integer: rejection sampling of include-flag rows
        picked: set[tuple[int, ...]] = set()
        while len(picked) < max_subsets:
            for row in rng.random((max_subsets, n_items)) < 0.5:
                if row.any() and len(picked) < max_subsets:
                    picked.add(tuple(int(i) for i in np.flatnonzero(row)))
    return sorted(picked, key=lambda s: (len(s), s))


def _check_features_labels(features: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    f, y = np.asarray(features), np.asarray(labels)
    if f.ndim != 2 or not np.issubdtype(f.dtype, np.floating):
        raise MtftError(f"{what}: features must be a 2-D float array (n, d), got {f.dtype} of shape {f.shape}")
    if y.shape != (len(f),) or not np.issubdtype(y.dtype, np.integer):
        raise MtftError(f"{what}: labels must be {len(f)} integers (one per feature row), got {y.dtype} "
                        f"of shape {y.shape}")
    if not np.isfinite(f).all():
        raise MtftError(f"{what}: features contain NaN or inf")
    return f, y


def logme(features: np.ndarray, labels: np.ndarray, *, tol: float = 1e-6, max_iter: int = 200) -> float:
    """LogME of labelled features: mean over classes of the per-sample log evidence of the
    class's one-hot column (You et al. 2021, their Algorithm 1).

    For a target column ``y`` (n) and features ``F`` (n × d) the model is ``y = F w + ε``,
    ``w ~ N(0, α⁻¹ I)``, ``ε ~ N(0, β⁻¹ I)``. With ``F = U diag(s) Vᵀ`` (thin SVD, obtained
    from the eigendecomposition of the smaller Gram matrix), ``σ = s²``, ``z = Uᵀ y`` and
    ``t = α / β``, the fixed point iterates

    ``γ = Σ σ/(σ+t)``, ``|m|² = Σ σ z²/(σ+t)²``, ``|y - F m|² = Σ z² t²/(σ+t)² + (|y|² - |z|²)``,
    ``α = γ / |m|²``, ``β = (n - γ) / |y - F m|²``

    until ``t`` changes by less than ``tol`` (relative), and returns
    ``(d/2 log α + n/2 log β - 1/2 Σ_d log(α + β σ) - β/2 |y - Fm|² - α/2 |m|² - n/2 log 2π) / n``
    (``σ`` padded with zeros to ``d``), evaluated at the final ``α, β``: the exact log density of
    ``y`` under ``N(0, α⁻¹ F Fᵀ + β⁻¹ I)``, divided by ``n``. Invariant to the scale of ``F``.
    All classes iterate together (one array operation per step).

    Args:
        features: ``(n, d)`` features (used as given: no centring or scaling, as in the paper).
        labels: ``(n,)`` integer class labels, at least two classes.

    Raises:
        MtftError: bad shapes, non-finite features, fewer than 2 samples or classes.
    """
    f, y = _check_features_labels(features, labels, "logme")
    classes, y_idx = np.unique(y, return_inverse=True)
    n, d = f.shape
    if n < 2 or len(classes) < 2:
        raise MtftError(f"logme needs at least 2 samples of 2 classes, got {n} samples of {len(classes)} class(es)")
    onehot = np.zeros((n, len(classes)))
    onehot[np.arange(n), y_idx] = 1.0
    # one BLAS thread: a multithreaded eigh of a few-hundred-square matrix is 20x slower on a busy
    # machine (measured on 2 cores: 0.12 s against 0.006 s for 200 x 200)
    with threadpool_limits(limits=1, user_api="blas"):
        sigma, z = _spectrum(f.astype(np.float64), onehot)
    outside = np.maximum(onehot.sum(axis=0) - (z ** 2).sum(axis=0), 0.0)  # |y|² - |Uᵀy|²: outside F's span
    return float(np.mean(_evidence(sigma, z ** 2, outside, n, d, tol, max_iter)))


def _spectrum(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(σ, Uᵀ y)``: the nonzero squared singular values of ``f`` and the targets' coordinates on
    the matching left singular vectors, from ``eigh`` of ``f fᵀ`` or ``fᵀ f``, whichever is smaller."""
    n, d = f.shape
    if n <= d:
        sigma, u = np.linalg.eigh(f @ f.T)
        z = u.T @ y
    else:
        sigma, v = np.linalg.eigh(f.T @ f)
        z = (v.T @ (f.T @ y)) / np.sqrt(np.maximum(sigma, _EPS))[:, None]  # u_i = f v_i / s_i
    keep = sigma > max(float(sigma.max(initial=0.0)), _EPS) * 1e-10  # numerical rank
    return sigma[keep], z[keep]


def _evidence(sigma: np.ndarray, z2: np.ndarray, outside: np.ndarray, n: int, d: int, tol: float,
              max_iter: int) -> np.ndarray:
    """Per-sample log evidence of each target column (``z2``: ``(r, C)``) at its evidence-maximising
    ``α, β`` (arrays of ``C``)."""
    alpha, beta = np.ones(z2.shape[1]), np.ones(z2.shape[1])
    for _ in range(max_iter):
        t = alpha / beta
        gamma, m2, res2 = _posterior(sigma, z2, outside, t)
        alpha, beta = gamma / np.maximum(m2, _EPS), (n - gamma) / np.maximum(res2, _EPS)
        if np.all(np.abs(alpha / beta - t) <= tol * t):
            break
    _, m2, res2 = _posterior(sigma, z2, outside, alpha / beta)
    log_det = np.log(alpha[None, :] + beta[None, :] * sigma[:, None]).sum(axis=0) + (d - len(sigma)) * np.log(alpha)
    ev = d * np.log(alpha) + n * np.log(beta) - log_det - beta * res2 - alpha * m2 - n * math.log(2 * math.pi)
    return ev / (2 * n)


def _posterior(sigma: np.ndarray, z2: np.ndarray, outside: np.ndarray,
               t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(γ, |m|², |y - F m|²)`` of each column's posterior mean ``m`` at ``t = α / β``."""
    shrink = sigma[:, None] + t[None, :]
    gamma = (sigma[:, None] / shrink).sum(axis=0)
    m2 = (sigma[:, None] * z2 / shrink ** 2).sum(axis=0)
    res2 = (z2 * (t[None, :] / shrink) ** 2).sum(axis=0) + outside
    return gamma, m2, res2


def logme_draws(features: np.ndarray, labels: np.ndarray, n_classes: int, per_class: int, draws: int = 5,
                seed: int = 0) -> float:
    """Mean LogME over ``draws`` seeded draws of ``n_classes`` classes × ``per_class`` samples each.

    Every subset scored this way gets a problem of the same shape, so LogME values compare
    across subsets of different sizes (LogME itself depends on the class count and sample count).

    Raises:
        MtftError: fewer than ``n_classes`` classes with ``per_class`` samples, or counts below 1 / 2.
    """
    f, y = _check_features_labels(features, labels, "logme_draws")
    if n_classes < 2 or per_class < 1 or draws < 1:
        raise MtftError(f"logme_draws needs n_classes >= 2, per_class >= 1, draws >= 1; got {n_classes}, "
                        f"{per_class}, {draws}")
    classes, counts = np.unique(y, return_counts=True)
    eligible = classes[counts >= per_class]
    if len(eligible) < n_classes:
        raise MtftError(f"logme_draws: {n_classes} classes with >= {per_class} samples needed; "
                        f"{len(eligible)} of {len(classes)} classes have that many")
    rng = np.random.default_rng([seed, 5381])
    by_class = {int(c): np.flatnonzero(y == c) for c in eligible}
    scores = []
    for _ in range(draws):
        chosen = rng.choice(eligible, n_classes, replace=False)
        rows = np.concatenate([rng.choice(by_class[int(c)], per_class, replace=False) for c in chosen])
        scores.append(logme(f[rows], y[rows]))
    return float(np.mean(scores))


def prototype_accuracy(features: np.ndarray, labels: np.ndarray, n_way: int, n_shot: int, n_query: int,
                       episodes: int = 300, seed: int = 0, prototype: str = "raw_mean") -> tuple[float, float]:
    """Nearest-centroid (cosine) accuracy and its 95% CI half-width on seeded N-way K-shot
    episodes drawn from the labelled ``features`` (the rule of :func:`episode_accuracy`).

    Raises:
        MtftError: fewer than ``n_way`` classes with ``n_shot + n_query`` samples, bad counts.
    """
    f, y = _check_features_labels(features, labels, "prototype_accuracy")
    if prototype not in PROTOTYPES:
        raise MtftError(f"prototype must be one of {', '.join(PROTOTYPES)}; got {prototype!r}")
    eps = sample_episodes(y, n_way, n_shot, n_query, episodes, seed=seed)
    return mean_ci95(episode_accuracy(f, eps, prototype=prototype))


class Algorithm1Scores:
    """Algorithm 1's measures of subsets of a unit-level pool's units (positions into ``pool``).

    ``consistency`` is the mean of the units' consistencies (``SelectionResult.mean_consistency``),
    ``diversity`` (Mahalanobis, ``-D``) and ``coverage`` those of all the units' samples together,
    with multiplicity: what :func:`mtft_ray.selection.greedy.evaluate` gives. Consistency and
    diversity are then what a trial with ``selection.strategy: all`` on those domains reports.
    Coverage's cosines are taken about the pool's centre (the mean of every candidate's tasks),
    one frame for every subset, as in greedy selection over the whole pool: so coverage never
    falls when a unit is added, and differs a little from a trial's, whose centre is the mean of
    its own subset's tasks. Each unit's running statistics are built once and merged per subset
    (:meth:`SetStats.merge`), so a subset costs one ``d×d`` factorisation rather than a pass
    over its samples.

    Args:
        pool: a unit-level :class:`Pool` (e.g. domains).
    """

    def __init__(self, pool: Pool) -> None:
        if pool.level != "unit":
            raise MtftError("Algorithm1Scores needs a unit-level pool (task_units given), got a task-level one")
        self.pool = pool
        self._units: dict[int, SetStats] = {}

    def _unit(self, pos: int) -> SetStats:
        if pos not in self._units:
            ids, counts = np.unique(self.pool.block(pos), return_counts=True)
            stats = self.pool.stats()
            stats.add(ids, counts)
            self._units[pos] = stats
        return self._units[pos]

    def __call__(self, subset: list[int] | tuple[int, ...]) -> dict[str, float]:
        """``{"consistency", "diversity", "coverage"}`` of one subset of unit positions.

        Raises:
            MtftError: an empty subset or a position outside the pool.
        """
        pos = np.asarray(subset, np.int64)
        if pos.ndim != 1 or len(pos) == 0 or pos.min() < 0 or pos.max() >= len(self.pool):
            raise MtftError(f"subset {list(subset)} must be non-empty positions in 0..{len(self.pool) - 1} of the pool")
        stats = self.pool.stats()
        for p in pos:
            stats.merge(self._unit(int(p)))
        return {"consistency": float(np.mean(self.pool.consistency[pos])),
                "diversity": float(stats.mahalanobis_diversity()), "coverage": float(stats.coverage())}


def _ranks(values: np.ndarray, larger_first: bool) -> np.ndarray:
    """Rank 1 = best; ties share their mean rank; NaN values rank last (after every finite one)."""
    v = np.asarray(values, np.float64)
    key = np.where(np.isfinite(v), -v if larger_first else v, np.inf)
    order = np.argsort(key, kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(key):  # average the ranks of ties
        same = key == value
        ranks[same] = ranks[same].mean()
    return ranks


def mean_rank(scores: dict[str, np.ndarray], directions: dict[str, bool] | None = None) -> np.ndarray:
    """Per-row mean of each proxy's rank (1 = best): a combined score, lower is better.

    A mean of ranks (Borda count) needs no common scale and no fitted weights, which a screen
    cannot have before any finetuning; it helps when the proxies carry the same signal with
    independent noise, and hurts when one of them ranks the opposite way to the truth, which only
    a finished sweep tells (``mtft-ray analyze`` reports each proxy's Spearman rho).

    >>> mean_rank({"a": np.array([3.0, 2.0, 1.0]), "b": np.array([1.0, 3.0, 2.0])})
    array([2. , 1.5, 2.5])

    Raises:
        MtftError: no proxy, or proxies of different lengths.
    """
    if not scores:
        raise MtftError("mean_rank needs at least one proxy")
    directions = {**PROXIES, **(directions or {})}
    lengths = {k: len(v) for k, v in scores.items()}
    if len(set(lengths.values())) != 1:
        raise MtftError(f"mean_rank: proxies have different lengths {lengths}")
    return np.mean([_ranks(v, directions.get(k, True)) for k, v in scores.items()], axis=0)
