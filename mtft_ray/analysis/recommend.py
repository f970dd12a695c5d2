"""The next configuration to try, from the trend fit and the trials' marginal means.

When the fit beats the mean-only baseline on held-out trials and keeps log(M·m), the proposal
starts from the best trial with the best level of every categorical key (the level with the
best mean over finished trials), then moves ``tasks.M`` one doubling (or halving) in the
direction of the fitted slope: inside the searched range while it has room, else just beyond
it, never past twice the largest M tried. Its predicted accuracy is that trial's plus the fitted
change, ± twice the slope's standard error times the change, combined with the trial's own CI.
Otherwise the proposal is the best observed configuration, and the report says why.

Example:
    >>> rec = recommend(data, fit_trend(data.finished(), data.metric))   # doctest: +SKIP
    >>> rec.params                                                        # doctest: +SKIP
    {'selection.strategy': 'selected', 'tasks.M': 200}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtft_ray.analysis.load import SweepData
from mtft_ray.analysis.stats import Fit, pct

SIZE_KEY = "tasks.M"
FEW_TRIALS = 10
WEAK_P = 0.05  # a fit that shuffled accuracies match this often is called weak evidence


@dataclass
class Recommendation:
    """A proposed next configuration.

    Attributes:
        params: dotted key → proposed value (the searched keys, plus ``tasks.M`` when the fit moves it).
        reasons: one line per key: why this value.
        predicted, plus_minus: the metric expected for it, and its uncertainty (same units).
        basis: ``"fit"`` or ``"best observed"``.
        anchor: the trial the proposal starts from.
        summary: one paragraph for people.
        more: further trials worth running (ranges to widen, repeats).
        weak: a fit-based proposal on weak evidence (see :func:`recommend`).
    """

    params: dict[str, Any]
    reasons: list[str]
    predicted: float
    plus_minus: float
    basis: str
    anchor: str
    summary: str = ""
    more: list[str] = field(default_factory=list)
    weak: bool = False


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _best_index(values: pd.Series, mode: str) -> Any:
    return values.idxmax() if mode == "max" else values.idxmin()


def _is_numeric_key(spec: dict, values: pd.Series) -> bool:
    return "int" in spec or "float" in spec or pd.to_numeric(values, errors="coerce").notna().all()


def _level_means(trials: pd.DataFrame, key: str, metric: str) -> pd.DataFrame:
    y = pd.to_numeric(trials[metric], errors="coerce")
    return y.groupby(trials[key].map(str)).agg(["mean", "count"])


def _categorical_levels(trials: pd.DataFrame, data: SweepData) -> dict[str, tuple[Any, str]]:
    """For each categorical searched key (other than the size): the level with the best mean, and why."""
    out = {}
    for key, spec in data.space.items():
        if key == SIZE_KEY or key not in trials or _is_numeric_key(spec, trials[key]):
            continue
        means = _level_means(trials, key, data.metric)
        if len(means) < 2:
            continue
        best = _best_index(means["mean"], data.mode)
        value = _py(trials.loc[trials[key].map(str) == best, key].iloc[0])
        others = ", ".join(f"{lvl} {pct(r['mean'])}" for lvl, r in means.iterrows() if lvl != best)
        out[key] = (value, (f"{key}={value}: best mean {data.metric} {pct(means.loc[best, 'mean'])} "
                            f"over {int(means.loc[best, 'count'])} trial(s) (others: {others})"))
    return out


def _next_size(current: int, tried: list[int], spec: dict, up: bool) -> int:
    """One doubling (halving) of M: inside the searched range while it has room, else just beyond it."""
    lo, hi = spec["int"] if "int" in spec else (min(tried), max(tried))
    if up:
        return int(min(2 * current, hi)) if current < hi else int(min(2 * current, 2 * max(tried)))
    return int(max(current // 2, lo)) if current > lo else max(1, current // 2)


def _more(trials: pd.DataFrame, data: SweepData, best: pd.Series) -> list[str]:
    """Ranges whose best value sits at an edge, and a note when the sweep is small."""
    more = []
    for key, spec in data.space.items():
        if key not in trials or not _is_numeric_key(spec, trials[key]):
            continue
        tried = pd.to_numeric(trials[key], errors="coerce").dropna()
        if tried.nunique() < 2:
            continue
        v = float(best[key])
        if v == tried.max():
            more.append(f"the best trial has the largest {key} tried ({_py(best[key])}): widen the range upward")
        elif v == tried.min():
            more.append(f"the best trial has the smallest {key} tried ({_py(best[key])}): widen the range downward")
    if len(trials) < FEW_TRIALS:
        more.append(f"only {len(trials)} finished trial(s): repeat the best configurations with other seeds "
                    f"(seed=1, 2, ...) to measure the run-to-run spread before trusting small differences")
    return more


def _from_fit(trials: pd.DataFrame, data: SweepData, fit: Fit) -> Recommendation:
    levels = _categorical_levels(trials, data)
    match = trials
    for key, (value, _) in levels.items():
        match = match[match[key].map(str) == str(value)]
    pool = match if len(match) else trials
    anchor = pool.loc[_best_index(pd.to_numeric(pool[data.metric]), data.mode)]
    b, se = fit.coef["log_Mm"], fit.se["log_Mm"]
    up = (b > 0) == (data.mode == "max")
    tried = sorted(int(v) for v in pd.to_numeric(trials["M"], errors="coerce").dropna().unique())
    spec = data.space.get(SIZE_KEY, {})
    new_m = _next_size(int(anchor["M"]), tried, spec, up)
    delta = math.log(new_m / float(anchor["M"]))
    ci = float(anchor.get(data.ci_column) or 0.0) if data.ci_column else 0.0
    predicted = float(anchor[data.metric]) + b * delta
    pm = math.hypot(2 * (se if math.isfinite(se) else abs(b)) * delta, ci)
    params = {k: _py(anchor[k]) for k in data.space if k in anchor}
    params.update({k: v for k, (v, _) in levels.items()})
    params[SIZE_KEY] = new_m
    per_doubling = b * math.log(2)
    reasons = [r for _, r in levels.values()]
    reasons.append(f"{SIZE_KEY}={new_m} (from {int(anchor['M'])}; M·m {int(anchor['M'] * anchor['m']):,} → "
                   f"{int(new_m * anchor['m']):,}): the fit gives {100 * per_doubling:+.1f} points per doubling of M·m "
                   f"(slope {b:.4f} ± {se:.4f} per unit of ln M·m)")
    reasons += [f"{k}={_py(anchor[k])}: not in the fit, kept from the best matching trial"
                for k in data.space if k not in levels and k != SIZE_KEY]
    return Recommendation(params, reasons, predicted, pm, "fit", str(anchor["trial_id"]))


def _from_best(trials: pd.DataFrame, data: SweepData, why: str) -> Recommendation:
    best = trials.loc[_best_index(pd.to_numeric(trials[data.metric]), data.mode)]
    ci = float(best.get(data.ci_column) or 0.0) if data.ci_column else 0.0
    params = {k: _py(best[k]) for k in data.space if k in best}
    return Recommendation(params, [f"the best observed configuration: {why}"], float(best[data.metric]), ci,
                          "best observed", str(best["trial_id"]))


def _summary(rec: Recommendation, data: SweepData, fit: Fit, target: str | None) -> str:
    setting = ", ".join(f"{k}={v}" for k, v in rec.params.items()) or "the base experiment"
    head = f"Next run{f' for target {target}' if target else ''}: {setting}. "
    quality = (f"The trend fit ({fit.n} trials) has held-out MAE {100 * fit.loo_mae:.1f} points against "
               f"{100 * fit.base_mae:.1f} for the mean of the other trials (held-out R² {fit.loo_r2:.2f})"
               if fit.ok else "No trend fit could be made")
    if rec.basis != "fit":
        return (head + f"This is the best trial so far ({rec.anchor}: {pct(rec.predicted)} ± "
                f"{100 * rec.plus_minus:.1f}). {quality}, so it cannot yet say where to go beyond the trials run; "
                f"run more trials.")
    shuffled = f"{100 * fit.perm_p:.0f}% of fits to shuffled accuracies do as well"
    caveats = [c for c, weak in ((f"{shuffled}, so the trend may be luck", fit.perm_p >= WEAK_P),
                                 ("the M·m slope's ±2 SE interval includes 0", not fit.significant("log_Mm")))
               if weak]
    tail = (f" Weak evidence: {'; '.join(caveats)}. Treat the gain as a hypothesis to test." if rec.weak
            else f" Only {shuffled}.")
    return (head + f"Predicted {data.metric} {pct(rec.predicted)} ± {100 * rec.plus_minus:.1f} points "
            f"(trial {rec.anchor} plus the fitted change). {quality}.{tail}")


def recommend(data: SweepData, fit: Fit) -> Recommendation | None:
    """The next configuration for the sweep's target, or ``None`` without any finished trial."""
    trials = data.finished()
    if trials.empty:
        return None
    if fit.beats_baseline and "log_Mm" in fit.predictors and "M" in trials and trials["M"].notna().all():
        rec = _from_fit(trials, data, fit)
    else:
        why = ("the trend fit is no better than the mean on held-out trials" if fit.ok
               else "no trend fit (" + "; ".join(f"{k}: {v}" for k, v in fit.dropped.items()) + ")")
        if fit.ok and "log_Mm" not in fit.predictors:
            why = "the fit has no M·m term to extrapolate"
        rec = _from_best(trials, data, why)
    for key, spec in data.space.items():  # a subset as the list an override takes: tasks.domains=[a,b]
        if "subset" in spec and isinstance(rec.params.get(key), str):
            rec.params[key] = "[" + ",".join(rec.params[key].split("+")) + "]"
    best = trials.loc[_best_index(pd.to_numeric(trials[data.metric]), data.mode)]
    rec.more = _more(trials, data, best)
    rec.weak = rec.basis == "fit" and (fit.perm_p >= WEAK_P or not fit.significant("log_Mm"))
    target = best.get("selection.target_domain")
    rec.summary = _summary(rec, data, fit, target if isinstance(target, str) else None)
    return rec
