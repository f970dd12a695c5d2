"""Greedy consistency–diversity selection (the paper's Algorithm 1) with a plateau stop.

Candidates (tasks, or *units* of tasks such as domains) are ranked by consistency, highest
first, and added in that order; after each addition both diversity measures of
:mod:`mtft_ray.selection.metrics` are evaluated. The walk stops at a plateau of the driving
measure (``measure="mahalanobis"`` or ``"coverage"``): its improvement over the best value so
far, relative to ``|best|``, stays below ``rel_tol`` for ``patience`` consecutive additions.
The selected set is the prefix up to the last real improvement (at least ``min_k``, at most
``max_k`` candidates).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((500, 32)).astype(np.float32)
    >>> tasks = rng.integers(0, 500, size=(40, 25))
    >>> result = greedy_select(features, tasks, target=features[:10], rel_tol=0.01, patience=3)
    >>> result.k == len(result.selected)
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from mtft_ray.errors import MtftError
from mtft_ray.selection.metrics import SetStats, consistency, task_means

__all__ = ["SelectionResult", "Plateau", "plateau_k", "greedy_select", "MEASURES"]

MEASURES = ("mahalanobis", "coverage")


@dataclass
class SelectionResult:
    """A selected set of tasks (or units) and its scores.

    Attributes:
        strategy: name of the strategy that produced it.
        k: number selected.
        selected: task ids (or unit ids at the domain level), in selection order.
        consistency: consistency of each selected candidate, same order.
        diversity_curve: Mahalanobis diversity after each addition evaluated (the whole walk,
            possibly past ``k``; a single value for fixed-size strategies).
        coverage_curve: coverage after each addition evaluated, same steps.
        diversity: Mahalanobis diversity of the selected set.
        coverage: coverage of the selected set.
        mean_consistency: mean of ``consistency``.
        measure: measure that drove the stopping rule, ``None`` for fixed-size strategies.
        level: ``"task"`` or ``"unit"``.
        shrinkage: covariance shrinkage intensity α used for the selected set (Ledoit–Wolf by default).
    """

    strategy: str
    k: int
    selected: list[int]
    consistency: list[float]
    diversity_curve: list[float]
    coverage_curve: list[float]
    diversity: float
    coverage: float
    mean_consistency: float
    measure: str | None = None
    level: str = "task"
    shrinkage: float = float("nan")
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """A JSON-serialisable dict (non-finite floats become ``None``)."""
        return _finite(asdict(self))


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


class Plateau:
    """Online plateau rule; feed it one value per addition with :meth:`push`.

    Args:
        rel_tol: smallest relative improvement over the best value so far that counts.
        patience: consecutive non-improving additions that end the walk.
        min_k: never select fewer (the walk goes on at least this far).
        max_k: never walk further; ``None`` for no limit.
    """

    def __init__(self, rel_tol: float = 0.01, patience: int = 3, min_k: int = 1, max_k: int | None = None):
        if not rel_tol >= 0:
            raise MtftError(f"rel_tol must be >= 0, got {rel_tol}")
        if patience < 1:
            raise MtftError(f"patience must be >= 1, got {patience}")
        if min_k < 1 or (max_k is not None and max_k < min_k):
            raise MtftError(f"need 1 <= min_k <= max_k, got min_k={min_k}, max_k={max_k}")
        self.rel_tol, self.patience, self.min_k, self.max_k = rel_tol, patience, min_k, max_k
        self.n = 0
        self.best = -math.inf
        self.k_best = 0
        self.stale = 0

    def push(self, value: float) -> bool:
        """Record the value after one more addition; True when the walk should stop."""
        self.n += 1
        if self.n == 1 or self._improves(value):
            self.best, self.k_best, self.stale = value, self.n, 0
        else:
            self.stale += 1
        if self.max_k is not None and self.n >= self.max_k:
            return True
        return self.stale >= self.patience and self.n >= self.min_k

    def _improves(self, value: float) -> bool:
        if math.isnan(value) or not value > self.best:
            return False
        if not math.isfinite(self.best) or self.best == 0:
            return True
        return (value - self.best) / abs(self.best) >= self.rel_tol

    @property
    def k(self) -> int:
        """Selected size: the last real improvement, raised to ``min_k``, within the walk."""
        return min(max(self.k_best, self.min_k), self.n)


def plateau_k(curve: list[float], rel_tol: float = 0.01, patience: int = 3, min_k: int = 1,
              max_k: int | None = None) -> tuple[int, int]:
    """Apply the plateau rule to a finished curve.

    Returns:
        ``(k, walked)``: the selected size and how many values the rule looked at.
    """
    rule = Plateau(rel_tol, patience, min_k, max_k)
    for value in curve:
        if rule.push(float(value)):
            break
    return rule.k, rule.n


class Pool:
    """Validated candidates: their sample-id blocks, consistency and the target.

    Args:
        features: ``(n_samples, d)`` pretrained-backbone features.
        task_samples: ``(n_tasks, m)`` sample ids of each candidate task.
        target: ``(n_t, d)`` target features.
        task_units: ``(n_tasks,)`` unit (e.g. domain) id of each task, for unit-level selection.
        shrinkage: fixed covariance shrinkage α in ``[0, 1]``; ``None`` for Ledoit–Wolf.
    """

    def __init__(self, features: np.ndarray, task_samples: np.ndarray, target: np.ndarray,
                 task_units: np.ndarray | None = None, shrinkage: float | None = None):
        if shrinkage is not None and not 0.0 <= shrinkage <= 1.0:
            raise MtftError(f"shrinkage must be in [0, 1] (or None for Ledoit-Wolf), got {shrinkage}")
        self.shrinkage = shrinkage
        self.features, self.task_samples, self.target = _validate(features, task_samples, target)
        self.target_mean = self.target.mean(axis=0, dtype=np.float64)
        means = task_means(self.features, self.task_samples)
        # centre for coverage: the mean over all candidate samples (each task weighted equally)
        self.center = means.mean(axis=0, dtype=np.float64).astype(np.float32)
        if task_units is None:
            self.level = "task"
            self.ids = np.arange(len(self.task_samples))
            self.consistency = consistency(means, self.target_mean)
            self._unit_blocks: list[np.ndarray] | None = None
        else:
            self.level = "unit"
            units = np.asarray(task_units)
            if units.shape != (len(self.task_samples),) or not np.issubdtype(units.dtype, np.integer):
                raise MtftError(f"task_units must be {len(self.task_samples)} integers (one per task), "
                                f"got dtype {units.dtype} shape {units.shape}")
            self.ids, inverse = np.unique(units, return_inverse=True)
            by_unit = np.argsort(inverse, kind="stable")
            bounds = np.searchsorted(inverse[by_unit], np.arange(len(self.ids) + 1))
            self._unit_blocks = [np.unique(self.task_samples[by_unit[lo:hi]])
                                 for lo, hi in zip(bounds[:-1], bounds[1:])]
            unit_means = np.stack([self.features[b].mean(axis=0, dtype=np.float64) for b in self._unit_blocks])
            self.consistency = consistency(unit_means, self.target_mean)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def kind(self) -> str:
        return "units" if self.level == "unit" else "tasks"

    def ranking(self) -> np.ndarray:
        """Candidate positions by consistency, highest first (ties: lower position first)."""
        return np.argsort(-self.consistency, kind="stable")

    def block(self, pos: int) -> np.ndarray:
        """Sample ids of the candidate at position ``pos`` (a unit: its tasks' distinct samples)."""
        return self.task_samples[pos] if self._unit_blocks is None else self._unit_blocks[pos]

    def stats(self) -> SetStats:
        return SetStats(self.features, self.target, self.center, self.shrinkage)

    def check_k(self, k: int, name: str = "k") -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise MtftError(f"{name} must be an integer, got {k!r}")
        if not 1 <= k <= len(self):
            raise MtftError(f"{name}={k} is outside the pool: it has {len(self)} {self.kind}")
        return int(k)

    def result(self, strategy: str, order: np.ndarray, k: int, div: list[float], cov: list[float],
               stats_at_k: tuple[float, float, float], measure: str | None, params: dict) -> SelectionResult:
        chosen = [int(p) for p in order[:k]]
        cons = [float(self.consistency[p]) for p in chosen]
        diversity, cover, shrink = stats_at_k
        return SelectionResult(
            strategy=strategy, k=k, selected=[int(self.ids[p]) for p in chosen], consistency=cons,
            diversity_curve=div, coverage_curve=cov, diversity=diversity, coverage=cover,
            mean_consistency=float(np.mean(cons)), measure=measure, level=self.level,
            shrinkage=shrink, params=params)


def _validate(features, task_samples, target) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats, tasks, tgt = np.asarray(features), np.asarray(task_samples), np.asarray(target)
    if feats.ndim != 2 or not np.issubdtype(feats.dtype, np.floating):
        raise MtftError(f"features must be a 2-D float array (n_samples, d), got dtype {feats.dtype} shape {feats.shape}")
    if tasks.ndim != 2 or (tasks.size and not np.issubdtype(tasks.dtype, np.integer)):
        raise MtftError(f"task_samples must be a 2-D integer array (n_tasks, m), got dtype {tasks.dtype} shape {tasks.shape}")
    if tasks.shape[0] == 0:
        raise MtftError(f"empty task pool: task_samples has shape {tasks.shape}")
    if tasks.shape[1] == 0:
        raise MtftError(f"tasks have no samples: task_samples has shape {tasks.shape}")
    if tgt.ndim != 2 or tgt.shape[0] == 0:
        raise MtftError(f"target has no samples: need a (n_t >= 1, d) array, got shape {tgt.shape}")
    if tgt.shape[1] != feats.shape[1]:
        raise MtftError(f"target features are {tgt.shape[1]}-d but the pool's are {feats.shape[1]}-d")
    lo, hi = int(tasks.min()), int(tasks.max())
    if lo < 0 or hi >= len(feats):
        bad = int(np.argmax(((tasks < 0) | (tasks >= len(feats))).any(axis=1)))
        raise MtftError(f"task {bad} has sample ids outside 0..{len(feats) - 1} "
                        f"(pool ids range {lo}..{hi}, features has {len(feats)} rows)")
    if not np.isfinite(tgt).all():
        raise MtftError("target features contain NaN or inf")
    feats32 = np.ascontiguousarray(feats, dtype=np.float32)
    if not math.isfinite(float(feats32.sum(dtype=np.float64))) and not np.isfinite(feats32).all():
        row = int(np.argmax(~np.isfinite(feats32).all(axis=1)))
        raise MtftError(f"features contain NaN or inf (first at row {row})")
    return feats32, tasks.astype(np.int64, copy=False), np.ascontiguousarray(tgt, dtype=np.float32)


def check_measure(measure: str) -> None:
    if measure not in MEASURES:
        raise MtftError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")


def walk(pool: Pool, order: np.ndarray, rule: Plateau, measure: str) -> tuple[int, list[float], list[float], float]:
    """Add candidates in ``order`` until ``rule`` stops the walk.

    Returns:
        ``(k, diversity_curve, coverage_curve, shrinkage at k)``.
    """
    check_measure(measure)
    stats = pool.stats()
    div: list[float] = []
    cov: list[float] = []
    shrink: list[float] = []
    for pos in order:
        stats.add(pool.block(int(pos)))
        div.append(stats.mahalanobis_diversity())
        cov.append(stats.coverage())
        shrink.append(stats.shrinkage)
        if rule.push(div[-1] if measure == "mahalanobis" else cov[-1]):
            break
    return rule.k, div, cov, shrink[rule.k - 1]


def evaluate(pool: Pool, positions: np.ndarray) -> tuple[float, float, float]:
    """``(diversity, coverage, shrinkage)`` of a set of candidates, in one pass over its samples."""
    blocks = np.concatenate([pool.block(int(p)) for p in positions])
    ids, counts = np.unique(blocks, return_counts=True)
    stats = pool.stats()
    stats.add(ids, counts)
    return stats.mahalanobis_diversity(), stats.coverage(), stats.shrinkage


def run_plateau(pool: Pool, strategy: str, order: np.ndarray, *, measure: str, rel_tol: float,
                patience: int, min_k: int, max_k: int | None) -> SelectionResult:
    """Walk ``order`` with the plateau rule and package the result."""
    min_k = pool.check_k(min_k, "min_k")
    if max_k is None:
        max_k = len(pool)
    elif isinstance(max_k, bool) or not isinstance(max_k, (int, np.integer)) or max_k < min_k:
        raise MtftError(f"max_k must be an integer >= min_k={min_k}, got {max_k!r}")
    max_k = min(int(max_k), len(pool))  # a cap beyond the pool is no cap
    rule = Plateau(rel_tol, patience, min_k, max_k)
    k, div, cov, shrink = walk(pool, order, rule, measure)
    params = dict(rel_tol=rel_tol, patience=patience, min_k=min_k, max_k=max_k, walked=len(div),
                  shrinkage="ledoit-wolf" if pool.shrinkage is None else pool.shrinkage)
    return pool.result(strategy, order, k, div, cov, (div[k - 1], cov[k - 1], shrink), measure, params)


def greedy_select(features: np.ndarray, task_samples: np.ndarray, target: np.ndarray, *,
                  task_units: np.ndarray | None = None, measure: str = "mahalanobis",
                  rel_tol: float = 0.01, patience: int = 3, min_k: int = 1,
                  max_k: int | None = None, shrinkage: float | None = None) -> SelectionResult:
    """Algorithm 1: consistency ranking, then additions until diversity plateaus.

    Args:
        features: ``(n_samples, d)`` features of the pool's samples (pretrained backbone).
        task_samples: ``(n_tasks, m)`` sample ids of each candidate task.
        target: ``(n_t, d)`` features of the target's samples.
        task_units: ``(n_tasks,)`` unit id per task; when given, whole units are selected and
            ``selected`` lists unit ids.
        measure: ``"mahalanobis"`` or ``"coverage"``: which diversity drives the stop.
        rel_tol: relative improvement that counts as progress.
        patience: additions without progress that end the walk.
        min_k: fewest candidates to select.
        max_k: most candidates to walk through (default and at most: the whole pool).
        shrinkage: fixed covariance shrinkage α in ``[0, 1]``; ``None`` for Ledoit–Wolf.

    Raises:
        MtftError: on inconsistent inputs (see :class:`Pool`) or impossible ``min_k``/``max_k``.
    """
    check_measure(measure)
    pool = Pool(features, task_samples, target, task_units, shrinkage)
    return run_plateau(pool, "selected", pool.ranking(), measure=measure, rel_tol=rel_tol,
                       patience=patience, min_k=min_k, max_k=max_k)
