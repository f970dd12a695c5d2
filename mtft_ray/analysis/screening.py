"""How well a screen ranked a sweep's subsets: each proxy against the finetuned metric.

``mtft-ray screen`` scores task subsets from pretrained features (:mod:`mtft_ray.sweep.screen`);
after a sweep has finetuned on some of those subsets, :func:`screening_agreement` gives each
proxy's Spearman rank correlation with the sweep's metric over the finished trials' subsets (the
metric averaged over a subset's trials), with a seeded bootstrap 95% CI
(:func:`mtft_ray.analysis.stats.spearman_ci`), and what picking the screen's favourite would
have cost (its finetuned rank and the metric lost against the best subset). A positive rho means
the proxy ranks the better subsets higher; ``combined`` is the screen's mean rank negated.

:func:`screening_for` is what ``mtft-ray analyze`` calls: it finds the screen (``--screen FILE``,
else ``screen.json`` in the sweep folder, else the file a searched ``screen`` entry was resolved
from, as ``sweep.json`` records it) and checks it, or returns None when there is none.

Example:
    >>> import pandas as pd
    >>> screen = {"key": "tasks.domains", "rows": [
    ...     {"subset": ["a"], "logme": 0.1, "combined": 3.0, "rank": 3},
    ...     {"subset": ["b"], "logme": 0.2, "combined": 2.0, "rank": 2},
    ...     {"subset": ["a", "b"], "logme": 0.3, "combined": 1.0, "rank": 1}]}
    >>> trials = pd.DataFrame({"tasks.domains": ["a", "b", "a+b"], "acc_1shot": [0.5, 0.6, 0.7]})
    >>> s = screening_agreement(trials, screen, "acc_1shot")
    >>> [(c.label, round(c.rho, 2)) for c in s.correlations]
    [('logme', 1.0), ('combined', 1.0)]
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtft_ray.analysis.load import SweepData
from mtft_ray.analysis.stats import Correlation, spearman_ci
from mtft_ray.errors import MtftError

SCREEN_FILE = "screen.json"
PROXIES = ("consistency", "diversity", "coverage", "logme", "proto_acc")  # larger = ranked higher by the screen


@dataclass
class Screening:
    """A screen checked against a sweep's finished trials.

    Attributes:
        screen: where the screen file was read from (``None`` when given as a document).
        key: the searched subset key (``tasks.domains``).
        metric, mode: the sweep's metric and direction.
        n: subsets with both a screen row and a finished trial.
        unmatched: finished trials' subsets the screen did not score (a sampled screen).
        correlations: one per proxy, and ``combined`` (the mean rank, negated).
        pick: ``{subset, finetuned_rank, of, metric, best, best_subset, screen_rank_of_best, lost}``:
            the screen's top-ranked subset among those the sweep finetuned, its finetuned rank,
            the metric lost against the sweep's best, and the screen's rank of that best.
    """

    screen: str | None
    key: str
    metric: str
    mode: str
    n: int
    unmatched: list[str]
    correlations: list[Correlation]
    pick: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """A few lines for the terminal summary."""
        head = (f"screen:      {self.screen or 'given'}: {self.n} finetuned subsets of {self.key}"
                + (f" ({len(self.unmatched)} not in the screen)" if self.unmatched else ""))
        corr = "; ".join(f"{c.label} {c.rho:+.2f} [{c.lo:+.2f}, {c.hi:+.2f}]" if math.isfinite(c.rho)
                         else f"{c.label} - ({c.note})" for c in self.correlations)
        out = [head, f"             Spearman with {self.metric} (95% CI): {corr}"]
        p = self.pick
        if p:
            out.append(f"             the screen's pick {p['subset']} finetuned rank {p['finetuned_rank']} of "
                       f"{p['of']} "
                       f"({self.metric} {100 * p['metric']:.2f} vs best {100 * p['best']:.2f}: "
                       f"{100 * p['lost']:.2f} points lost); the best, {p['best_subset']}, is screen rank "
                       f"{p['screen_rank_of_best']}")
        return out


def parse_subset(value: Any) -> frozenset[str] | None:
    """A trial's subset from its recorded value: a list, ``a+b`` text, or a JSON list; else None.

    >>> sorted(parse_subset("b+a")), sorted(parse_subset('["a", "b"]')), parse_subset(None)
    (['a', 'b'], ['a', 'b'], None)
    """
    if isinstance(value, (list, tuple)):
        return frozenset(map(str, value))
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            return None
        return frozenset(map(str, items)) if isinstance(items, list) else None
    return frozenset(text.split("+"))


def read_screen_file(path: str | Path) -> dict[str, Any]:
    """A screen file's document.

    Raises:
        MtftError: missing, unreadable, or not a screen file.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise MtftError(f"screen file {path} does not exist (write it with 'mtft-ray screen SWEEP.yaml --out DIR')") \
            from None
    except (OSError, ValueError) as e:
        raise MtftError(f"screen file {path} is not readable JSON ({str(e)[:80]})") from None
    if not isinstance(doc, dict) or "key" not in doc or not isinstance(doc.get("rows"), list):
        raise MtftError(f"{path} is not a screen file (no 'key' and 'rows'; 'mtft-ray screen' writes one)")
    return doc


