"""Task selection as a command: select for a target, or run the paper's ablation per target.

``run_selection`` writes ``selection.json`` and a PNG of the diversity curve.
``run_ablation`` finetunes and evaluates every strategy (random / no_consistency /
no_diversity / selected / all) on the identical episodes of each target domain and writes
``ablation.json``. At the domain level every strategy gets the same budget (M tasks × m).

Example:
    >>> from mtft_ray.config import load_config
    >>> run_ablation(load_config("sweeps/ablation-glyphs.yaml"), "runs/ablation")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mtft_ray.config.load import save_resolved
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.experiment import Experiment, seed_everything
from mtft_ray.io import atomic_write_json
from mtft_ray.selection.apply import SelectionData, choose_tasks, target_domains
from mtft_ray.selection.plot import plot_selection
from mtft_ray.tasks.pool import write_manifest

log = logging.getLogger("mtft_ray")

# 'selected' first: the fixed-size strategies take its k
ABLATION_ORDER = ("selected", "random", "no_consistency", "no_diversity", "all")


def _start(cfg: ExperimentConfig, out_dir: str | Path, result: str) -> tuple[Path, str, Experiment]:
    """Output folder with the resolved config and no stale ``result`` file; seeds; the experiment."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / result).unlink(missing_ok=True)
    digest = save_resolved(cfg, out)
    seed_everything(cfg.seed)
    return out, digest, Experiment(cfg)


def run_selection(cfg: ExperimentConfig, out_dir: str | Path) -> dict:
    """Select finetuning tasks for the configured target; write ``selection.json`` and ``selection.png``."""
    out, digest, exp = _start(cfg, out_dir, "selection.json")
    data = SelectionData(exp, exp.backbone())
    strategy = "selected" if cfg.selection.strategy == "all" else cfg.selection.strategy
    chosen = choose_tasks(data, strategy, cfg.selection.target_domain)
    plot_selection(chosen.result, out / "selection.png")
    write_manifest(out / "manifest.json", chosen.tasks, exp.store, extra=exp.describe())
    doc = {**chosen.result.to_json(), "selected_names": chosen.names, "config_hash": digest,
           "target": cfg.selection.target_domain or "all target domains", "M": len(chosen.tasks)}
    atomic_write_json(out / "selection.json", doc)
    return doc


def run_ablation(cfg: ExperimentConfig, out_dir: str | Path) -> dict:
    """Every strategy, finetuned and evaluated on each target domain's identical episodes."""
    t_start = time.perf_counter()
    out, digest, exp = _start(cfg, out_dir, "ablation.json")
    pretrained = exp.backbone()
    data = SelectionData(exp, pretrained)
    validate = cfg.finetune.epochs > 1  # one epoch: nothing to choose between
    targets = []
    for domain in target_domains(exp, cfg.selection.ablation_targets):
        evaluator = exp.target_evaluator(domain)
        pool = data.make_pool(domain)
        rows = [{"strategy": "direct", "k": 0, "M": 0, **r} for r in evaluator.evaluate(pretrained, use_cache=True)]
        k = None
        for strategy in ABLATION_ORDER:
            chosen = choose_tasks(data, strategy, domain, k=k, pool=pool)
            if strategy == "selected":
                k = chosen.result.k
                plot_selection(chosen.result, out / f"selection-{domain}.png")
            model = exp.backbone()
            model.load_state_dict(exp.finetune_multitask(chosen.tasks, validate=validate).best_state)
            summary = chosen.summary()
            for r in evaluator.evaluate(model):
                rows.append({**r, "strategy": strategy, "k": summary["k"], "M": summary["M"],
                             "selected": summary["selected"], "diversity": summary["diversity"],
                             "coverage": summary["coverage"], "mean_consistency": summary["mean_consistency"]})
            log.info("%s / %s: %s", domain, strategy, rows[-1])
        targets.append({"target": domain, "results": rows})
    doc = {"config_hash": digest, "level": cfg.selection.level, "measure": cfg.selection.measure,
           "M": cfg.tasks.M, "m": cfg.tasks.m, "targets": targets,
           "seconds": round(time.perf_counter() - t_start, 1)}
    atomic_write_json(out / "ablation.json", doc)
    return doc


def format_ablation(doc: dict) -> str:
    """One line per target and shot: accuracy ± CI of each strategy, k in brackets."""
    strategies = ("direct",) + ABLATION_ORDER
    head = f"{'target':<20} {'shot':>4} " + " ".join(f"{s:>16}" for s in strategies)
    lines = [head]
    for t in doc["targets"]:
        shots = sorted({r["n_shot"] for r in t["results"]})
        for shot in shots:
            cells = []
            for s in strategies:
                r = next((r for r in t["results"] if r["strategy"] == s and r["n_shot"] == shot), None)
                cells.append(f"{100 * r['acc']:5.1f}±{100 * r['ci95']:3.1f} [{r['k']:>3}]" if r else " " * 16)
            lines.append(f"{t['target']:<20} {shot:>4} " + " ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)
