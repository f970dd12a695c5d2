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
from mtft_ray.sweep.cost import BudgetGate, check_budget, estimate_trial
from mtft_ray.sweep.driver import trial_driver
from mtft_ray.sweep.history import finished_trials, read_sweep_doc
from mtft_ray.sweep.schema import DRIVER_FILE, HEARTBEAT_S, SweepConfig, sweep_hash
from mtft_ray.sweep.space import check_data, suggest, trial_count, tune_space
from mtft_ray.sweep.tracking import check_tracking, tracking_callbacks
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


def _search_alg(sweep: SweepConfig, concurrency: int, study: str | None, *, segment: int = 0,
                past: list = (), gate=None, where: str = "sweep"):
    """The search algorithm of one segment: Optuna (TPE / NSGA-II) behind a ConcurrencyLimiter, or
    Tune's random / grid generator; a budget gate around either when ``gate`` is given.

    Each segment's sampler is seeded ``seed + segment``, so an extension does not redraw the
    first segment's random start-up points. ``past`` trials (:class:`~mtft_ray.sweep.history.PastTrial`)
    are replayed into the Optuna study unless its RDB storage already holds trials.
    """
    from ray.tune.search import ConcurrencyLimiter

    from mtft_ray.sweep.budget import BudgetedVariantGenerator, BudgetLimiter  # they import Ray Tune

    s = sweep.search
    seed = sweep.seed + segment
    if s.algorithm == "optuna":
        import optuna

        from mtft_ray.sweep.history import replay
        from mtft_ray.sweep.hooks import FinalMetricOptuna, optuna_sampler  # they import Ray Tune

        plain = {k: d.model_dump(mode="json", by_alias=True, exclude_none=True) for k, d in s.space.items()}
        storage = optuna.storages.RDBStorage(study) if study else optuna.storages.InMemoryStorage()
        name = sweep.name if study else "mtft-ray"
        directions = ["maximize" if m == "max" else "minimize" for m in s.modes]
        ot_study = optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True)
        if past and not ot_study.trials:  # an RDB study already holds every trial it ran
            added, skipped = replay(ot_study, list(past), plain)
            log.warning("%s: searcher warm with %d finished trial(s)%s", where, added,
                        f"; {len(skipped)} did not fit this space: {', '.join(skipped[:5])}" if skipped else "")
        searcher = FinalMetricOptuna(space=functools.partial(suggest, space=plain),
                                     metric=s.metrics if s.multi else s.primary,
                                     mode=s.modes if s.multi else s.modes[0], sampler=optuna_sampler(s, seed),
                                     study_name=name, storage=storage)
        alg = ConcurrencyLimiter(searcher, max_concurrent=concurrency)
        return BudgetLimiter(alg, gate) if gate is not None else alg
    from ray.tune.search import BasicVariantGenerator

    if gate is not None:
        return BudgetedVariantGenerator(gate, random_state=seed, max_concurrent=concurrency)
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


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


def _check_folder(storage: Storage, digest: str, resume: bool) -> dict | None:
    """The stored ``sweep.json`` when the folder holds this sweep (or ``resume`` forces it; then
    ``forced`` is set in it), None for an empty folder; refuse a different sweep."""
    import pyarrow.fs as pafs

    if not storage.exists("sweep.json"):
        entries = storage.filesystem.get_file_info(pafs.FileSelector(storage.root, allow_not_found=True))
        if [e for e in entries if PurePosixPath(e.path).name != LOCK_NAME]:  # our own lock is there already
            raise MtftError(f"{storage.uri()} is not empty and holds no sweep.json: choose another --out")
        return None
    doc = read_sweep_doc(storage)
    stored = doc.get("hash")
    if stored != digest and not resume:
        raise MtftError(f"{storage.uri()} holds a different sweep (config hash {stored}, this one {digest}); "
                        f"choose another --out, or pass --resume to continue the stored sweep")
    return {**doc, "forced": stored != digest}


def run_sweep(sweep: SweepConfig, base: ExperimentConfig, out: str | Path | None = None, *, resume: bool = False,
              progress: bool = True, add: int | None = None) -> list[dict]:
    """Run, resume or extend the sweep; write ``trials.csv`` into its folder and return its rows.

    Args:
        sweep: the validated sweep.
        base: its resolved base experiment.
        out: the sweep folder, local or ``s3://`` (default: see :func:`sweep_storage`); it is
            Tune's experiment folder.
        resume: continue the sweep stored there even if its config hash differs.
        progress: print where the sweep runs and one line per finished trial (stdout).
        add: run this many more samples than the folder's finished sweep holds (a grid: more
            repeats of it); without it, a finished sweep is extended up to ``search.num_samples``.
    """
    storage = sweep_storage(sweep, out)
    if storage.scheme == "local":
        _check_writable(Path(storage.root))  # before Ray starts
        Path(storage.root).parent.mkdir(parents=True, exist_ok=True)
    else:
        probe_storage(storage, sweep.storage)  # unreachable endpoint, missing bucket: fail now
    if add is not None and add < 1:
        raise MtftError(f"--add {add}: give a positive number of samples to add")
    with FolderLock(storage, "sweep"):  # a second sweep into this folder exits naming this one
        return _run_sweep(sweep, base, storage, resume, progress, add)


