"""Analyse a sweep: read it, compute, plot, write the tables and the report, and summarise.

Outputs go to ``out``: ``trials.csv`` and ``trials.parquet`` (one row per trial), the PNGs,
``report.html`` and, last, ``report.md``. An earlier report there is deleted first, so a crash
midway never leaves a report that looks complete beside newer files.

Example:
    >>> a = analyze("runs/sweeps/quickstart")                 # doctest: +SKIP
    >>> print(summary(a))                                      # doctest: +SKIP
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtft_ray.analysis.fetch import open_sweep
from mtft_ray.analysis.importance import Importance, param_importance
from mtft_ray.analysis.load import SweepData, load_sweep_dir
from mtft_ray.analysis.pareto import sweep_front
from mtft_ray.analysis.plots import CAPTIONS, render_plots
from mtft_ray.analysis.recommend import Recommendation, recommend
from mtft_ray.analysis.screening import Screening, screening_for
from mtft_ray.analysis.report import build_report, spend_line, status_counts, to_html, to_markdown
from mtft_ray.analysis.stats import Correlation, Fit, correlations, fit_trend, inclusion_effects, pct
from mtft_ray.errors import MtftError

TABLES = ("trials.csv", "trials.parquet")
REPORTS = ("report.html", "report.md")  # written in this order: report.md last


@dataclass
class Analysis:
    """Everything computed for one sweep, and the files written."""

    data: SweepData
    correlations: list[Correlation]
    fit: Fit
    importance: Importance
    recommendation: Recommendation | None
    skipped: dict[str, str]
    out: Path
    files: list[Path]
    front: pd.DataFrame | None = None  # a multi-objective sweep's Pareto front (trial rows), best primary first
    screening: Screening | None = None  # how well a screen's proxies ranked the finetuned results


def default_out(path: str) -> Path:
    """``PATH/analysis`` for a local sweep, ``runs/analysis/<name>`` for ``s3://``."""
    if path.startswith("s3://"):
        return Path("runs/analysis") / (path.rstrip("/").rsplit("/", 1)[-1] or "sweep")
    return Path(path).expanduser() / "analysis"


def _table_bytes(trials: pd.DataFrame) -> dict[str, bytes]:
    t = trials.copy()
    for col in t.columns:  # parquet needs one type per column: mixed object columns become text
        if t[col].dtype == object and t[col].dropna().map(type).nunique() > 1:
            t[col] = t[col].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    buf = io.BytesIO()
    t.to_parquet(buf, index=False)
    return {"trials.csv": t.to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S%z").encode(),
            "trials.parquet": buf.getvalue()}


def _write(out: Path, files: dict[str, bytes]) -> list[Path]:
    """Remove old outputs (report first), then write each file atomically, the reports last."""
    out.mkdir(parents=True, exist_ok=True)
    for name in (*REPORTS[::-1], *TABLES, *CAPTIONS):
        (out / name).unlink(missing_ok=True)
    written = []
    for name in sorted(files, key=lambda n: (n in REPORTS, REPORTS.index(n) if n in REPORTS else 0, n)):
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_bytes(files[name])
        tmp.replace(path)
        written.append(path)
    return written


def analyze(path: str, out: str | Path | None = None, endpoint: str | None = None,
            screen: str | None = None) -> Analysis:
    """Analyse the sweep at ``path`` (local folder or ``s3://bucket/prefix``) into ``out``.

    ``screen``: a ``screen.json`` (``mtft-ray screen``) whose proxies are checked against the
    results; default the sweep folder's own, or the screen its space came from.

    Raises:
        MtftError: no sweep there, or unreadable storage.
    """
    out = Path(out) if out is not None else default_out(path)
    with open_sweep(path, endpoint) as loc:
        data = load_sweep_dir(loc)
        screening = screening_for(data, screen)  # while an S3 sweep's files are still fetched
    if data.trials.empty:
        raise MtftError(f"the sweep at {loc.uri} has no trials yet (sweep.json but no trial folders): "
                        f"nothing to analyse")
    finished = data.finished()
    corr = correlations(finished, data.metric) if not finished.empty else []
    fit = fit_trend(finished, data.metric) if not finished.empty else Fit([], {"log_Mm": "no finished trial"})
    imp = param_importance(finished, data.space, data.metric, data.mode)
    rec = recommend(data, fit)
    pngs, skipped = render_plots(data, fit, imp)
    files = {**_table_bytes(data.trials), **pngs}
    names = [*files, *REPORTS]
    blocks = build_report(data, corr, fit, imp, rec, pngs, skipped, names)
    files["report.html"] = to_html(blocks, pngs, f"Sweep analysis: {data.name}").encode()
    files["report.md"] = to_markdown(blocks).encode()
    front = sweep_front(data)[0] if data.multi else None
    return Analysis(data, corr, fit, imp, rec, skipped, out, _write(out, files), front, screening)


