"""The analysis plots, as PNG bytes (matplotlib's Agg canvas, no pyplot state).

Each plot either renders or says why it cannot (:class:`Skip`), so a report never has a plot
silently missing.

Example:
    >>> pngs, skipped = render_plots(data, fit, importance)   # doctest: +SKIP
    >>> sorted(pngs)                                           # doctest: +SKIP
    ['diversity.png', 'fit.png', 'importance.png', 'size.png', 'strategies.png', 'subsets.png', 'timeline.png']
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import NullLocator

from mtft_ray.analysis.importance import Importance
from mtft_ray.analysis.load import SweepData
from mtft_ray.analysis.pareto import sweep_front
from mtft_ray.analysis.stats import PREDICTORS, Fit, inclusion_effects

STRATEGY_ORDER = ("random", "no_consistency", "no_diversity", "selected", "all")
STRATEGY_COLORS = {"random": "#7f7f7f", "no_consistency": "#ff7f0e", "no_diversity": "#9467bd",
                   "selected": "#2ca02c", "all": "#1f77b4"}
STATUS_COLORS = {"finished": "#2ca02c", "stopped early": "#ff7f0e", "running": "#1f77b4", "pending": "#c7c7c7",
                 "incomplete": "#8c564b", "errored": "#d62728"}
STRATEGY = "selection.strategy"
DPI = 110
TIMELINE_LABELS = 40  # name each trial on the timeline up to this many
ANNOTATE_MAX = 12  # label points with their M·m up to this many trials
DODGE = 1.04  # multiplicative x offset between strategies on log axes
PARETO_PAIRS = 6  # panels drawn for more than two objectives: the first pairs of metrics

CAPTIONS = {
    "size.png": "Accuracy against the number of finetuning tasks M and samples per task m (log axes), and where "
                "the trials sit in the M–m plane; dashed lines join configurations of equal M·m.",
    "diversity.png": "Accuracy against the diversity of each trial's task set, coloured by its mean consistency "
                     "with the target (trials that report no diversity, e.g. strategy 'all' without a target domain, are not shown).",
    "strategies.png": "Mean accuracy per selection strategy at each M·m; error bars are 95% CIs (a single "
                      "trial's own CI, or for repeats the larger of the propagated CI and 1.96·SD/√n).",
    "importance.png": "How much each searched parameter explains the metric (Optuna fANOVA; few trials make "
                      "this indicative only).",
    "timeline.png": "When each trial ran, coloured by status.",
    "fit.png": "Each trial's metric against the trend fit's prediction with that trial held out; the dashed "
               "line is a perfect prediction.",
    "pareto.png": "The finished trials against the sweep's objectives (multi-objective sweeps only); red: the "
                  "Pareto front, the trials no other trial matches or beats in every objective while beating it "
                  "in one, named by trial and, for two objectives, joined as the staircase of the best first "
                  "objective reachable at each value of the second; bars are 95% CIs of accuracies.",
    "subsets.png": "For each item of a searched subset (a source domain): mean accuracy of the trials that include "
                   "it minus that of the trials that leave it out, with a 95% interval (a marginal comparison).",
}


class Skip(Exception):
    """A plot that cannot be drawn from these trials; the message says why."""


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _num(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(float)


def _groups(trials: pd.DataFrame) -> list[tuple[str | None, pd.DataFrame]]:
    """Trials split by selection strategy (canonical order) when it varies, else one group."""
    if STRATEGY not in trials or trials[STRATEGY].nunique() < 2:
        return [(None, trials)]
    names = sorted(trials[STRATEGY].map(str).unique(), key=lambda s: (STRATEGY_ORDER.index(s)
                                                                      if s in STRATEGY_ORDER else 99, s))
    return [(n, trials[trials[STRATEGY].map(str) == n]) for n in names]


def _color(name: str | None, i: int) -> str:
    return STRATEGY_COLORS.get(name or "", f"C{i}") if name else "C0"


def _acc_label(data: SweepData) -> str:
    return f"{data.metric} (%)"


def _errorbars(ax, x: np.ndarray, t: pd.DataFrame, data: SweepData, **kw) -> None:
    y = 100 * _num(t[data.metric])
    err = 100 * _num(t[data.ci_column]) if data.ci_column and data.ci_column in t else None
    ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, markersize=6, **kw)


def plot_size(data: SweepData) -> Figure:
    t = data.finished()
    t = t[np.isfinite(_num(t["M"])) & np.isfinite(_num(t["m"]))] if {"M", "m"} <= set(t) else t.iloc[0:0]
    if t.empty:
        raise Skip("no finished trial reports M and m")
    M, m = _num(t["M"]), _num(t["m"])
    if len(np.unique(M)) < 2 and len(np.unique(m)) < 2:
        raise Skip(f"every finished trial has M={M[0]:g} and m={m[0]:g}")
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, col, name in ((axes[0], "M", "M (finetuning tasks)"), (axes[1], "m", "m (samples per task)")):
        groups = _groups(t)
        for i, (g, gt) in enumerate(groups):
            x = _num(gt[col]) * DODGE ** (i - (len(groups) - 1) / 2)  # side by side where x values coincide
            _errorbars(ax, x, gt, data, color=_color(g, i), label=g or "trials")
            means = pd.Series(_num(gt[data.metric]), index=x).groupby(level=0).mean().sort_index()
            if len(means) > 1:
                ax.plot(means.index, 100 * means.to_numpy(), "-", color=_color(g, i), alpha=0.6)
        ax.set_xscale("log")
        values = np.unique(_num(t[col]))
        _log_ticks(ax.xaxis, values)
        ax.set_xlabel(f"{name}, log scale")
        ax.set_ylabel(_acc_label(data))
        only = f" ({col} = {values[0]:g} in every trial)" if len(values) == 1 else ""
        ax.set_title(f"{data.metric} vs {col}{only}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(title="strategy" if len(_groups(t)) > 1 else None, fontsize=8)
    _plane(fig, axes[2], t, data)
    fig.suptitle(f"{data.name}: accuracy against task count and task size (mean ± 95% CI)", fontsize=12)
    return fig


def _log_ticks(axis, values: np.ndarray) -> None:
    """Ticks at the values tried, in plain numbers (log axes otherwise print 2×10¹ and the like)."""
    values = np.unique(values)
    axis.set_ticks(values, [f"{v:g}" for v in values])
    axis.set_minor_locator(NullLocator())


def _plane(fig: Figure, ax, t: pd.DataFrame, data: SweepData) -> None:
    """The (M, m) cells tried, coloured by their best metric, with iso-M·m lines."""
    cells = t.assign(_y=_num(t[data.metric])).groupby(["M", "m"])["_y"]
    cells = (cells.max() if data.mode == "max" else cells.min()).to_frame("best").join(cells.count().rename("n"))
    M, m = cells.index.get_level_values(0).to_numpy(float), cells.index.get_level_values(1).to_numpy(float)
    pad = 1.6
    xlo, xhi, ylo, yhi = M.min() / pad, M.max() * pad, m.min() / pad, m.max() * pad
    xs = np.geomspace(xlo, xhi, 50)
    mm = np.unique(M * m)
    if len(mm) > 6:
        mm = np.unique(np.quantile(mm, np.linspace(0, 1, 6)))
    for v in mm:
        ax.plot(xs, v / xs, "--", color="0.6", lw=0.8)
        a, b = max(xlo, v / yhi), min(xhi, v / ylo)
        x = math.sqrt(a * b)
        ax.annotate(f"M·m={v:,.0f}", (x, v / x), fontsize=7, color="0.3", ha="left", va="bottom",
                    xytext=(3, 3), textcoords="offset points")
    sc = ax.scatter(M, m, c=100 * cells["best"].to_numpy(), cmap="viridis", s=90, edgecolors="k", zorder=3)
    for x, y, n in zip(M, m, cells["n"]):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, -15), ha="center", fontsize=7)
    fig.colorbar(sc, ax=ax, label=f"best {data.metric} in the cell (%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(xlo, xhi)
    ax.set_ylim(ylo, yhi)
    _log_ticks(ax.xaxis, M)
    _log_ticks(ax.yaxis, m)
    ax.set_xlabel("M (finetuning tasks), log scale")
    ax.set_ylabel("m (samples per task), log scale")
    ax.set_title("(M, m) tried; dashed: equal M·m; n = trials", fontsize=10)


def plot_diversity(data: SweepData) -> Figure:
    finished = data.finished()
    t = finished[np.isfinite(_num(finished["diversity"]))] if "diversity" in finished else finished.iloc[0:0]
    if t.empty:
        raise Skip("no finished trial reports a diversity (no task selection in these trials)")
    if t["diversity"].nunique() < 2:
        raise Skip(f"every trial with a selection has the same diversity ({_num(t['diversity'])[0]:.3f})")
    fig = Figure(figsize=(8.5, 5.4), layout="constrained")
    ax = fig.subplots()
    cons = _num(t["consistency"]) if "consistency" in t else np.full(len(t), np.nan)
    has_cons = np.isfinite(cons).any()
    y, err = 100 * _num(t[data.metric]), (100 * _num(t[data.ci_column]) if data.ci_column in t else None)
    ax.errorbar(_num(t["diversity"]), y, yerr=err, fmt="none", ecolor="0.5", capsize=3, zorder=1)
    markers = "osD^vP*X"
    groups = _groups(t)
    for i, (g, gt) in enumerate(groups):
        kw = ({"c": _num(gt["consistency"]), "cmap": "viridis", "vmin": np.nanmin(cons), "vmax": np.nanmax(cons)}
              if has_cons else {"color": "C0"})
        sc = ax.scatter(_num(gt["diversity"]), 100 * _num(gt[data.metric]), marker=markers[i % len(markers)],
                        s=80, edgecolors="k", zorder=3, **kw)
    if has_cons:
        fig.colorbar(sc, ax=ax, label="mean consistency with the target")
    if len(groups) > 1:  # shapes are strategies; grey handles so the legend does not suggest a consistency
        ax.legend([Line2D([], [], marker=markers[i % len(markers)], ls="", color="0.7", mec="k", ms=8)
                   for i in range(len(groups))], [g for g, _ in groups], title="strategy", fontsize=8)
    missing = len(finished) - len(t)
    if missing:
        left = finished[~finished.index.isin(t.index)]
        which = ", ".join(sorted(left[STRATEGY].map(str).unique())) if STRATEGY in left else ""
        ax.text(0.01, 0.01, f"not shown: {missing} finished trial(s) without a selection"
                + (f" (strategy {which})" if which else ""), transform=ax.transAxes, fontsize=8, color="0.4")
    x = _num(t["diversity"])
    span = x.max() - x.min()
    ax.set_xlim(x.min() - 0.08 * span, x.max() + 0.22 * span)
    if len(t) <= ANNOTATE_MAX:
        for _, r in t.iterrows():
            ax.annotate(f"M·m={r['Mm']:,.0f}" if pd.notna(r.get("Mm")) else "", (r["diversity"], 100 * r[data.metric]),
                        textcoords="offset points", xytext=(7, -3), fontsize=7, color="0.35")
    ax.set_xlabel("diversity of the task set (−Mahalanobis distance of the target mean; higher = covers it better)")
    ax.set_ylabel(_acc_label(data))
    ax.set_title(f"{data.name}: accuracy vs diversity, colour = consistency (± 95% CI)", fontsize=11)
    ax.grid(alpha=0.3)
    return fig


def _cell_ci(t: pd.DataFrame, data: SweepData) -> float:
    ci = _num(t[data.ci_column]) if data.ci_column in t else np.zeros(len(t))
    ci = np.nan_to_num(ci)
    if len(t) == 1:
        return float(ci[0])
    spread = 1.96 * float(np.std(_num(t[data.metric]), ddof=1)) / math.sqrt(len(t))
    return max(float(np.sqrt((ci ** 2).sum())) / len(t), spread)


def plot_strategies(data: SweepData) -> Figure:
    t = data.finished()
    groups = _groups(t)
    if len(groups) < 2:
        raise Skip("the finished trials do not compare selection strategies (one or none)")
    sizes = sorted(t["Mm"].dropna().unique()) if "Mm" in t else []
    hue = [None] if not sizes or len(sizes) > 4 else sizes
    fig = Figure(figsize=(max(7.0, 1.6 * len(groups) * len(hue) ** 0.5 + 3), 5))
    ax = fig.subplots()
    width = 0.8 / len(hue)
    tops, lows = [], []
    for j, h in enumerate(hue):
        for i, (g, gt) in enumerate(groups):
            cell = gt if h is None else gt[gt["Mm"] == h]
            if cell.empty:
                continue
            mean, ci = 100 * float(np.mean(_num(cell[data.metric]))), 100 * _cell_ci(cell, data)
            x = i + (j - (len(hue) - 1) / 2) * width
            ax.bar(x, mean, width * 0.9, color=_color(g, i), alpha=0.45 + 0.55 * (j + 1) / len(hue),
                   edgecolor="k", label=(f"M·m={h:,.0f}" if h is not None else None) if i == 0 else None)
            ax.errorbar(x, mean, yerr=ci, color="k", capsize=4)
            ax.annotate(f"{mean:.1f}\nn={len(cell)}", (x, mean + ci), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7)
            tops.append(mean + ci)
            lows.append(mean - ci)
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    floor = max(0.0, 5 * math.floor((min(lows) - 5) / 5))
    ax.set_ylim(floor, min(100.0, max(tops) + 6))
    ax.set_xlabel("selection strategy")
    ax.set_ylabel(_acc_label(data) + (f", axis from {floor:g}" if floor else ""))
    if hue != [None]:
        ax.legend(title="bar shade", fontsize=8)
    ax.set_title(f"{data.name}: {data.metric} per selection strategy (mean ± 95% CI)", fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_importance(data: SweepData, importance: Importance) -> Figure:
    if not importance.values:
        raise Skip(importance.note or "no importance")
    items = sorted(importance.values.items(), key=lambda kv: kv[1])
    fig = Figure(figsize=(7, 1.2 + 0.5 * len(items)))
    ax = fig.subplots()
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    for i, (_, v) in enumerate(items):
        ax.annotate(f"{v:.2f}", (v, i), textcoords="offset points", xytext=(4, 0), va="center", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("importance (fraction of the metric's variation explained, sums to 1)")
    ax.set_title(f"{data.name}: parameter importance for {data.metric} (Optuna fANOVA, {importance.n} trials)",
                 fontsize=10)
    return fig


def plot_timeline(data: SweepData) -> Figure:
    t = data.trials
    if t.empty or t["started_at"].isna().all():
        raise Skip("no trial has a start time yet")
    t = t[t["started_at"].notna()].sort_values("started_at")
    t0 = t["started_at"].min()
    start = (t["started_at"] - t0).dt.total_seconds().to_numpy() / 60
    end = (t["ended_at"].fillna(t["started_at"]) - t0).dt.total_seconds().to_numpy() / 60
    fig = Figure(figsize=(10, min(1.5 + 0.35 * len(t), 16)))
    ax = fig.subplots()
    labels = []
    for i, (_, r) in enumerate(t.iterrows()):
        ax.barh(i, max(end[i] - start[i], 0.02), left=start[i], color=STATUS_COLORS.get(r["status"], "0.5"),
                hatch="//" if r["status"] == "running" else None, edgecolor="k", lw=0.5)
        params = ", ".join(f"{k.rsplit('.', 1)[-1]}={r[k]}" for k in data.params if k in r and pd.notna(r[k]))
        labels.append(f"{str(r['trial_id']).rsplit('_', 1)[-1]}  {params}"[:60])
    if len(t) <= TIMELINE_LABELS:
        ax.set_yticks(range(len(t)), labels, fontsize=8)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(t)} trials, in order of start")
    ax.invert_yaxis()
    seen = list(dict.fromkeys(t["status"]))
    ax.legend([Patch(color=STATUS_COLORS.get(s, "0.5")) for s in seen], seen, fontsize=8, title="status",
              loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xlabel(f"minutes since the first trial started ({t0:%Y-%m-%d %H:%M} UTC)")
    ax.set_title(f"{data.name}: trial timeline ({len(t)} trials)", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_fit(data: SweepData, fit: Fit) -> Figure:
    if not fit.ok:
        raise Skip("no trend fit: " + "; ".join(f"{PREDICTORS[k]}: {v}" for k, v in fit.dropped.items()))
    fig = Figure(figsize=(6.2, 5.6))
    ax = fig.subplots()
    obs, held = 100 * fit.observed, 100 * fit.held_out
    ids = pd.Series(fit.trial_ids)
    trials = data.trials.set_index("trial_id")
    strat = ids.map(trials[STRATEGY]) if STRATEGY in trials else pd.Series([None] * len(ids))
    for i, g in enumerate(dict.fromkeys(strat)):
        sel = (strat == g).to_numpy() if g is not None else strat.isna().to_numpy()
        ax.scatter(held[sel], obs[sel], s=60, edgecolors="k", color=_color(g, i), label=g, zorder=3)
    lo, hi = min(obs.min(), held.min()) - 1, max(obs.max(), held.max()) + 1
    ax.plot([lo, hi], [lo, hi], "--", color="0.5")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    if strat.notna().any():
        ax.legend(title="strategy", fontsize=8)
    terms = " + ".join(PREDICTORS[p] for p in fit.predictors)
    ax.set_xlabel(f"predicted with the trial held out (%), fit on {terms}")
    ax.set_ylabel(f"observed {data.metric} (%)")
    ax.set_title(f"{data.name}: trend fit, each trial held out in turn\nheld-out R² {fit.loo_r2:.2f}; "
                 f"MAE {100 * fit.loo_mae:.1f} vs {100 * fit.base_mae:.1f} points for the mean ({fit.n} trials)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    return fig


def plot_subsets(data: SweepData) -> Figure:
    if not data.subsets:
        raise Skip("the sweep searches no subset (e.g. tasks.domains: {subset: [...]})")
    finished = data.finished()
    if finished.empty:
        raise Skip("no finished trial")
    fig = Figure(figsize=(7.5, 1.5 + 0.45 * sum(len(f) for f in data.subsets.values())))
    axes = np.atleast_1d(fig.subplots(len(data.subsets), 1, squeeze=False)[:, 0])
    for ax, (key, flags) in zip(axes, data.subsets.items()):
        effects = [e for e in inclusion_effects(finished, flags, data.metric) if math.isfinite(e.diff)]
        effects.sort(key=lambda e: e.diff)
        diffs = [100 * e.diff for e in effects]
        err = [100 * e.half_width if math.isfinite(e.half_width) else 0.0 for e in effects]
        ax.barh([f"{e.item} ({e.n_in}/{e.n_out})" for e in effects], diffs, xerr=err, capsize=3,
                color=["#2ca02c" if d > 0 else "#d62728" for d in diffs], edgecolor="k", lw=0.5)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_xlabel(f"{data.metric}: mean with minus mean without (points); (trials with / without)")
        ax.set_title(f"{data.name}: {key}, each item with vs without (± 95% interval)", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    return fig


def _objective(t: pd.DataFrame, metric: str) -> np.ndarray:
    """An objective's values as drawn: accuracies in percent, as in the other plots."""
    return _num(t[metric]) * (100 if SweepData.ci_for(metric) else 1)