def find_screen(sweep_dir: str | Path, space: dict[str, dict], explicit: str | Path | None = None) -> Path | None:
    """The screen to check a sweep against: ``explicit``, else ``SWEEP_DIR/screen.json``, else the
    screen file a searched ``screen`` entry was resolved from (recorded in ``sweep.json``); None
    when there is none.

    Raises:
        MtftError: ``explicit`` given but missing.
    """
    if explicit is not None:
        if not Path(explicit).is_file():
            raise MtftError(f"--screen {explicit}: no such file (write it with 'mtft-ray screen SWEEP.yaml --out DIR')")
        return Path(explicit)
    here = Path(sweep_dir) / SCREEN_FILE
    if here.is_file():
        return here
    for spec in space.values():
        recorded = spec.get("screen") if isinstance(spec, dict) else None
        if recorded and Path(recorded).is_file():
            return Path(recorded)
    return None


def _per_subset(trials: pd.DataFrame, key: str, metric: str) -> pd.Series:
    """The metric averaged over each subset's finished trials, indexed by the subset (frozenset)."""
    if key not in trials or metric not in trials:
        raise MtftError(f"the trials have no {key!r} or {metric!r} column: is this the sweep the screen was made for?")
    subsets = trials[key].map(parse_subset)
    values = pd.to_numeric(trials[metric], errors="coerce")
    ok = subsets.notna() & values.notna()
    return values[ok].groupby(subsets[ok]).mean()


def screening_agreement(trials: pd.DataFrame, screen: dict[str, Any], metric: str, mode: str = "max", *,
                        seed: int = 0, n_boot: int = 2000, source: str | None = None) -> Screening:
    """Each proxy's Spearman rho (bootstrap 95% CI) with ``metric`` over the finetuned subsets.

    Args:
        trials: finished trials (``SweepData.finished()``), with the screen's key and ``metric``.
        screen: the screen document (``screen.json``).
        metric: the sweep's metric; ``mode``: ``max`` or ``min`` (for the pick; rho is as is).
        seed, n_boot: the bootstrap's seed and resamples.
        source: where the screen came from, for the report.

    Raises:
        MtftError: the trials lack the screen's key or the metric.
    """
    key = screen["key"]
    by_subset = _per_subset(trials, key, metric)
    rows = {frozenset(map(str, r["subset"])): r for r in screen["rows"]}
    matched = [s for s in by_subset.index if s in rows]
    unmatched = ["+".join(sorted(s)) for s in by_subset.index if s not in rows]
    y = by_subset.loc[matched].to_numpy(float) if matched else np.zeros(0)
    corr = []
    for proxy in (*PROXIES, "combined"):
        if any(proxy not in r for r in screen["rows"]):
            continue
        x = np.array([rows[s].get(proxy, math.nan) for s in matched], float)
        corr.append(spearman_ci(-x if proxy == "combined" else x, y, label=proxy, n_boot=n_boot, seed=seed))
    return Screening(source, key, metric, mode, len(matched), unmatched, corr,
                     _pick(matched, y, rows, mode) if matched else {})


def _pick(matched: list[frozenset], y: np.ndarray, rows: dict, mode: str) -> dict[str, Any]:
    sign = 1.0 if mode == "max" else -1.0
    order = np.argsort(-sign * y, kind="stable")  # finetuned best first
    finetuned_rank = {matched[i]: r for r, i in enumerate(order, start=1)}
    screen_order = sorted(matched, key=lambda s: rows[s]["rank"])
    pick, best = screen_order[0], matched[int(order[0])]
    name = lambda s: "+".join(rows[s]["subset"])
    return {"subset": name(pick), "finetuned_rank": finetuned_rank[pick], "of": len(matched),
            "metric": float(y[matched.index(pick)]), "best": float(y[order[0]]), "best_subset": name(best),
            "screen_rank_of_best": int(rows[best]["rank"]),
            "lost": float(sign * (y[order[0]] - y[matched.index(pick)]))}


def screening_for(data: SweepData, screen: str | Path | None = None, seed: int = 0) -> Screening | None:
    """The agreement of a sweep with its screen (see :func:`find_screen`); None without a screen.

    Call it while ``data.location.local`` is readable (inside ``open_sweep``).

    Raises:
        MtftError: ``screen`` given but missing or not a screen file, or one for a key the trials lack.
    """
    path = find_screen(data.location.local, data.space, screen)
    if path is None:
        return None
    doc = read_screen_file(path)
    finished = data.finished()
    if doc["key"] not in finished and not finished.empty:
        raise MtftError(f"screen {path} ranks subsets of {doc['key']!r}, which the sweep {data.name} does not search")
    return screening_agreement(finished, doc, data.metric, data.mode, seed=seed, source=str(path))