def _front_lines(a: Analysis) -> list[str]:
    """One line per trial on a multi-objective sweep's Pareto front: params and every objective."""
    if a.front is None:
        return []
    d = a.data
    lines = [f"pareto:      {len(a.front)} trial(s) on the front of {', '.join(d.metrics)}"]
    for _, r in a.front.iterrows():
        params = " ".join(f"{k}={r[k]}" for k in d.params if k in r)
        values = "  ".join(f"{m} {_objective_text(r, m)}" for m in d.metrics)
        lines.append(f"  {str(r['trial_id']).rsplit('_', 1)[-1]}  {params}  {values}")
    return lines


def _objective_text(row: pd.Series, metric: str) -> str:
    """An accuracy as ``81.6 % ± 1.2``, anything else in 4 digits."""
    ci_col = SweepData.ci_for(metric)
    if ci_col is None:
        return f"{float(row[metric]):.4g}"
    ci = row.get(ci_col)
    return pct(row[metric]) + (f" ± {100 * ci:.1f}" if ci is not None and pd.notna(ci) else "")


def summary(a: Analysis) -> str:
    """A few lines for the terminal: statuses, best, correlations, fit, recommendation, files."""
    d = a.data
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(d).items()) or "none"
    state = "ended" if d.ended else f"interrupted ({d.interrupted})" if d.interrupted else "running"
    objectives = ", ".join(f"{m} ({mode})" for m, mode in zip(d.metrics, d.modes))
    lines = [f"{d.name}: {len(d.trials)} trials ({counts}); sweep {state}; metric{'s' if d.multi else ''} {objectives}"]
    if "warnings" in d.trials:
        for t in d.trials[d.trials["warnings"].notna()].itertuples():
            lines.append(f"WARNING:     trial {t.trial_id}: {t.warnings}")
    f = d.finished()
    if not f.empty:
        best = f.loc[f[d.metric].idxmax() if d.mode == "max" else f[d.metric].idxmin()]
        ci = best.get(d.ci_column) if d.ci_column else None
        params = " ".join(f"{k}={best[k]}" for k in d.params if k in best)
        lines.append(f"best:        {best['trial_id']}  {params}  {d.metric} {pct(best[d.metric])}"
                     + (f" ± {100 * ci:.1f}" if ci is not None and pd.notna(ci) else ""))
        lines.append(f"checkpoint:  {best['checkpoint'] or 'not found in the sweep folder'}")
        lines += _front_lines(a)
        lines.append("correlation: " + "; ".join(
            f"{c.label} {c.rho:+.2f} [{c.lo:+.2f}, {c.hi:+.2f}] (n={c.n})" if math.isfinite(c.lo)
            else f"{c.label} - ({c.note})" for c in a.correlations))
        for key, flags in d.subsets.items():
            effects = [e for e in inclusion_effects(f, flags, d.metric) if math.isfinite(e.diff)]
            lines.append(f"{key}: " + "; ".join(f"{e.item} {100 * e.diff:+.1f}" + (
                f" ± {100 * e.half_width:.1f}" if math.isfinite(e.half_width) else "")
                + f" ({e.n_in} with, {e.n_out} without)" for e in effects) + " points, trials with vs without")
    if a.fit.ok:
        terms = " + ".join(p.replace("log_Mm", "log(M·m)") for p in a.fit.predictors)
        lines.append(f"fit:         {d.metric} ~ {terms} on {a.fit.n} trials; held-out MAE "
                     f"{100 * a.fit.loo_mae:.1f} vs {100 * a.fit.base_mae:.1f} points for the mean "
                     f"(R² {a.fit.loo_r2:.2f}, shuffled p={a.fit.perm_p:.3f}): "
                     f"{'beats' if a.fit.beats_baseline else 'does not beat'} the mean")
    if a.recommendation:
        r = a.recommendation
        lines.append(f"next:        {' '.join(f'{k}={v}' for k, v in r.params.items())}  -> {d.metric} "
                     f"{pct(r.predicted)} ± {100 * r.plus_minus:.1f} ({r.basis}{', weak evidence' if r.weak else ''})")
    spent = spend_line(d.trials)
    if spent:
        lines.append(f"spend:       {spent}")
    if d.problems:
        lines.append(f"problems:    {len(d.problems)} (listed in the report); first: {d.problems[0]}")
    for name, why in a.skipped.items():
        lines.append(f"not drawn:   {name}: {why}")
    lines += a.screening.lines() if a.screening else []
    lines.append(f"wrote {len(a.files)} files to {a.out}:")
    lines += [f"  {p}" for p in a.files]
    return "\n".join(lines)

