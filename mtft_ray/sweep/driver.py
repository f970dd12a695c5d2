"""The trial driver: one Tune trial = one experiment run on a sampled config, reported to Tune.

The driver applies the sampled dotted keys to the base experiment, runs
:func:`mtft_ray.experiment.run_experiment` in the trial's folder (in this process for
``train.workers: 0``, on a Ray Train ``TorchTrainer`` for workers >= 1) and reports one result:
target accuracy ± 95% CI per shot, M, m, M·m, selection diversity/coverage/consistency, time,
images/s, checkpoint path and config hash. Before that it reports once per epoch of multitask
finetuning (``epoch``, ``val_acc``, train loss, images/s; from Ray Train workers through Tune's
``TuneReportCallback``): what an ASHA scheduler watches to stop weak trials early.

Example:
    >>> metrics_from_result({"M": 4, "m": 9, "results": [{"method": "multitask", "n_shot": 1,
    ...     "acc": 0.5, "ci95": 0.1}], "seconds": {"total": 2.0}, "histories": {}, "selection": None,
    ...     "config_hash": "abc"}, "/tmp/t")["acc_1shot"]
    0.5
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtft_ray.config.load import config_hash
from mtft_ray.config.schema import ExperimentConfig, StorageConfig
from mtft_ray.experiment import run_experiment
from mtft_ray.io import verify_digest
from mtft_ray.sweep.cost import spend
from mtft_ray.sweep.space import with_params


def _primary_method(methods: list[str]) -> str:
    return "multitask" if "multitask" in methods else methods[-1]


def metrics_from_result(result: dict, trial_dir: str | Path) -> dict[str, Any]:
    """The flat metrics Tune records for a finished experiment (``result.json``'s content)."""
    methods = list(dict.fromkeys(r["method"] for r in result["results"]))
    primary = _primary_method(methods) if methods else None
    out: dict[str, Any] = {"M": result["M"], "m": result["m"], "Mm": result["M"] * result["m"],
                           "config_hash": result["config_hash"], "seconds": result["seconds"]["total"],
                           "method": primary}
    for r in result["results"]:
        shot = r["n_shot"]
        out[f"{r['method']}_acc_{shot}shot"] = r["acc"]
        out[f"{r['method']}_ci95_{shot}shot"] = r["ci95"]
        if r["method"] == primary:
            out[f"acc_{shot}shot"], out[f"ci95_{shot}shot"] = r["acc"], r["ci95"]
    sel = result.get("selection") or {}
    for key in ("k", "diversity", "coverage", "mean_consistency"):
        if sel.get(key) is not None:
            out[f"selection_{key}"] = sel[key]
    hist = (result.get("histories") or {}).get(primary) or []
    if hist:
        images, secs = sum(h["images"] for h in hist), sum(h["seconds"] for h in hist)
        out["train_seconds"] = round(secs, 2)
        out["images_per_s"] = round(images / secs, 1) if secs else 0.0
        val = [h["val_acc"] for h in hist if h.get("val_acc") is not None]
        if val:
            out["val_acc"] = max(val)
    training = (result.get("training") or {}).get(primary) or {}
    for key in ("trainable_params", "total_params"):  # full finetuning vs LoRA adapters
        if training.get(key) is not None:
            out[key] = training[key]
    if result.get("warnings"):
        out["warnings"] = "; ".join(result["warnings"])
    ckpt = Path(trial_dir) / f"{primary}.pt"
    if ckpt.is_file():
        out["checkpoint"] = str(ckpt.resolve())
    return out


def epoch_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A per-epoch report from an epoch's metrics (what every path of the trainer reports): what
    ASHA watches (``val_acc``) and training progress; no target accuracy."""
    out = {"epoch": metrics["epoch"], "global_step": metrics["global_step"], "train_loss": metrics["train_loss"],
           "train_acc": metrics["train_acc"], "images_per_s": round(metrics["images_per_s"], 1)}
    if metrics.get("val_acc") is not None:
        out["val_acc"], out["val_ci95"] = metrics["val_acc"], metrics.get("val_ci95")
    return out


def trial_config(base: ExperimentConfig, params: dict[str, Any], trial_dir: Path, threads: int | None = None,
                 storage: StorageConfig | None = None) -> ExperimentConfig:
    """The trial's experiment: ``base`` with the sampled ``params`` (validated once), no progress
    bars, the trial's CPU share as torch threads, and its checkpoints under the sweep's S3 folder."""
    cfg = with_params(base, params, f"trial config {params}")
    run = {"progress": False, **({"threads": threads} if cfg.run.threads is None and threads else {})}
    update: dict[str, Any] = {"run": cfg.run.model_copy(update=run)}
    if storage and not cfg.storage.path:
        path = f"{storage.path.rstrip('/')}/{trial_dir.parent.name}/train"
        update["storage"] = storage.model_copy(update={"path": path})
    return cfg.model_copy(update=update)


def finished_result(run_dir: Path, cfg: ExperimentConfig) -> dict | None:
    """The complete ``result.json`` a run folder already holds for this very config (same hash,
    every checkpoint intact), or None: then the trial must run.

    A sweep killed right after trials finished may restore them as pending; their results are
    kept, not recomputed.
    """
    try:
        result = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("config_hash") != config_hash(cfg) or "results" not in result:
        return None
    for ck in (result.get("checkpoints") or {}).values():
        if verify_digest(run_dir / ck["file"], ck) is not None:
            return None
    return result


def trial_driver(params: dict[str, Any], base: ExperimentConfig, threads: int | None = None,
                 storage: StorageConfig | None = None, per_trial: dict[str, float] | None = None,
                 price_per_hour: float | None = None, node: dict[str, float] | None = None) -> None:
    """Tune function trainable: run the experiment for ``params``, report each epoch and the result.

    Args:
        params: sampled values keyed by dotted experiment keys (Tune's ``config``).
        base: the validated base experiment; bound with ``tune.with_parameters``.
        threads: torch threads when ``run.threads`` is not set (the trial's CPU share).
        storage: the sweep's S3 storage settings; Ray Train workers of this trial then keep
            their checkpoints under ``<sweep>/<trial>/train`` there (shared by every node),
            unless the base experiment names its own ``storage.path``.
        per_trial, price_per_hour, node: what the trial holds and what a node costs: its spend
            metrics (:func:`mtft_ray.sweep.cost.spend`) are reported with the result.
    """
    from ray import tune  # inside a Tune trial only
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_dir = Path(tune.get_context().get_trial_dir()) / "run"
    cfg = trial_config(base, params, trial_dir, threads, storage)
    result = finished_result(trial_dir, cfg)  # the trial's own result is the truth, whatever Tune's state says
    if result is None:
        result = run_experiment(cfg, trial_dir, on_epoch=lambda m: tune.report(epoch_metrics(m)),
                                train_callbacks=[TuneReportCallback()] if cfg.train.workers else ())
    final = metrics_from_result(result, trial_dir)
    final.update(spend(final["seconds"], per_trial or {}, price_per_hour, node))
    hist = (result.get("histories") or {}).get(final["method"]) or []
    tune.report({**final, "epoch": hist[-1]["epoch"] if hist else 0})
