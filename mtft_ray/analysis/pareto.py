"""The Pareto front of a multi-objective sweep: the finished trials no other trial beats on every
objective at once (``acc_1shot`` up, ``gpu_hours`` down). Its plot is
:func:`mtft_ray.analysis.plots.plot_pareto`; the report lists the front's trials.

A trial is on the front when no other trial is at least as good in every objective and strictly
better in one: trials that tie on every objective are all on it. A trial missing an objective (or
holding NaN there) is never on the front and never dominates.

Example:
    >>> df = pd.DataFrame({"acc": [0.9, 0.8, 0.7, 0.9], "hours": [2.0, 1.0, 1.5, 3.0]})
    >>> pareto_mask(df, ["acc", "hours"], ["max", "min"]).tolist()
    [True, True, False, False]
    >>> pareto_front(df, ["acc", "hours"], ["max", "min"]).index.tolist()
    [0, 1]
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtft_ray.analysis.load import SweepData
from mtft_ray.errors import MtftError


def _costs(df: pd.DataFrame, metrics: list[str], modes: list[str]) -> np.ndarray:
    """The objectives as an (n, k) array to minimise (maximised ones negated); NaN where missing."""
    if len(metrics) != len(modes) or not metrics:
        raise MtftError(f"pareto: give one mode per metric, got metrics {metrics} and modes {modes}")
    bad = [m for m in modes if m not in ("max", "min")]
    if bad:
        raise MtftError(f"pareto: modes are 'max' or 'min', got {bad}")
    cols = [pd.to_numeric(df[m], errors="coerce").to_numpy(float) if m in df else np.full(len(df), np.nan)
            for m in metrics]
    values = np.column_stack(cols) if cols else np.empty((len(df), 0))
    return values * np.array([-1.0 if m == "max" else 1.0 for m in modes])


def complete_mask(df: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.Series:
    """True for each row of ``df`` with every objective a finite number (what the front is of)."""
    return pd.Series(np.isfinite(_costs(df, metrics, modes)).all(axis=1), index=df.index, name="complete")


def pareto_mask(df: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.Series:
    """True for each row of ``df`` on the Pareto front of ``metrics`` (each ``max`` or ``min``).

    Rows with a missing or non-finite objective are False and dominate nothing. O(n²·k): fine for
    a sweep's thousands of trials.

    Raises:
        MtftError: metrics and modes differ in length, or a mode is neither max nor min.
    """
    cost = _costs(df, metrics, modes)
    ok = complete_mask(df, metrics, modes).to_numpy()
    valid = cost[ok]
    on = np.zeros(len(valid), dtype=bool)
    for i, c in enumerate(valid):
        dominated = (valid <= c).all(axis=1) & (valid < c).any(axis=1)
        on[i] = not dominated.any()
    mask = np.zeros(len(df), dtype=bool)
    mask[np.flatnonzero(ok)[on]] = True
    return pd.Series(mask, index=df.index, name="pareto")


def pareto_front(df: pd.DataFrame, metrics: list[str], modes: list[str]) -> pd.DataFrame:
    """The rows of ``df`` on the front, best first in the first metric (ties: by the next ones),
    which for two objectives walks the front from one end to the other."""
    front = df[pareto_mask(df, metrics, modes)]
    cost = _costs(front, metrics, modes)
    order = np.lexsort(cost.T[::-1]) if len(front) else np.arange(0)
    return front.iloc[order]


def sweep_front(data: SweepData) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(front, candidates)`` of a sweep: its finished trials that report every objective, and
    the front among them (:func:`pareto_front`'s order)."""
    finished = data.finished()
    candidates = finished[complete_mask(finished, data.metrics, data.modes)]
    return pareto_front(candidates, data.metrics, data.modes), candidates