def _run_sweep(sweep: SweepConfig, base: ExperimentConfig, storage: Storage, resume: bool, progress: bool,
               add: int | None = None) -> list[dict]:
    from ray import tune  # heavy: only a running sweep needs Tune

    digest = sweep_hash(sweep, base)
    doc = _check_folder(storage, digest, resume)
    study = study_url(sweep, storage)
    warm = warm_start_trials(sweep) if sweep.search.warm_start and doc is None else []
    if doc is None:
        check_data(sweep, base, f"sweep {sweep.name}")  # more ways than classes and the like, before Ray starts
    tracking = check_tracking(sweep, f"sweep {sweep.name}")  # MLflow up, W&B logged in: before Ray starts
    dashboard = ensure_ray(resources=local_resources(base))
    plan = trial_plan(sweep, base, cluster_capacity())
    if progress:
        print(f"sweep {sweep.name}: {storage.where()}; {plan.concurrency} trial(s) at a time; Ray "
             + (f"dashboard {dashboard}" if dashboard else "local (no dashboard)"), flush=True)
    node = sweep.search.node or local_node()
    gate = None
    if sweep.search.budget is not None:
        if sweep.search.budget.dollars and not sweep.search.price_per_hour:
            raise MtftError(f"sweep {sweep.name}: search.budget.dollars needs search.price_per_hour (what one node "
                            f"of the trials costs an hour) to count the trials' dollars")
        one, _ = estimate_trial(sweep, base, plan.per_trial, node=node)
        check_budget(sweep.search.budget.caps(), one, f"sweep {sweep.name}")
        gate = BudgetGate(sweep.search.budget.caps(), one)
    trial_storage = sweep.storage.model_copy(update={"path": storage.uri()}) if storage.scheme == "s3" else None
    trainable = tune.with_resources(tune.with_parameters(trial_driver, base=base, threads=plan.threads,
                                                         storage=trial_storage, per_trial=plan.per_trial,
                                                         price_per_hour=sweep.search.price_per_hour, node=node),
                                    tune.PlacementGroupFactory([plan.driver]))
    # per-epoch reports carry val_acc (what ASHA watches) but not the final metric
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    fs = storage.filesystem if storage.scheme == "s3" else None
    from mtft_ray.sweep.hooks import TrialLines  # it imports Ray Tune

    callbacks = [TrialLines(sweep.search.metric, list(sweep.search.space))] if progress else []
    callbacks += tracking_callbacks(sweep, storage, tracking)
    keys, metric = list(sweep.search.space), sweep.search.primary

    def fit(tuner, prior: list[dict]) -> list[dict]:
        beating = _heartbeat(storage)
        try:
            grid = tuner.fit()
        finally:
            beating.set()
        rows = prior + trial_rows(grid, keys, metric, storage)
        storage.write_bytes(trials_csv(rows).encode(), "trials.csv")
        return rows

    def new_tuner(segment: int, num_samples: int, past: list, seg_gate) -> object:
        return tune.Tuner(
            trainable,
            param_space={} if sweep.search.algorithm == "optuna" else tune_space(sweep),
            tune_config=tune.TuneConfig(search_alg=_search_alg(sweep, plan.concurrency, study, segment=segment,
                                                               past=past, gate=seg_gate, where=f"sweep {sweep.name}"),
                                        # the searcher limits concurrency (ConcurrencyLimiter, max_concurrent)
                                        scheduler=_scheduler(sweep), num_samples=num_samples),
            run_config=tune.RunConfig(name=PurePosixPath(storage.root).name,
                                      storage_path=str(PurePosixPath(storage.root).parent), storage_filesystem=fs,
                                      verbose=0, callbacks=callbacks,
                                      sync_config=tune.SyncConfig(sync_artifacts=True),  # each trial's run/
                                      failure_config=tune.FailureConfig(max_failures=sweep.max_failures)),
        )

    if doc is None:  # a new sweep: segment 0
        segments = [_segment(sweep.search.num_samples, None)]
        _write_doc(storage, digest, sweep, base, segments)
        rows = fit(new_tuner(0, sweep.search.num_samples, warm, gate), [])
        return _close_segment(storage, digest, sweep, base, segments, rows)
    segments = doc.get("segments") or [_segment(doc["sweep"]["search"]["num_samples"], None)]  # older folders
    rows = read_trials_csv(storage)
    unfinished = not segments[-1].get("finished", rows is not None and not _incomplete(rows))
    if unfinished or doc["forced"]:
        prior = read_trials_csv(storage, segments[-1]["prior"]) if segments[-1].get("prior") else []
        if _segment_has_state(storage, segments[-1]) and tune.Tuner.can_restore(storage.root, storage_filesystem=fs):
            log.warning("resuming sweep in %s", storage.uri())
            tuner = tune.Tuner.restore(storage.root, trainable, resume_errored=True, storage_filesystem=fs)
        else:  # stopped before its Tuner saved any state: run the segment from its start
            k = len(segments) - 1
            past = [] if sweep.search.algorithm != "optuna" else (
                (finished_trials(storage, sweep.search.metrics) if k else [])
                + (warm_start_trials(sweep) if sweep.search.warm_start else []))
            if gate is not None:
                for r in prior:
                    gate.finished({m: r.get(m) for m in gate.caps})
            tuner = new_tuner(k, segments[-1]["num_samples"], past, gate)
        rows = fit(tuner, prior)
        rows = _close_segment(storage, doc["hash"], sweep, base, segments, rows, keep_doc=doc if doc["forced"] else None)
        if _incomplete(rows) or doc["forced"]:
            return rows
    per = sweep_grid_size(sweep)
    done = sum(r["status"] != "INCOMPLETE" for r in rows) // per
    target = done + add if add is not None else sweep.search.num_samples
    if target <= done:
        if progress and add is None and target < done:
            print(f"sweep {sweep.name}: {done} sample(s) already finished (search.num_samples {target}); "
                  f"nothing to run (--add N, or a larger num_samples, extends it)", flush=True)
        return rows
    k = len(segments)
    prior_file = f"trials-before-{k}.csv"
    storage.write_bytes(trials_csv(rows).encode(), prior_file)
    segments.append(_segment(target - done, prior_file))
    _write_doc(storage, digest, sweep, base, segments)
    if progress:
        print(f"sweep {sweep.name}: extending {done} finished sample(s) by {target - done} (segment {k})", flush=True)
    if gate is not None:
        for r in rows:
            gate.finished({m: r.get(m) for m in gate.caps})
    past = []
    if sweep.search.algorithm == "optuna":  # this sweep's finished trials, and the warm start's, seed the searcher
        past = finished_trials(storage, sweep.search.metrics) + (warm_start_trials(sweep) if sweep.search.warm_start
                                                                   else [])
    rows = fit(new_tuner(k, target - done, past, gate), rows)
    return _close_segment(storage, digest, sweep, base, segments, rows)