def _objective_label(metric: str, mode: str) -> str:
    unit = " (%)" if SweepData.ci_for(metric) else ""
    return f"{metric}{unit}, {'higher' if mode == 'max' else 'lower'} is better"


def _objective_ci(t: pd.DataFrame, metric: str) -> np.ndarray | None:
    ci = SweepData.ci_for(metric)
    return 100 * _num(t[ci]) if ci and ci in t else None


def _pareto_panel(ax, t: pd.DataFrame, front: pd.DataFrame, x: tuple[str, str], y: tuple[str, str],
                  staircase: bool) -> None:
    """One pair of objectives ``(metric, mode)``: the other trials grey, the front red and named,
    joined as a staircase when these are the only two objectives."""
    (xm, xmode), (ym, ymode) = x, y
    rest = t[~t.index.isin(front.index)]
    ax.errorbar(_objective(rest, xm), _objective(rest, ym), xerr=_objective_ci(rest, xm),
                yerr=_objective_ci(rest, ym), fmt="o", color="0.6", ecolor="0.8", capsize=2, markersize=6,
                label=f"other finished trials ({len(rest)})", zorder=2)
    fx, fy = _objective(front, xm), _objective(front, ym)
    ax.errorbar(fx, fy, xerr=_objective_ci(front, xm), yerr=_objective_ci(front, ym), fmt="o", color="#d62728",
                ecolor="#d62728", capsize=3, markersize=8, mec="k", label=f"Pareto front ({len(front)})", zorder=4)
    if staircase and len(front) > 1:  # best-x first; a post-step is the best y reachable at each x
        order = np.argsort(fx if xmode == "min" else -fx, kind="stable")
        ax.step(fx[order], fy[order], where="post", color="#d62728", lw=1.2, alpha=0.7, zorder=3)
    names: dict[tuple[float, float], list[str]] = {}  # trials on the same spot share one label
    for trial, px, py in zip(front["trial_id"], fx, fy):
        names.setdefault((px, py), []).append(str(trial).rsplit("_", 1)[-1])
    for (px, py), ids in names.items():
        ax.annotate(", ".join(ids), (px, py), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel(_objective_label(xm, xmode))
    ax.set_ylabel(_objective_label(ym, ymode))
    ax.grid(alpha=0.3)


def plot_pareto(data: SweepData) -> Figure:
    """The finished trials in objective space, the Pareto front highlighted.

    Two objectives: the second metric across, the first up, the front joined as a staircase. More:
    one panel per pair of metrics (at most :data:`PARETO_PAIRS`), the front (non-dominated in all of
    them) highlighted but not joined, as a projection may hide why a front trial is on it.

    Raises:
        Skip: not a multi-objective sweep, or no finished trial reports every objective.
    """
    if not data.multi:
        raise Skip(f"a single-objective sweep ({data.metric}): no Pareto front")
    front, t = sweep_front(data)
    if t.empty:
        raise Skip(f"no finished trial reports every objective ({', '.join(data.metrics)})")
    objectives = list(zip(data.metrics, data.modes))
    pairs = [(objectives[1], objectives[0])] if len(objectives) == 2 else \
        [(objectives[j], objectives[i]) for i, j in itertools.combinations(range(len(objectives)), 2)][:PARETO_PAIRS]
    cols = min(3, len(pairs))
    rows = math.ceil(len(pairs) / cols)
    fig = Figure(figsize=(7.5 if cols == 1 else 5.2 * cols, 5.6 if rows == 1 else 4.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax, (x, y) in zip(axes, pairs):
        _pareto_panel(ax, t, front, x, y, staircase=len(objectives) == 2)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    left = len(data.finished()) - len(t)
    note = (f"; {left} finished trial(s) without every objective not shown" if left else "")
    head = (f"{data.name}: Pareto front of {' and '.join(f'{m} ({d})' for m, d in objectives)}" if len(pairs) == 1
            else f"{data.name}: Pareto front of {len(objectives)} objectives, by pairs (red: non-dominated "
                 f"in all {len(objectives)}, so a pair may show one as dominated)")
    fig.suptitle(head + note, fontsize=10 if len(pairs) > 1 else 11)
    return fig


def render_plots(data: SweepData, fit: Fit, importance: Importance) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every plot as PNG bytes by file name, and the skipped ones with their reason."""
    makers: dict[str, Callable[[], Figure]] = {
        "size.png": lambda: plot_size(data),
        "diversity.png": lambda: plot_diversity(data),
        "strategies.png": lambda: plot_strategies(data),
        "importance.png": lambda: plot_importance(data, importance),
        "fit.png": lambda: plot_fit(data, fit),
        "timeline.png": lambda: plot_timeline(data),
        "subsets.png": lambda: plot_subsets(data),
        **({"pareto.png": lambda: plot_pareto(data)} if data.multi else {}),  # single-objective: not listed
    }
    pngs, skipped = {}, {}
    for name, make in makers.items():
        try:
            pngs[name] = _png(make())
        except Skip as e:
            skipped[name] = str(e)
    return pngs, skipped
