"""The sweep's Tuner: OptunaSearch (or random / grid) + ConcurrencyLimiter, optional ASHA, resume.

Layout of a sweep folder (``--out``, default ``runs/sweeps/<name>``; Tune's experiment folder)::

    sweep.json     the sweep config, its resolved base experiment and their hash
    driver.json    the sweep driver's pid, host, start time and heartbeat (while it runs)
    trials.csv     one row per trial: params, metrics, status (written at the end)
    <trial>/run/   each trial's experiment output (result.json, manifest, checkpoint)

Rerunning the same command on the same folder resumes the sweep with
``Tuner.restore(path, trainable, resume_errored=True)``; a folder holding a different sweep is
refused unless ``resume=True`` (then the stored sweep goes on, unchanged).

Example:
    >>> from mtft_ray.sweep.load import load_sweep
    >>> sweep, base = load_sweep("sweeps/quickstart.yaml")           # doctest: +SKIP
    >>> rows = run_sweep(sweep, base, "runs/sweeps/quickstart")       # doctest: +SKIP
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.lock import LOCK_NAME, FolderLock
from mtft_ray.ray_cluster import DRIVER_RESOURCE, cluster_capacity, ensure_ray
from mtft_ray.storage import Storage, open_storage, probe_storage
from mtft_ray.sweep.driver import trial_driver
from mtft_ray.sweep.schema import DRIVER_FILE, HEARTBEAT_S, SweepConfig, sweep_hash
from mtft_ray.sweep.space import check_data, suggest, tune_space
from mtft_ray.train.plan import worker_resources

log = logging.getLogger("mtft_ray")


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


def trial_plan(sweep: SweepConfig, cfg: ExperimentConfig, cluster: dict[str, float]) -> TrialPlan:
    """Per-trial resources and concurrency from the cluster's resources (``ray.cluster_resources()``).

    In-process trials (``train.workers: 0``) reserve 2 CPUs (or ``run.threads``); trials with
    Ray Train workers reserve only ``{"TRAIN_DRIVER": 1}`` for the driver, plus their workers, so
    a driver never takes the CPU its workers need (the Tune-over-Train deadlock).

    >>> trial_plan(SweepConfig.model_validate({"search": {"space": {"seed": {"choice": [0]}}}}),
    ...            ExperimentConfig(), {"CPU": 2.0}).concurrency
    1
    """
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


def local_resources(cfg: ExperimentConfig) -> dict[str, float]:
    """Custom resources to declare when this process starts a local Ray: one TRAIN_DRIVER per trial slot."""
    if not (cfg.train.workers and "multitask" in cfg.methods):
        return {}
    cpus = os.cpu_count() or 1
    per = cfg.train.workers * cfg.train.cpus_per_worker
    return {DRIVER_RESOURCE: float(max(1, math.floor(cpus / per)) if per else 1)}


def _search_alg(sweep: SweepConfig, concurrency: int, study: str | None):
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    s = sweep.search
    if s.algorithm == "optuna":
        import optuna

        from mtft_ray.sweep.hooks import FinalMetricOptuna  # it imports Ray Tune

        storage = optuna.storages.RDBStorage(study) if study else None  # optuna-dashboard reads it
        space = functools.partial(suggest, space={k: d.model_dump(mode="json", by_alias=True, exclude_none=True)
                                                  for k, d in s.space.items()})
        return ConcurrencyLimiter(FinalMetricOptuna(space=space, metric=s.metric, mode=s.mode, seed=sweep.seed,
                                                    study_name=sweep.name if study else None, storage=storage),
                                  max_concurrent=concurrency)
    return BasicVariantGenerator(random_state=sweep.seed, max_concurrent=concurrency)


def _scheduler(sweep: SweepConfig):
    a = sweep.scheduler.asha
    if a is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(metric=a.metric, mode=a.mode, time_attr="training_iteration", grace_period=a.grace_period,
                         max_t=a.max_t, reduction_factor=a.reduction_factor)


def sweep_storage(sweep: SweepConfig, out: str | Path | None) -> Storage:
    """Where the sweep folder lives: ``out``, else ``<storage.path>/<name>``, else ``runs/sweeps/<name>``.

    ``s3://bucket/prefix`` works for either, with the endpoint and region of ``sweep.storage``.
    """
    where = str(out) if out is not None else (f"{sweep.storage.path.rstrip('/')}/{sweep.name}" if sweep.storage.path
                                               else f"runs/sweeps/{sweep.name}")
    return open_storage(sweep.storage.model_copy(update={"path": where}))


def study_url(sweep: SweepConfig, storage: Storage) -> str | None:
    """The Optuna RDB URL: ``search.study_storage`` as given, or a bare file name placed in a local sweep folder."""
    url = sweep.search.study_storage
    if not url or "://" in url:
        return url
    if storage.scheme != "local":
        raise MtftError(f"search.study_storage {url!r} is a file name, but the sweep folder is {storage.uri()}: "
                        f"give a database URL such as sqlite:////abs/path/study.db")
    return f"sqlite:///{storage.path(url)}"


def _check_folder(storage: Storage, digest: str, resume: bool) -> bool:
    """True when the sweep folder holds this sweep (or ``resume`` forces it); refuse a different one."""
    import pyarrow.fs as pafs

    if not storage.exists("sweep.json"):
        entries = storage.filesystem.get_file_info(pafs.FileSelector(storage.root, allow_not_found=True))
        if [e for e in entries if PurePosixPath(e.path).name != LOCK_NAME]:  # our own lock is there already
            raise MtftError(f"{storage.uri()} is not empty and holds no sweep.json: choose another --out")
        return False
    stored = json.loads(storage.read_bytes("sweep.json")).get("hash")
    if stored != digest and not resume:
        raise MtftError(f"{storage.uri()} holds a different sweep (config hash {stored}, this one {digest}); "
                        f"choose another --out, or pass --resume to continue the stored sweep")
    return True


def run_sweep(sweep: SweepConfig, base: ExperimentConfig, out: str | Path | None = None, *, resume: bool = False,
              progress: bool = True) -> list[dict]:
    """Run (or resume) the sweep; write ``trials.csv`` into its folder and return its rows.

    Args:
        sweep: the validated sweep.
        base: its resolved base experiment.
        out: the sweep folder, local or ``s3://`` (default: see :func:`sweep_storage`); it is
            Tune's experiment folder.
        resume: continue the sweep stored there even if its config hash differs.
        progress: print where the sweep runs and one line per finished trial (stdout).
    """
    storage = sweep_storage(sweep, out)
    if storage.scheme == "local":
        _check_writable(Path(storage.root))  # before Ray starts
        Path(storage.root).parent.mkdir(parents=True, exist_ok=True)
    else:
        probe_storage(storage, sweep.storage)  # unreachable endpoint, missing bucket: fail now
    with FolderLock(storage, "sweep"):  # a second sweep into this folder exits naming this one
        return _run_sweep(sweep, base, storage, resume, progress)


def _run_sweep(sweep: SweepConfig, base: ExperimentConfig, storage: Storage, resume: bool, progress: bool) -> list[dict]:
    from ray import tune  # heavy: only a running sweep needs Tune

    digest = sweep_hash(sweep, base)
    existing = _check_folder(storage, digest, resume)
    study = study_url(sweep, storage)
    if not existing:
        check_data(sweep, base, f"sweep {sweep.name}")  # more ways than classes and the like, before Ray starts
    dashboard = ensure_ray(resources=local_resources(base))
    plan = trial_plan(sweep, base, cluster_capacity())
    if progress:
        print(f"sweep {sweep.name}: {storage.where()}; {plan.concurrency} trial(s) at a time; Ray "
             + (f"dashboard {dashboard}" if dashboard else "local (no dashboard)"), flush=True)
    trial_storage = sweep.storage.model_copy(update={"path": storage.uri()}) if storage.scheme == "s3" else None
    trainable = tune.with_resources(tune.with_parameters(trial_driver, base=base, threads=plan.threads,
                                                         storage=trial_storage),
                                    tune.PlacementGroupFactory([plan.driver]))
    # per-epoch reports carry val_acc (what ASHA watches) but not the final metric
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    fs = storage.filesystem if storage.scheme == "s3" else None
    from mtft_ray.sweep.hooks import TrialLines  # it imports Ray Tune

    callbacks = [TrialLines(sweep.search.metric, list(sweep.search.space))] if progress else []
    if existing and tune.Tuner.can_restore(storage.root, storage_filesystem=fs):
        log.warning("resuming sweep in %s", storage.uri())
        tuner = tune.Tuner.restore(storage.root, trainable, resume_errored=True, storage_filesystem=fs)
    else:
        storage.write_bytes(json.dumps({"hash": digest, "sweep": sweep.model_dump(mode="json", by_alias=True),
                                        "base": base.model_dump(mode="json")}, indent=1).encode(), "sweep.json")
        tuner = tune.Tuner(
            trainable,
            param_space={} if sweep.search.algorithm == "optuna" else tune_space(sweep),
            tune_config=tune.TuneConfig(search_alg=_search_alg(sweep, plan.concurrency, study),
                                        # the searcher limits concurrency (ConcurrencyLimiter, max_concurrent)
                                        scheduler=_scheduler(sweep), num_samples=sweep.search.num_samples),
            run_config=tune.RunConfig(name=PurePosixPath(storage.root).name,
                                      storage_path=str(PurePosixPath(storage.root).parent), storage_filesystem=fs,
                                      verbose=0, callbacks=callbacks,
                                      sync_config=tune.SyncConfig(sync_artifacts=True),  # each trial's run/
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
        )
    beating = _heartbeat(storage)
    try:
        grid = tuner.fit()
    finally:
        beating.set()
    rows = trial_rows(grid, list(sweep.search.space), sweep.search.metric, storage)
    storage.write_bytes(trials_csv(rows).encode(), "trials.csv")
    return rows


def _check_writable(root: Path) -> None:
    """A local sweep folder, or the first of its parents that exists, must be a folder this process can write.

    Raises:
        MtftError: naming the folder and the reason.
    """
    there = next(p for p in (root, *root.parents) if p.exists())
    try:
        if not there.is_dir():
            raise NotADirectoryError(f"{there} is a file, not a folder")
        tempfile.TemporaryFile(dir=there).close()
    except OSError as e:
        raise MtftError(f"sweep folder {root} cannot be written: {e.strerror or e}"
                        + (f" ({there})" if e.strerror else "")) from None


def _heartbeat(storage: Storage) -> threading.Event:
    """Write ``driver.json`` now and every ``HEARTBEAT_S`` seconds until the returned event is set."""
    doc = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    stop = threading.Event()

    def beat() -> None:
        try:
            storage.write_bytes(json.dumps({**doc, "heartbeat": time.time()}).encode(), DRIVER_FILE)
        except OSError as e:  # a missed beat only makes a running sweep look stale later
            log.warning("could not write %s: %s", storage.uri(DRIVER_FILE), e)

    def loop() -> None:
        while not stop.wait(HEARTBEAT_S):
            beat()

    beat()
    threading.Thread(target=loop, name="mtft-ray-sweep-heartbeat", daemon=True).start()
    return stop


def trial_rows(grid, keys: list[str], metric: str, storage: Storage | None = None) -> list[dict]:
    """One row per trial of a ``ResultGrid``: id, status, sampled params, last reported metrics.

    Status is ERROR (the trial raised), TERMINATED (it reported ``metric``), STOPPED (the
    scheduler ended it early, after per-epoch reports) or INCOMPLETE (interrupted before its
    final report; rerunning the sweep runs it again).
    """
    rows = []
    for r in grid:
        metrics = dict(r.metrics or {})
        trial_id = metrics.get("trial_id") or PurePosixPath(r.path).name
        status = ("ERROR" if r.error else "TERMINATED" if metric in metrics
                  else "STOPPED" if metrics.get("done") else "INCOMPLETE")
        row: dict[str, Any] = {"trial_id": trial_id, "status": status}
        row.update({k: _cell((r.config or {}).get(k)) for k in keys})
        for k, v in metrics.items():
            if k in ("config", "trial_id") or isinstance(v, dict):
                continue
            row.setdefault(k, v)
        if metrics.get("checkpoint"):  # reported from the trial's staging folder; name the synced copy
            synced = str(PurePosixPath(r.path, "run", PurePosixPath(metrics["checkpoint"]).name))
            row["checkpoint"] = f"s3://{synced}" if storage is not None and storage.scheme == "s3" else synced
        if r.error:
            row["error"] = str(r.error).strip().splitlines()[-1][:300]
        rows.append(row)
    return sorted(rows, key=lambda x: str(x["trial_id"]))


def _cell(value: Any) -> Any:
    """A sampled value for a table: a list (a subset, a list of shots) as ``a+b+c``."""
    return "+".join(map(str, value)) if isinstance(value, list) else value


def trials_csv(rows: list[dict]) -> str:
    """``trials.csv``'s text: one row per trial, columns in order of first appearance."""
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def format_trials(rows: list[dict], keys: list[str], metric: str) -> str:
    """A concise per-trial table: params, accuracy ± CI, selection diversity / consistency, M, m."""
    shot = metric.removeprefix("acc_") if metric.startswith("acc_") else None
    ci = f"ci95_{shot}" if shot else None

    def fmt(v: Any, pct: bool = False, short: bool = False) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{100 * v:.2f}" if pct else f"{v:.3g}" if short else f"{v:.3f}"
        return str(v)

    head = ["trial", "status", *keys, metric, "±ci95", "k", "diversity", "consistency", "M", "m"]
    body = [[str(r["trial_id"]).rsplit("_", 1)[-1], r["status"], *(fmt(r.get(k), short=True) for k in keys),
             fmt(r.get(metric), True),
             fmt(r.get(ci), True) if ci else "-", fmt(r.get("selection_k")), fmt(r.get("selection_diversity")),
             fmt(r.get("selection_mean_consistency")), fmt(r.get("M")), fmt(r.get("m"))] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), *(line(b) for b in body)])
