"""``mtft-ray screen SWEEP.yaml``: rank the task subsets a sweep searches, without finetuning.

Reads the sweep (:func:`mtft_ray.sweep.load.load_sweep`), builds its experiment's data with every
candidate domain of the searched subset key (``tasks.domains: {subset: [...]}``), embeds the
source split and the target with the pretrained backbone once (through the feature cache every
trial shares) and scores each candidate subset with the proxies of
:mod:`mtft_ray.selection.screen`. Writes ``DIR/screen.json`` (ranked rows plus what the screen
was made for) and ``DIR/screen.csv``.

A sweep then searches only the best ``top`` subsets with
``tasks.domains: {screen: screen.json, top: 5}`` (resolved when the sweep is loaded:
:func:`mtft_ray.sweep.load.resolve_screen`), and ``mtft-ray analyze`` reports how well each
proxy ranked the finetuned results (:mod:`mtft_ray.analysis.screening`).

Example:
    >>> doc = screen_sweep("sweeps/subsets-glyphs.yaml", out="runs/screen")    # doctest: +SKIP
    >>> doc["rows"][0]["subset"], doc["rows"][0]["rank"]                       # doctest: +SKIP
    (['adlam', 'cherokee'], 1)
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import numpy as np

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.evaluation.features import FeatureCache
from mtft_ray.experiment import Experiment, seed_everything
from mtft_ray.io import atomic_write_bytes, atomic_write_json
from mtft_ray.models.state import model_fingerprint
from mtft_ray.selection.apply import SelectionData
from mtft_ray.selection.greedy import Pool
from mtft_ray.selection.screen import (
    PROXIES,
    Algorithm1Scores,
    candidate_subsets,
    logme_draws,
    mean_rank,
    prototype_accuracy,
)
from mtft_ray.sweep.load import SCREEN_FILE, load_sweep
from mtft_ray.sweep.schema import SweepConfig
from mtft_ray.sweep.space import with_params

CSV_FILE = "screen.csv"
SCREEN_KEY = "tasks.domains"  # the only subset key screening can score: its items are source domains
FORMAT = 1
RANK_BY = ("combined", *PROXIES)
# The default rank: the mean rank of the two label-aware proxies, which both estimate how well the
# pretrained features separate the subset's classes (their seed noise partly averages out).
# Algorithm 1's label-free measures stay in every row but not in this rank: on the 15-subset glyph
# sweep (sweeps/subsets-glyphs.yaml) their Spearman rho with the finetuned accuracy was -0.03 to
# +0.10, LogME's +0.62..+0.77 and prototype accuracy's +0.72..+0.78 over four seeds, this
# combination's +0.70..+0.76. One target and 15 subsets: a default, not a law; see the report of
# 'mtft-ray analyze' for each proxy on your sweep.
COMBINED = ("logme", "proto_acc")


def subset_key(sweep: SweepConfig, where: str) -> tuple[str, list[str]]:
    """The sweep's searched subset of source domains: ``(key, candidate items)``.

    Raises:
        MtftError: no ``subset`` entry in ``search.space``, or one at a key other than ``tasks.domains``.
    """
    subsets = {k: d.subset for k, d in sweep.search.space.items() if d.subset is not None}
    if not subsets:
        raise MtftError(f"{where}: search.space has no subset to screen (give e.g. "
                        f"{SCREEN_KEY}: {{subset: [a, b, c]}})")
    if SCREEN_KEY not in subsets:
        raise MtftError(f"{where}: search.space.{next(iter(subsets))} is a subset, but screening scores subsets of "
                        f"source domains ({SCREEN_KEY}) only")
    return SCREEN_KEY, list(subsets[SCREEN_KEY])


def _shot(sweep: SweepConfig, cfg: ExperimentConfig) -> int:
    """The shot of the sweep's metric (``acc_1shot`` → 1), else the first evaluated shot."""
    metric = sweep.search.primary
    shot = metric.removeprefix("acc_").removesuffix("shot")
    return int(shot) if metric.startswith("acc_") and shot.isdigit() else int(cfg.eval.shots[0])