def _segment_has_state(storage: Storage, segment: dict) -> bool:
    """Whether the segment's Tuner saved an experiment state (one written since the segment started);
    an extension killed before that would otherwise restore the previous, finished segment."""
    import pyarrow.fs as pafs

    entries = storage.filesystem.get_file_info(pafs.FileSelector(storage.root, allow_not_found=True))
    return any(PurePosixPath(e.path).name.startswith("experiment_state-") and e.mtime is not None
               and e.mtime.timestamp() >= segment.get("started", 0.0) - 1.0 for e in entries)


def _segment(num_samples: int, prior: str | None) -> dict:
    """One run of a Tuner in the sweep folder: the samples it adds and the file listing the trials before it."""
    return {"num_samples": num_samples, "prior": prior, "started": time.time(), "finished": False}


def _write_doc(storage: Storage, digest: str, sweep: SweepConfig, base: ExperimentConfig, segments: list[dict]) -> None:
    storage.write_bytes(json.dumps({"hash": digest, "sweep": sweep.model_dump(mode="json", by_alias=True),
                                    "base": base.model_dump(mode="json"), "segments": segments}, indent=1).encode(),
                        "sweep.json")


def _close_segment(storage: Storage, digest: str, sweep: SweepConfig, base: ExperimentConfig, segments: list[dict],
                   rows: list[dict], keep_doc: dict | None = None) -> list[dict]:
    """Mark the last segment finished in ``sweep.json`` when none of its trials is left incomplete."""
    if not _incomplete(rows):
        segments[-1]["finished"] = True
        if keep_doc is not None:  # a forced resume keeps the stored sweep's record
            storage.write_bytes(json.dumps({k: v for k, v in {**keep_doc, "segments": segments}.items()
                                            if k != "forced"}, indent=1).encode(), "sweep.json")
        else:
            _write_doc(storage, digest, sweep, base, segments)
    return rows


