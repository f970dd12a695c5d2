"""The sweep's Tuner: OptunaSearch (or random / grid) + ConcurrencyLimiter, optional ASHA, resume.

Layout of a sweep folder (``--out``, default ``runs/sweeps/<name>``; Tune's experiment folder)::

    sweep.json     the sweep config, its resolved base experiment and their hash
    trials.csv     one row per trial: params, metrics, status (written at the end)
    <trial>/run/   each trial's experiment output (result.json, manifest, checkpoint)

Rerunning the same command on the same folder resumes the sweep with
``Tuner.restore(path, trainable, resume_errored=True)``; a folder holding a different sweep is
refused unless ``resume=True`` (then the stored sweep goes on, unchanged).

Example:
    >>> from mtft_ray.sweep import load_sweep
    >>> sweep, base = load_sweep("sweeps/quickstart.yaml")           # doctest: +SKIP
    >>> rows = run_sweep(sweep, base, "runs/sweeps/quickstart")       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_json
from mtft_ray.sweep.driver import trial_driver
from mtft_ray.sweep.schema import SweepConfig, sweep_hash
from mtft_ray.sweep.space import tune_space

log = logging.getLogger("mtft_ray")

DRIVER_RESOURCE = "TRAIN_DRIVER"  # held by a trial driver whose trainer uses Ray Train workers


@dataclass(frozen=True)
class TrialPlan:
    """What one trial reserves and how many run at once.

    Attributes:
        driver: the trial driver's own resources (Tune's ``with_resources``).
        per_trial: driver plus its Ray Train workers.
        concurrency: trials at once on the given cluster (at least 1).
        threads: torch threads of an in-process trial.
    """

    driver: dict[str, float]
    per_trial: dict[str, float]
    concurrency: int
    threads: int | None


def trial_plan(sweep: SweepConfig, base: dict, cluster: dict[str, float]) -> TrialPlan:
    """Per-trial resources and concurrency from the cluster's resources (``ray.cluster_resources()``).

    In-process trials (``train.workers: 0``) reserve 2 CPUs (or ``run.threads``); trials with
    Ray Train workers reserve only ``{"TRAIN_DRIVER": 1}`` for the driver, plus their workers, so
    a driver never takes the CPU its workers need (the Tune-over-Train deadlock).

    >>> trial_plan(SweepConfig.model_validate({"search": {"space": {"seed": {"choice": [0]}}}}),
    ...            {}, {"CPU": 2.0}).concurrency
    1
    """
    from mtft_ray.train.plan import worker_resources

    cfg = ExperimentConfig.model_validate(base)
    train = cfg.train
    threads = None
    if sweep.resources is not None:
        driver = {k: float(v) for k, v in sweep.resources.items()}
    elif train.workers and "multitask" in cfg.methods:
        driver = {DRIVER_RESOURCE: 1.0}
    else:
        threads = cfg.run.threads or 2
        driver = {"CPU": float(threads)}
    driver = {("CPU" if k.lower() == "cpu" else "GPU" if k.lower() == "gpu" else k): v for k, v in driver.items()}
    per_trial = dict(driver)
    if train.workers and "multitask" in cfg.methods:
        for k, v in worker_resources(train).items():
            per_trial[k] = per_trial.get(k, 0.0) + v * train.workers
    fits = [math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in per_trial.items() if v > 0]
    missing = [k for k, v in per_trial.items() if v > 0 and cluster.get(k, 0.0) < v]
    if missing:
        raise MtftError(f"one trial needs {per_trial} but the cluster has {cluster}: short of {missing}")
    return TrialPlan(driver, per_trial, max(1, min(fits) if fits else 1), threads)


def local_resources(sweep: SweepConfig, base: dict) -> dict[str, float]:
    """Custom resources to declare when this process starts a local Ray: one TRAIN_DRIVER per trial slot."""
    cfg = ExperimentConfig.model_validate(base)
    if not (cfg.train.workers and "multitask" in cfg.methods):
        return {}
    cpus = os.cpu_count() or 1
    per = cfg.train.workers * cfg.train.cpus_per_worker
    return {DRIVER_RESOURCE: float(max(1, math.floor(cpus / per)) if per else 1)}


def _ensure_ray(sweep: SweepConfig, base: dict) -> None:
    from mtft_ray.train.distributed import ensure_ray

    ensure_ray(resources=local_resources(sweep, base))


def _search_alg(sweep: SweepConfig, concurrency: int):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    s = sweep.search
    if s.algorithm == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(metric=s.metric, mode=s.mode, seed=sweep.seed),
                                  max_concurrent=concurrency)
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency)


def _scheduler(sweep: SweepConfig):
    a = sweep.scheduler.asha
    if a is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", grace_period=a.grace_period, max_t=a.max_t,
                         reduction_factor=a.reduction_factor)


def _check_folder(out: Path, digest: str, resume: bool) -> bool:
    """True when ``out`` holds this sweep (or ``resume`` forces it); refuse a different one."""
    meta = out / "sweep.json"
    if not meta.is_file():
        if out.exists() and any(out.iterdir()):
            raise MtftError(f"{out} is not empty and holds no sweep.json: choose another --out")
        return False
    stored = json.loads(meta.read_text()).get("hash")
    if stored != digest and not resume:
        raise MtftError(f"{out} holds a different sweep (config hash {stored}, this one {digest}); "
                        f"choose another --out, or pass --resume to continue the stored sweep")
    return True


def run_sweep(sweep: SweepConfig, base: dict, out: str | Path, *, resume: bool = False) -> list[dict]:
    """Run (or resume) the sweep in ``out``; write ``trials.csv`` and return its rows.

    Args:
        sweep: the validated sweep.
        base: its resolved base experiment.
        out: the sweep folder (local); Tune's experiment folder is ``out`` itself.
        resume: continue the sweep stored in ``out`` even if its config hash differs.
    """
    import ray
    from ray import tune

    out = Path(out).expanduser().resolve()
    digest = sweep_hash(sweep, base)
    existing = _check_folder(out, digest, resume)
    if sweep.storage.path and sweep.storage.path.startswith("s3://"):
        raise MtftError("sweep storage on s3:// is not supported yet; use a local --out")
    _ensure_ray(sweep, base)
    plan = trial_plan(sweep, base, ray.cluster_resources())
    trainable = tune.with_resources(tune.with_parameters(trial_driver, base=base, threads=plan.threads),
                                    tune.PlacementGroupFactory([plan.driver]))
    if existing and tune.Tuner.can_restore(str(out)):
        log.warning("resuming sweep in %s", out)
        tuner = tune.Tuner.restore(str(out), trainable, resume_errored=True)
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "sweep.json", {"hash": digest, "sweep": sweep.model_dump(mode="json", by_alias=True),
                                               "base": base})
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(sweep),
            tune_config=tune.TuneConfig(metric=sweep.search.metric, mode=sweep.search.mode,
                                        search_alg=_search_alg(sweep, plan.concurrency),
                                        scheduler=_scheduler(sweep), num_samples=sweep.search.num_samples,
                                        # BasicVariantGenerator limits itself (max_concurrent above)
                                        max_concurrent_trials=plan.concurrency if sweep.search.algorithm == "optuna"
                                        else None),
            run_config=tune.RunConfig(name=out.name, storage_path=str(out.parent), verbose=0,
                                      sync_config=tune.SyncConfig(sync_artifacts=True),  # each trial's run/
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
        )
    grid = tuner.fit()
    rows = trial_rows(grid, list(sweep.search.space), sweep.search.metric)
    write_trials_csv(rows, out / "trials.csv")
    return rows


def trial_rows(grid, keys: list[str], metric: str) -> list[dict]:
    """One row per trial of a ``ResultGrid``: id, status, sampled params, last reported metrics.

    Status is ERROR (the trial raised), TERMINATED (it reported ``metric``) or INCOMPLETE
    (interrupted before its report; rerunning the sweep runs it again).
    """
    rows = []
    for r in grid:
        metrics = dict(r.metrics or {})
        trial_id = metrics.get("trial_id") or Path(r.path).name
        status = "ERROR" if r.error else "TERMINATED" if metric in metrics else "INCOMPLETE"
        row: dict[str, Any] = {"trial_id": trial_id, "status": status}
        row.update({k: (r.config or {}).get(k) for k in keys})
        for k, v in metrics.items():
            if k in ("config", "trial_id") or isinstance(v, dict):
                continue
            row.setdefault(k, v)
        if metrics.get("checkpoint"):  # reported from the trial's staging folder; name the synced copy
            row["checkpoint"] = str(Path(r.path) / "run" / Path(metrics["checkpoint"]).name)
        if r.error:
            row["error"] = str(r.error).strip().splitlines()[-1][:300]
        rows.append(row)
    return sorted(rows, key=lambda x: str(x["trial_id"]))


def write_trials_csv(rows: list[dict], path: Path) -> None:
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def format_trials(rows: list[dict], keys: list[str], metric: str) -> str:
    """A concise per-trial table: params, accuracy ± CI, selection diversity / consistency, M, m."""
    shot = metric.removeprefix("acc_") if metric.startswith("acc_") else None
    ci = f"ci95_{shot}" if shot else None

    def fmt(v: Any, pct: bool = False) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{100 * v:.2f}" if pct else f"{v:.3f}"
        return str(v)

    head = ["trial", "status", *keys, metric, "±ci95", "k", "diversity", "consistency", "M", "m"]
    body = [[str(r["trial_id"]).rsplit("_", 1)[-1], r["status"], *(fmt(r.get(k)) for k in keys), fmt(r.get(metric), True),
             fmt(r.get(ci), True) if ci else "-", fmt(r.get("selection_k")), fmt(r.get("selection_diversity")),
             fmt(r.get("selection_mean_consistency")), fmt(r.get("M")), fmt(r.get("m"))] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), *(line(b) for b in body)])