class _Inputs:
    """What every subset is scored from: the pool of candidate tasks over all items (domain
    units), and the pretrained features and labels of the items' source samples."""

    def __init__(self, exp: Experiment, items: list[str]) -> None:
        store, cfg = exp.store, exp.cfg
        self.model = exp.backbone()
        data = SelectionData(exp, self.model)
        source_ids = exp.split.samples(store, "source")
        domain = cfg.selection.target_domain
        self.pool = Pool(data.source_features.numpy(), data.task_rows, data.target_features(domain),
                         data.pool.domains, cfg.selection.shrinkage)
        ids = [store.domain_names.index(name) for name in items]
        missing = [n for n, d in zip(items, ids) if d not in set(self.pool.ids.tolist())]
        if missing:
            raise MtftError(f"{SCREEN_KEY}: no candidate task could be drawn from {missing} (too few classes with "
                            f"enough samples for {cfg.tasks.n_way}-way tasks)")
        self.positions = [int(np.flatnonzero(self.pool.ids == d)[0]) for d in ids]
        self.features = data.source_features.numpy()
        self.labels = store.labels[source_ids]
        self.domains = store.class_domain[self.labels]
        self.domain_ids = ids
        model_fp, data_fp = model_fingerprint(self.model), store.fingerprint()
        self.cache_keys = {"source": FeatureCache.key(model_fp, data_fp, source_ids),
                           "target": FeatureCache.key(model_fp, data_fp, exp.target.sample_ids)}

    def rows(self, subset: tuple[int, ...]) -> np.ndarray:
        return np.flatnonzero(np.isin(self.domains, [self.domain_ids[i] for i in subset]))


def _logme_shape(inputs: _Inputs, n_items: int, max_classes: int, max_per_class: int) -> tuple[int, int]:
    """Classes and samples per class of every LogME draw: what the smallest single item allows."""
    classes, per_class = max_classes, max_per_class
    for i in range(n_items):
        counts = np.bincount(inputs.labels[inputs.rows((i,))])
        counts = counts[counts > 0]
        per_class = min(per_class, int(counts.min()))
        classes = min(classes, len(counts))
    if classes < 2 or per_class < 1:
        raise MtftError(f"{SCREEN_KEY}: LogME draws need 2 classes with a sample in every item; the smallest "
                        f"item has {classes} class(es)")
    return classes, per_class


def score_subsets(inputs: _Inputs, items: list[str], subsets: list[tuple[int, ...]], *, n_way: int, n_shot: int,
                  n_query: int, episodes: int, seed: int, prototype: str, logme_shape: tuple[int, int],
                  draws: int) -> list[dict[str, Any]]:
    """One row of proxies per subset (in the order given)."""
    out = []
    algorithm1 = Algorithm1Scores(inputs.pool)
    for subset in subsets:
        rows = inputs.rows(subset)
        feats, labels = inputs.features[rows], inputs.labels[rows]
        try:
            acc, ci = prototype_accuracy(feats, labels, n_way, n_shot, n_query, episodes, seed, prototype)
        except MtftError as e:
            raise MtftError(f"subset {[items[i] for i in subset]}: {e}") from None
        scores = algorithm1([inputs.positions[i] for i in subset])
        scores["logme"] = logme_draws(feats, labels, *logme_shape, draws=draws, seed=seed)
        out.append({"subset": [items[i] for i in subset], **scores, "proto_acc": acc, "proto_ci95": ci})
    return out


def rank_rows(rows: list[dict[str, Any]], combined: list[str], by: str) -> list[dict[str, Any]]:
    """Add each proxy's rank, the combined mean rank of ``combined``, and ``rank`` by ``by``;
    return the rows sorted by ``rank`` (ties: grid order).

    >>> rows = [{"subset": ["a"], "logme": 1.0, "proto_acc": 0.9}, {"subset": ["b"], "logme": 2.0, "proto_acc": 0.8}]
    >>> [r["subset"] for r in rank_rows(rows, ["logme"], "combined")]
    [['b'], ['a']]
    """
    if by not in RANK_BY:
        raise MtftError(f"rank by {by!r}: give one of {', '.join(RANK_BY)}")
    present = [p for p in PROXIES if all(p in r for r in rows)]
    arrays = {p: np.array([r[p] for r in rows], np.float64) for p in present}
    ranks = {p: mean_rank({p: arrays[p]}) for p in present}
    combo = mean_rank({p: arrays[p] for p in combined})
    for i, r in enumerate(rows):
        r["ranks"] = {p: float(ranks[p][i]) for p in present}
        r["combined"] = float(combo[i])
    final = combo if by == "combined" else ranks[by]
    order = np.argsort(final, kind="stable")
    for rank, i in enumerate(order, start=1):
        rows[i]["rank"] = rank
    return [rows[i] for i in order]