def _incomplete(rows: list[dict]) -> bool:
    return any(r.get("status") == "INCOMPLETE" for r in rows)


def sweep_grid_size(sweep: SweepConfig) -> int:
    """Trials per sample: the grid's size for a grid search, else 1."""
    return trial_count(sweep.model_copy(update={"search": sweep.search.model_copy(update={"num_samples": 1})}))


def read_trials_csv(storage: Storage, name: str = "trials.csv") -> list[dict] | None:
    """The rows of a ``trials.csv`` written by :func:`trials_csv` (numbers parsed back), or None if absent."""
    if not storage.exists(name):
        return None
    text = storage.read_bytes(name).decode()
    # ids stay text: a hex trial id such as 638254e7 would otherwise read back as the float 6.38e12
    return [{k: v if k == "trial_id" or k.endswith("_id") else _parse(v) for k, v in row.items() if v not in (None, "")}
            for row in csv.DictReader(io.StringIO(text))]


def _parse(v: str) -> Any:
    if "_" in v:  # int() reads "1_000"; a trial id is text
        return v
    for kind in (int, float):
        try:
            return kind(v)
        except ValueError:
            pass
    return v


def warm_start_trials(sweep: SweepConfig) -> list:
    """The finished trials of ``search.warm_start``'s sweep folder, checked against this sweep.

    Raises:
        MtftError: the folder is not a sweep, or searched another metric or other keys.
    """
    src = open_storage(sweep.storage.model_copy(update={"path": sweep.search.warm_start}))
    doc = read_sweep_doc(src)
    theirs = doc["sweep"].get("search") or {}
    their_metrics = theirs.get("metric") if isinstance(theirs.get("metric"), list) else [theirs.get("metric")]
    if their_metrics != sweep.search.metrics:
        raise MtftError(f"search.warm_start {src.uri()} searched {their_metrics}, this sweep {sweep.search.metrics}: "
                        f"its trials cannot seed this search")
    if sweep.search.algorithm != "optuna":
        raise MtftError(f"search.warm_start seeds an Optuna search; algorithm is {sweep.search.algorithm!r}")
    shared = set(theirs.get("space") or {}) & set(sweep.search.space)
    if not shared:
        raise MtftError(f"search.warm_start {src.uri()} searched {sorted(theirs.get('space') or {})}, none of this "
                        f"sweep's keys {sorted(sweep.search.space)}")
    return finished_trials(src, sweep.search.metrics)


def local_node() -> dict[str, float]:
    """This machine's CPUs and GPUs: the node a trial's share of ``search.price_per_hour`` is taken of."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


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


def format_trials(rows: list[dict], keys: list[str], metric: str,
                  extra_metrics: list[str] | tuple[str, ...] = ()) -> str:
    """A concise per-trial table: params, accuracy ± CI, the ``extra_metrics`` (a multi-objective
    sweep's other objectives: accuracies in percent), selection diversity / consistency, M, m.

    >>> rows = [{"trial_id": "t_00000", "status": "TERMINATED", "tasks.M": 4, "acc_1shot": 0.5,
    ...          "ci95_1shot": 0.02, "cpu_hours": 0.0125, "M": 4, "m": 9}]
    >>> print(format_trials(rows, ["tasks.M"], "acc_1shot", ["cpu_hours"]))
    trial  status      tasks.M  acc_1shot  ±ci95  cpu_hours  k  diversity  consistency  M  m
    00000  TERMINATED  4        50.00      2.00   0.0125     -  -          -            4  9
    """
    shot = metric.removeprefix("acc_") if metric.startswith("acc_") else None
    ci = f"ci95_{shot}" if shot else None

    def fmt(v: Any, pct: bool = False, short: bool = False) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{100 * v:.2f}" if pct else f"{v:.3g}" if short else f"{v:.3f}"
        return str(v)

    extra = [m for m in extra_metrics if m != metric]
    is_acc = lambda m: "acc_" in m and m.endswith("shot")
    head = ["trial", "status", *keys, metric, "±ci95", *extra, "k", "diversity", "consistency", "M", "m"]
    body = [[str(r["trial_id"]).rsplit("_", 1)[-1], r["status"], *(fmt(r.get(k), short=True) for k in keys),
             fmt(r.get(metric), True), fmt(r.get(ci), True) if ci else "-",
             *(fmt(r.get(m), pct=is_acc(m), short=not is_acc(m)) for m in extra),
             fmt(r.get("selection_k")), fmt(r.get("selection_diversity")),
             fmt(r.get("selection_mean_consistency")), fmt(r.get("M")), fmt(r.get("m"))] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    return "\n".join([line(head), *(line(b) for b in body)])
