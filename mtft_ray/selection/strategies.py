"""Selection strategies by name: Algorithm 1 and the paper's ablations.

========================  ==========================================  =====================
name                      order                                       size
========================  ==========================================  =====================
``selected``              consistency, highest first (Algorithm 1)    plateau rule
``no_consistency``        random (seeded)                             plateau rule
``no_diversity``          consistency, highest first                  ``k`` (required)
``random``                random (seeded)                             ``k`` (required)
``all``                   consistency, highest first                  the whole pool
========================  ==========================================  =====================

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((500, 32)).astype(np.float32)
    >>> tasks = rng.integers(0, 500, size=(40, 25))
    >>> runs = ablations(features, tasks, target=features[:10])
    >>> {name: r.k for name, r in runs.items()}["random"] == runs["selected"].k
    True
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mtft_ray.errors import MtftError
from mtft_ray.selection.greedy import Pool, SelectionResult, check_measure, evaluate, run_plateau

__all__ = ["STRATEGIES", "select", "select_from_pool", "ablations"]


def _selected(pool: Pool, k, rng, **walk) -> SelectionResult:
    return run_plateau(pool, "selected", pool.ranking(), **walk)


def _no_consistency(pool: Pool, k, rng, **walk) -> SelectionResult:
    return run_plateau(pool, "no_consistency", rng.permutation(len(pool)), **walk)


def _fixed(name: str, pool: Pool, order: np.ndarray) -> SelectionResult:
    div, cov, shrink = evaluate(pool, order)
    return pool.result(name, order, len(order), [div], [cov], (div, cov, shrink), None, {})


def _no_diversity(pool: Pool, k, rng, **walk) -> SelectionResult:
    return _fixed("no_diversity", pool, pool.ranking()[:k])


def _random(pool: Pool, k, rng, **walk) -> SelectionResult:
    return _fixed("random", pool, rng.choice(len(pool), size=k, replace=False))


def _all(pool: Pool, k, rng, **walk) -> SelectionResult:
    return _fixed("all", pool, pool.ranking())


# name -> (function, how k is set: "plateau" | "required" | "pool")
STRATEGIES: dict[str, tuple[Callable[..., SelectionResult], str]] = {
    "selected": (_selected, "plateau"),
    "no_consistency": (_no_consistency, "plateau"),
    "no_diversity": (_no_diversity, "required"),
    "random": (_random, "required"),
    "all": (_all, "pool"),
}


def _check_strategy(strategy: str) -> tuple[Callable[..., SelectionResult], str]:
    if strategy not in STRATEGIES:
        raise MtftError(f"unknown selection strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    return STRATEGIES[strategy]


def select_from_pool(strategy: str, pool: Pool, *, k: int | None = None, seed: int = 0,
                     measure: str = "mahalanobis", rel_tol: float = 0.01, patience: int = 3,
                     min_k: int = 1, max_k: int | None = None) -> SelectionResult:
    """Run one strategy on an already prepared :class:`Pool` (see :func:`select`)."""
    fn, size = _check_strategy(strategy)
    check_measure(measure)
    if size == "plateau" and k is not None:
        raise MtftError(f"strategy {strategy!r} chooses k itself (plateau rule), got k={k}; "
                        "cap it with max_k, or use 'no_diversity' for a fixed k")
    if size == "required":
        if k is None:
            raise MtftError(f"strategy {strategy!r} needs k (1..{len(pool)} {pool.kind})")
        k = pool.check_k(k)
    if size == "pool" and k is not None and pool.check_k(k) != len(pool):
        raise MtftError(f"strategy 'all' selects the whole pool ({len(pool)} {pool.kind}), got k={k}")
    rng = np.random.default_rng(seed)
    return fn(pool, k, rng, measure=measure, rel_tol=rel_tol, patience=patience, min_k=min_k, max_k=max_k)


def select(strategy: str, features: np.ndarray, task_samples: np.ndarray, target: np.ndarray, *,
           task_units: np.ndarray | None = None, k: int | None = None, seed: int = 0,
           measure: str = "mahalanobis", rel_tol: float = 0.01, patience: int = 3, min_k: int = 1,
           max_k: int | None = None, shrinkage: float | None = None) -> SelectionResult:
    """Select finetuning tasks (or units) for a target with a named strategy.

    Args:
        strategy: one of :data:`STRATEGIES`.
        features: ``(n_samples, d)`` pretrained-backbone features of the pool's samples.
        task_samples: ``(n_tasks, m)`` sample ids of each candidate task.
        target: ``(n_t, d)`` features of the target's samples.
        task_units: ``(n_tasks,)`` unit id per task for unit-level (e.g. domain) selection.
        k: size for ``random`` and ``no_diversity`` (required there, refused by the plateau
            strategies, optional for ``all`` where it must equal the pool size).
        seed: seed of the random order (``random``, ``no_consistency``).
        measure, rel_tol, patience, min_k, max_k: the plateau rule, see
            :func:`mtft_ray.selection.greedy.greedy_select`.
        shrinkage: fixed covariance shrinkage α in ``[0, 1]``; ``None`` for Ledoit–Wolf.

    Raises:
        MtftError: unknown strategy, bad ``k`` or inconsistent inputs.
    """
    _check_strategy(strategy)
    check_measure(measure)
    pool = Pool(features, task_samples, target, task_units, shrinkage)
    return select_from_pool(strategy, pool, k=k, seed=seed, measure=measure, rel_tol=rel_tol,
                            patience=patience, min_k=min_k, max_k=max_k)


def ablations(features: np.ndarray, task_samples: np.ndarray, target: np.ndarray, *,
              task_units: np.ndarray | None = None, seed: int = 0, measure: str = "mahalanobis",
              rel_tol: float = 0.01, patience: int = 3, min_k: int = 1,
              max_k: int | None = None, shrinkage: float | None = None) -> dict[str, SelectionResult]:
    """Every strategy on one pool; the fixed-size ones at the k Algorithm 1 chose.

    Returns:
        strategy name → result, ``selected`` first.
    """
    check_measure(measure)
    pool = Pool(features, task_samples, target, task_units, shrinkage)
    walk = dict(measure=measure, rel_tol=rel_tol, patience=patience, min_k=min_k, max_k=max_k)
    out = {"selected": select_from_pool("selected", pool, seed=seed, **walk)}
    for name, (_, size) in STRATEGIES.items():
        if name != "selected":
            k = out["selected"].k if size == "required" else None
            out[name] = select_from_pool(name, pool, k=k, seed=seed, **walk)
    return out
