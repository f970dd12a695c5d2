"""``report.md`` and ``report.html`` (PNGs embedded) from one list of blocks.

A block is ``(kind, content)``: ``("h1" | "h2" | "h3" | "p" | "code", text)``,
``("list", [text, ...])``, ``("table", (header, rows))`` or ``("img", (file, alt, caption))``. Text
may use ``**bold**`` and ```code``` spans.

Example:
    >>> print(to_markdown([("h2", "Best"), ("table", (["a", "b"], [[1, "x|y"]]))]))
    ## Best
    <BLANKLINE>
    | a | b |
    |---|---|
    | 1 | x\\|y |
    <BLANKLINE>
"""

from __future__ import annotations

import base64
import html
import math
import re
from typing import Any

import pandas as pd

from mtft_ray.analysis.importance import Importance
from mtft_ray.analysis.load import STATUSES, SweepData
from mtft_ray.analysis.pareto import sweep_front
from mtft_ray.analysis.plots import CAPTIONS
from mtft_ray.analysis.recommend import WEAK_P, Recommendation
from mtft_ray.analysis.stats import PERMUTATIONS, PREDICTORS, Correlation, Fit, inclusion_effects, pct

Block = tuple[str, Any]
MAX_TABLE_ROWS = 30
PLOT_TITLES = {"pareto.png": "Pareto front", "size.png": "Accuracy vs M and m",
               "diversity.png": "Accuracy vs diversity and consistency",
               "strategies.png": "Selection strategies", "importance.png": "Parameter importance",
               "fit.png": "Trend fit on held-out trials", "timeline.png": "Trial timeline",
               "subsets.png": "Each searched item, with vs without"}


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for kind, c in blocks:
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + c)
        elif kind == "p":
            out.append(c)
        elif kind == "code":
            out.append(f"```\n{c}\n```")
        elif kind == "list":
            out.append("\n".join(f"- {x}" for x in c))
        elif kind == "table":
            head, rows = c
            line = lambda cells: "| " + " | ".join(_cell(x).replace("|", "\\|") for x in cells) + " |"
            out.append("\n".join([line(head), "|" + "---|" * len(head), *(line(r) for r in rows)]))
        elif kind == "img":
            out.append(f"![{c[1]}]({c[0]})\n\n*{c[2]}*")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    s = html.escape(str(text))
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def to_html(blocks: list[Block], pngs: dict[str, bytes], title: str) -> str:
    body = []
    for kind, c in blocks:
        if kind in ("h1", "h2", "h3", "p"):
            body.append(f"<{kind}>{_inline(c)}</{kind}>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(c)}</pre>")
        elif kind == "list":
            body.append("<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in c) + "</ul>")
        elif kind == "table":
            head, rows = c
            th = "".join(f"<th>{_inline(h)}</th>" for h in head)
            trs = "".join("<tr>" + "".join(f"<td>{_inline(_cell(x))}</td>" for x in r) + "</tr>" for r in rows)
            body.append(f"<table><tr>{th}</tr>{trs}</table>")
        elif kind == "img":
            src = "data:image/png;base64," + base64.b64encode(pngs[c[0]]).decode() if c[0] in pngs else c[0]
            body.append(f'<figure><img src="{src}" alt="{html.escape(c[1])}"><figcaption>{_inline(c[2])}'
                        f"</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}"
             "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}figcaption{color:#555;font-size:90%}"
             "pre,code{background:#f6f6f6}pre{padding:.6em}")
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _acc_ci(row: pd.Series, data: SweepData, metric: str | None = None) -> str:
    """``metric`` (the primary by default) of a trial: an accuracy in percent ± its CI, else its value."""
    metric = metric or data.metric
    v, ci_col = row.get(metric), SweepData.ci_for(metric)
    if v is None or pd.isna(v):
        return "-"
    if ci_col is None:
        return _cell(v)
    ci = row.get(ci_col)
    return pct(v) + (f" ± {100 * ci:.1f}" if ci is not None and pd.notna(ci) else "")


def _objectives(data: SweepData) -> str:
    """``metric `acc_1shot` (max)``, or every metric searched with its mode."""
    if not data.multi:
        return f"metric `{data.metric}` ({data.mode})"
    return "metrics " + ", ".join(f"`{m}` ({d})" for m, d in zip(data.metrics, data.modes))


def _pareto(data: SweepData) -> list[Block]:
    """The trials on the Pareto front, with their params and objectives, best first in the first metric."""
    front, candidates = sweep_front(data)
    if front.empty:
        return [("p", f"No finished trial reports every objective ({', '.join(data.metrics)}) yet: no front.")]
    left = len(data.finished()) - len(candidates)
    head = ["trial", *data.params, *(f"{m} ({d})" + (" ± CI" if SweepData.ci_for(m) else "")
                                     for m, d in zip(data.metrics, data.modes)), "checkpoint"]
    rows = [[str(r["trial_id"]).rsplit("_", 1)[-1], *(r.get(k) for k in data.params),
             *(_acc_ci(r, data, m) for m in data.metrics),
             f"`{r['checkpoint']}`" if r.get("checkpoint") else "-"] for _, r in front.iterrows()]
    return [("p", (f"{len(front)} of {len(candidates)} finished trials are on the Pareto front of "
                   f"{_objectives(data).removeprefix('metrics ')}: no other trial is as good in every objective "
                   f"and better in one. Each is a best configuration for some trade-off; best "
                   f"{data.metric} first." + (f" Left out: {left} finished trial(s) without every objective."
                                               if left else ""))),
            ("table", (head, rows))]


def status_counts(data: SweepData) -> dict[str, int]:
    counts = data.trials["status"].value_counts() if not data.trials.empty else pd.Series(dtype=int)
    return {s: int(counts[s]) for s in STATUSES if s in counts}


def _trials_table(data: SweepData) -> list[Block]:
    t = data.trials
    finished = data.finished()
    order = finished.sort_values(data.metric, ascending=data.mode != "max") if not finished.empty else finished
    shown = order.head(MAX_TABLE_ROWS)
    extra = [m for m in data.metrics[1:] if m != "seconds"]  # a multi-objective sweep's other objectives
    gpu = "gpu_hours" in t and pd.to_numeric(t["gpu_hours"], errors="coerce").sum() > 0
    spent = [c for c in (("gpu_hours" if gpu else "cpu_hours"), "dollars") if c in t and c not in extra]
    head = ["trial", *data.params, f"{data.metric} ± CI", *extra, "k", "diversity", "consistency", "M", "m",
            "best val acc", "seconds", *({"gpu_hours": "GPU-h", "cpu_hours": "CPU-h", "dollars": "$"}[c] for c in spent)]
    rows = [[str(r["trial_id"]).rsplit("_", 1)[-1], *(r.get(k) for k in data.params), _acc_ci(r, data),
             *(_acc_ci(r, data, m) for m in extra), r.get("k"), r.get("diversity"), r.get("consistency"),
             r.get("M"), r.get("m"), pct(r.get("val_acc")), r.get("seconds"), *(r.get(c) for c in spent)]
            for _, r in shown.iterrows()]
    legend = (f"Status: `finished` reported {data.metric}; `stopped early` reported without it and the scheduler "
              f"ended it; `incomplete` never reported before the sweep stopped; `interrupted` was cut off when the "
              f"sweep's driver stopped; `running` / `pending` are still going or waiting; `errored` raised "
              f"(error.txt); `corrupt`: its result.json cannot be read, so its result is unknown.")
    blocks: list[Block] = [("p", legend)]
    if rows:
        more = f" (best {MAX_TABLE_ROWS} of {len(order)}; all in trials.csv)" if len(order) > MAX_TABLE_ROWS else ""
        blocks += [("p", f"Finished trials, best first{more}:"), ("table", (head, rows))]
    other = t[t["status"] != "finished"]
    if not other.empty:
        rows = [[str(r["trial_id"]).rsplit("_", 1)[-1], r["status"],
                 ", ".join(f"{k}={r.get(k)}" for k in data.params), r.get("note")]
                for _, r in other.head(MAX_TABLE_ROWS).iterrows()]
        blocks += [("p", "Trials without a final result:"), ("table", (["trial", "status", "params", "why"], rows))]
    return blocks


def _best(data: SweepData) -> list[Block]:
    f = data.finished()
    corrupt = data.trials[data.trials["status"] == "corrupt"] if not data.trials.empty else data.trials
    caveat = [("p", (f"**{len(corrupt)} corrupt trial(s)** are left out, so the best of them is unknown and may "
                     f"beat the one below:")), ("list", list(corrupt["note"]))] if len(corrupt) else []
    if f.empty:
        return [("p", "No trial has finished, so there is no best configuration yet."), *caveat]
    r = f.loc[f[data.metric].idxmax() if data.mode == "max" else f[data.metric].idxmin()]
    shots = [c for c in f.columns if re.fullmatch(r"acc_\d+shot", c) and c != data.metric and pd.notna(r.get(c))]
    rows = [["trial", r["trial_id"]], *([k, r.get(k)] for k in data.params), [data.metric, _acc_ci(r, data)],
            *([c, pct(r[c])] for c in shots), ["M, m, M·m", f"{_cell(r.get('M'))}, {_cell(r.get('m'))}, {_cell(r.get('Mm'))}"],
            ["backbone", r.get("backbone.name")], ["target", r.get("selection.target_domain")],
            ["task subset (k)", f"{r.get('subset') or '-'} ({_cell(r.get('k'))})"],
            ["diversity, consistency", f"{_cell(r.get('diversity'))}, {_cell(r.get('consistency'))}"],
            ["best validation accuracy", pct(r.get("val_acc"))], ["time", f"{_cell(r.get('seconds'))} s"],
            ["checkpoint", f"`{r['checkpoint']}`" if r.get("checkpoint") else "not found in the sweep folder"]]
    return [*caveat, ("table", (["", "value"], rows))]


def _correlations(data: SweepData, corr: list[Correlation]) -> list[Block]:
    rows = [[c.label, c.n, f"{c.rho:+.2f}" if math.isfinite(c.rho) else "-",
             f"[{c.lo:+.2f}, {c.hi:+.2f}]" if math.isfinite(c.lo) else "-", c.note] for c in corr]
    return [("p", (f"Spearman rank correlation of {data.metric} with each variable over the finished trials; the "
                   f"95% CI is the wider of a seeded bootstrap over trials and the Fisher-z interval. An interval "
                   f"that spans 0 means the sweep cannot tell the sign.")),
            ("table", (["variable", "trials", "Spearman ρ", "95% CI", "note"], rows))]


def _inclusions(data: SweepData) -> list[Block]:
    """Per searched subset: each item's trials with it against those without it."""
    blocks: list[Block] = []
    finished = data.finished()
    for key, flags in data.subsets.items():
        rows = [[e.item, e.n_in, e.n_out, pct(e.mean_in), pct(e.mean_out),
                 f"{100 * e.diff:+.1f}" if math.isfinite(e.diff) else "-",
                 f"± {100 * e.half_width:.1f}" if math.isfinite(e.half_width) else "-"]
                for e in sorted(inclusion_effects(finished, flags, data.metric), key=lambda e: -e.diff
                                if math.isfinite(e.diff) else math.inf)]
        blocks += [("h3", f"`{key}`: with and without each item"),
                   ("p", (f"Mean {data.metric} of the finished trials whose subset includes the item against those "
                          f"that leave it out, largest gain first; the interval is a normal approximation and "
                          f"needs two trials on each side. Other searched keys vary too, so read it as a "
                          f"marginal comparison, not a causal effect.")),
                   ("table", (["item", "trials with", "without", "mean with", "mean without", "difference (points)",
                               "95% interval"], rows))]
    return blocks


def _fit(data: SweepData, fit: Fit) -> list[Block]:
    dropped = [f"{PREDICTORS[k]}: {v}" for k, v in fit.dropped.items()]
    if not fit.ok:
        return [("p", "No fit: no predictor can be estimated from these trials."), ("list", dropped)]
    terms = " + ".join(f"b·{PREDICTORS[p]}" for p in fit.predictors)
    rows = [["intercept", f"{fit.coef['intercept']:.4f}", f"{fit.se['intercept']:.4f}", ""]]
    for p in fit.predictors:
        per = f"{100 * fit.coef[p] * math.log(2):+.2f} points per doubling of M·m" if p == "log_Mm" else ""
        rows.append([PREDICTORS[p], f"{fit.coef[p]:.4f}", f"{fit.se[p]:.4f}", per])
    verdict = ("beats" if fit.beats_baseline else "does **not** beat")
    blocks: list[Block] = [
        ("p", f"Ordinary least squares over {fit.n} finished trials: {data.metric} = a + {terms} (log is natural)."),
        ("table", (["term", "coefficient", "standard error", "meaning"], rows)),
        ("p", (f"In-sample R² {fit.r2:.2f}. **Held out** (leave-one-out): R² {fit.loo_r2:.2f}, mean absolute error "
               f"{100 * fit.loo_mae:.2f} points, against {100 * fit.base_mae:.2f} for predicting each trial by the "
               f"mean of the others. The fit {verdict} that baseline. Fits to the same trials with their "
               f"accuracies shuffled ({PERMUTATIONS}, seeded) reach this held-out R² in {100 * fit.perm_p:.1f}% "
               f"of cases{' (weak evidence)' if fit.perm_p >= WEAK_P else ''}.")),
    ]
    if dropped:
        blocks += [("p", "Left out of the fit:"), ("list", dropped)]
    return blocks


def _recommendation(rec: Recommendation | None) -> list[Block]:
    if rec is None:
        return [("p", "No recommendation: no trial has finished.")]
    overrides = " ".join(f"{k}={v}" for k, v in rec.params.items())
    blocks: list[Block] = [("p", rec.summary), ("list", rec.reasons),
                           ("p", "As overrides of the sweep's base experiment (`mtft-ray run BASE ...`):"),
                           ("code", overrides)]
    if rec.more:
        blocks += [("p", "Further trials worth running:"), ("list", rec.more)]
    return blocks


def spend_line(trials: pd.DataFrame) -> str | None:
    """Total spend of the trials that reported it (see :mod:`mtft_ray.sweep.cost`), or None.

    >>> spend_line(pd.DataFrame({"gpu_hours": [0.5, 0.25, None], "cpu_hours": [2.0, 1.0, None]}))
    '0.75 GPU-h, 3 CPU-h over 2 trial(s); the most: 0.5 GPU-h'
    """
    cols = [c for c in ("gpu_hours", "cpu_hours", "dollars") if c in trials]
    if not cols:
        return None
    values = {c: pd.to_numeric(trials[c], errors="coerce") for c in cols}
    n = int(max(v.notna().sum() for v in values.values()))
    if not n:
        return None
    unit = {"gpu_hours": "GPU-h", "cpu_hours": "CPU-h"}
    text = lambda c, v: f"${v:.2f}" if c == "dollars" else f"{v:.4g} {unit[c]}"
    top = "gpu_hours" if values.get("gpu_hours", pd.Series(dtype=float)).sum() > 0 else "dollars" \
        if "dollars" in values else "cpu_hours"
    return (", ".join(text(c, v.sum()) for c, v in values.items()) + f" over {n} trial(s); the most: "
            + text(top, values[top].max()))


def build_report(data: SweepData, corr: list[Correlation], fit: Fit, importance: Importance,
                 rec: Recommendation | None, pngs: dict[str, bytes], skipped: dict[str, str],
                 files: list[str]) -> list[Block]:
    """The report's blocks, top to bottom."""
    counts = ", ".join(f"{n} {s}" for s, n in status_counts(data).items()) or "none"
    state = (f"interrupted ({data.interrupted}; rerun the same `mtft-ray sweep` command to resume)" if data.interrupted
             else "ended" if data.ended else "still running (or interrupted: no trials.csv yet)")
    blocks: list[Block] = [
        ("h1", f"Sweep analysis: {data.name}"),
        ("p", (f"Sweep `{data.location.uri}`, {state}; {_objectives(data)}. "
               f"Trials: {len(data.trials)} ({counts})."
               + (f" Spend: {spend_line(data.trials)} (per trial in the table and `trials.csv`)."
                  if spend_line(data.trials) else ""))),
    ]
    if data.problems:
        blocks += [("p", "Could not read everything:"), ("list", data.problems)]
    warned = data.trials[data.trials["warnings"].notna()] if "warnings" in data.trials else data.trials.iloc[:0]
    if len(warned):
        blocks += [("p", f"**Warnings** ({len(warned)} of {len(data.trials)} trials):"),
                   ("list", [f"trial {t.trial_id}: {t.warnings}" for t in warned.itertuples()])]
    if data.multi:
        blocks += [("h2", "Pareto front"), *_pareto(data)]
    blocks += [("h2", f"Best configuration{f' by {data.metric}' if data.multi else ''}"), *_best(data),
               ("h2", "Recommendation for the next run"), *_recommendation(rec),
               ("h2", "Correlations"), *_correlations(data, corr), *_inclusions(data),
               ("h2", "Trend fit"), *_fit(data, fit),
               ("h2", "Trials"), *_trials_table(data),
               ("h2", "Plots")]
    for name, title in PLOT_TITLES.items():
        if name in pngs:
            blocks += [("h3", title), ("img", (name, title, CAPTIONS[name]))]
    if importance.values:
        blocks += [("p", "Parameter importance: " + ", ".join(f"{k} {v:.2f}" for k, v in importance.values.items())
                    + ".")]
    if skipped:
        blocks += [("p", "Plots not drawn:"), ("list", [f"{PLOT_TITLES[k]} (`{k}`): {v}" for k, v in skipped.items()])]
    blocks += [("h2", "Files"), ("list", [f"`{f}`" for f in files])]
    return blocks