def screen_sweep(path: str | Path, *, overrides: list[str] | None = None, out: str | Path | None = None,
                 max_subsets: int = 256, episodes: int = 300, seed: int | None = None, by: str = "combined",
                 logme_classes: int = 20, logme_per_class: int = 10, logme_repeats: int = 5) -> dict[str, Any]:
    """Screen the subsets a sweep searches; write ``out/screen.json`` and ``out/screen.csv`` when
    ``out`` is given. Returns the screen document.

    Args:
        path: the sweep YAML.
        overrides: dotted overrides, as ``mtft-ray sweep`` takes them.
        max_subsets: score all subsets when there are at most this many, else a seeded sample.
        episodes: prototype-classifier episodes per subset (the sweep's eval n_way, metric's shot,
            eval n_query).
        seed: seed of the subset sample, the episodes and the LogME draws (default: the sweep's).
        by: what ``rank`` orders by: ``combined`` (the mean rank of :data:`COMBINED`: LogME and
            prototype accuracy) or one proxy.
        logme_classes, logme_per_class, logme_repeats: the shape of each LogME draw (capped by the
            smallest item) and how many draws are averaged.

    Raises:
        MtftError: no subset of source domains in the space, data that cannot serve the episodes,
            bad counts.
    """
    t0 = time.perf_counter()
    if by not in RANK_BY:
        raise MtftError(f"--by {by!r}: give one of {', '.join(RANK_BY)}")
    if episodes < 1:
        raise MtftError(f"--episodes must be >= 1, got {episodes}")
    sweep, base = load_sweep(path, overrides)
    key, items = subset_key(sweep, str(path))
    seed = sweep.seed if seed is None else seed
    cfg = with_params(base, {key: items, "run.progress": False}, f"{path}: {key}={items}")
    seed_everything(cfg.seed)
    exp = Experiment(cfg)
    inputs = _Inputs(exp, items)
    t_data = time.perf_counter() - t0
    subsets = candidate_subsets(len(items), max_subsets, seed)
    shape = _logme_shape(inputs, len(items), logme_classes, logme_per_class)
    n_shot = _shot(sweep, cfg)
    rows = score_subsets(inputs, items, subsets, n_way=cfg.eval.n_way, n_shot=n_shot, n_query=cfg.eval.n_query,
                         episodes=episodes, seed=seed, prototype=cfg.eval.prototype, logme_shape=shape,
                         draws=logme_repeats)
    combined = list(COMBINED)
    rows = rank_rows(rows, combined, by)
    doc = {
        "format": FORMAT, "sweep": str(Path(path).resolve()), "sweep_name": sweep.name, "key": key, "items": items,
        "target": cfg.selection.target_domain or "target split", "backbone": cfg.backbone.name,
        "weights": cfg.backbone.weights, "feature_cache": inputs.cache_keys, "seed": seed,
        "subsets_total": 2 ** len(items) - 1, "subsets_scored": len(rows),
        "sampled": len(rows) < 2 ** len(items) - 1, "rank_by": by, "combined": combined,
        "episodes": {"n_way": cfg.eval.n_way, "n_shot": n_shot, "n_query": cfg.eval.n_query, "episodes": episodes,
                     "prototype": cfg.eval.prototype},
        "logme": {"classes": shape[0], "per_class": shape[1], "draws": logme_repeats},
        "seconds": {"data": round(t_data, 2), "scoring": round(time.perf_counter() - t0 - t_data, 2),
                    "total": round(time.perf_counter() - t0, 2)},
        "rows": rows,
    }
    if out is not None:
        write_screen(doc, Path(out))
    return doc


def write_screen(doc: dict[str, Any], out: Path) -> list[Path]:
    """``out/screen.json`` and ``out/screen.csv`` (one row per subset, ranked)."""
    atomic_write_json(out / SCREEN_FILE, doc)
    head = ["rank", "subset", "size", "combined", *PROXIES, "proto_ci95", *(f"rank_{p}" for p in PROXIES)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for r in doc["rows"]:
        w.writerow([r["rank"], "+".join(r["subset"]), len(r["subset"]), r["combined"], *(r.get(p) for p in PROXIES),
                    r["proto_ci95"], *(r["ranks"].get(p) for p in PROXIES)])
    atomic_write_bytes(out / CSV_FILE, buf.getvalue().encode())
    return [out / SCREEN_FILE, out / CSV_FILE]


def format_screen(doc: dict[str, Any], limit: int | None = None) -> str:
    """The ranked table for the terminal (proto_acc in percent)."""
    head = ["rank", "subset", "combined", "consistency", "diversity", "coverage", "logme", "proto_acc"]
    body = [[str(r["rank"]), "+".join(r["subset"]), f"{r['combined']:.2f}", f"{r['consistency']:.4f}",
             f"{r['diversity']:.3f}", f"{r['coverage']:.4f}", f"{r['logme']:.4f}",
             f"{100 * r['proto_acc']:.2f} ± {100 * r['proto_ci95']:.2f}"] for r in doc["rows"][:limit]]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [head, *body])
