"""Ray Tune's own logger callbacks for MLflow and W&B, subclassed where a sweep needs more, and the
helpers they share (a trial's params, metric names, run files).

What the subclasses add to Ray's ``MLflowLoggerCallback`` and ``WandbLoggerCallback``:

- params: every sampled value plus one include flag per item of a searched subset
  (:func:`trial_params`); MLflow gets names it accepts
  (``tasks.domains[lao]`` → ``tasks.domains/lao``) in one batched request;
- metrics: the trial's numbers only (Ray's MLflow callback would log the config as metrics, and
  MLflow refuses bracketed names), per Tune iteration (each epoch, then the final report);
- files: the small outputs of the trial's experiment folder (``run/result.json``,
  ``run/manifest.json``, ``run/config.yaml``, ...) as MLflow artifacts and W&B run files, read on
  the node that ran the trial (its folder there is complete once the trial has reported last);
- ``best_effort``: a tracker that fails mid-sweep is switched off with one warning instead of
  failing the sweep; a resumed sweep reuses a trial's MLflow run rather than opening another.

TensorBoard needs none of this: :func:`mtft_ray.sweep.tracking.tracking_callbacks` uses Ray's
``TBXLoggerCallback`` as it is. Imported only when a sweep tracks (it imports Ray Tune).

Example:
    >>> cb = MlflowTrials("http://127.0.0.1:5000", "quickstart", tags={}, subsets={})   # doctest: +SKIP
    >>> tune.RunConfig(callbacks=[cb])                                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
from ray.air.util.node import _force_on_current_node
from ray.tune.logger import TBXLoggerCallback

from mtft_ray.sweep.schema import flag_name

__all__ = ["MlflowTrials", "TBXLoggerCallback", "WandbTrials", "mlflow_name", "param_text", "read_on_node",
           "read_run_files", "trial_files", "trial_metrics", "trial_params"]

log = logging.getLogger("mtft_ray")

# the files of a trial's experiment folder (run/) that trackers keep: small text, never checkpoints
RUN_FILE_SUFFIXES = (".json", ".yaml", ".yml", ".csv", ".txt")
MAX_RUN_FILE_BYTES = 16 << 20
# Tune's bookkeeping that is no metric of the trial
_NOT_METRICS = {"config", "pid", "done", "timestamp", "should_checkpoint", "timesteps_total", "episodes_total"}
# strings of a trial's final report that MLflow keeps as run tags
TAG_KEYS = ("config_hash", "method", "checkpoint", "warnings")
_BATCH = 100  # MLflow's limit of params per log_batch request (metrics: 1000)
_remote_reader = None


def param_text(value: Any) -> str:
    """A param's value as text: a list (a subset, a list of shots) as ``a+b+c``.

    >>> param_text(["adlam", "lao"]), param_text(True), param_text(1e-4)
    ('adlam+lao', 'True', '0.0001')
    """
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def trial_params(config: dict[str, Any], subsets: dict[str, list[str]]) -> dict[str, Any]:
    """A trial's sampled values plus one include flag per item of each searched subset.

    Optuna's own flags are in the trial's config already, but not the last item's when it was
    forced on (a subset is never empty), nor any with the random or grid search: every flag is
    derived here from the subset's list.

    >>> trial_params({"tasks.domains": ["a"], "finetune.lr": 0.01}, {"tasks.domains": ["a", "b"]})
    {'tasks.domains': ['a'], 'finetune.lr': 0.01, 'tasks.domains[a]': True, 'tasks.domains[b]': False}
    """
    out = dict(config)
    for key, items in subsets.items():
        chosen = config.get(key)
        if isinstance(chosen, list):
            out.update({flag_name(key, item): item in chosen for item in items})
    return out


def mlflow_name(key: str) -> str:
    """An MLflow param or metric name for ``key``: an include flag ``tasks.domains[lao]`` becomes
    ``tasks.domains/lao``; any other character MLflow refuses becomes ``_``.

    >>> mlflow_name("tasks.domains[lao]"), mlflow_name("finetune.lr")
    ('tasks.domains/lao', 'finetune.lr')
    """
    key = re.sub(r"\[([^\[\]]*)\]$", r"/\1", key)
    return re.sub(r"[^\w\-. :/]", "_", key)


def trial_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers of one Tune result that are metrics of the trial (its config and Tune's
    bookkeeping left out; nested mappings flattened with ``/``).

    >>> trial_metrics({"epoch": 1, "val_acc": 0.5, "done": False, "config": {"x": 1}, "method": "multitask"})
    {'epoch': 1.0, 'val_acc': 0.5}
    """
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in _NOT_METRICS:
            continue
        if isinstance(value, dict):
            out.update({f"{key}/{k}": v for k, v in trial_metrics(value).items()})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def read_run_files(folder: str | Path) -> dict[str, bytes]:
    """The small files of a trial's experiment folder (``result.json``, ``manifest.json``,
    ``config.yaml``, ...) by name; checkpoints, sub-folders and the lock are left out.

    >>> import tempfile; d = Path(tempfile.mkdtemp()); _ = (d / "result.json").write_text("{}")
    >>> _ = (d / "multitask.pt").write_bytes(b"x"); sorted(read_run_files(d))
    ['result.json']
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in RUN_FILE_SUFFIXES and not p.name.startswith(".")
            and p.stat().st_size <= MAX_RUN_FILE_BYTES}


def run_folders(trial) -> list[str]:
    """Where a trial's experiment folder (``run/``) can be, on the node that ran it: under the
    trial dir Tune gives the trial (``get_trial_dir()``: its driver staging path, the same on every
    node) or under its working directory (what Tune syncs to storage)."""
    folders = [str(Path(trial.local_path, "run"))]
    if getattr(trial, "storage", None) is not None:
        folders.append(str(Path(trial.storage.trial_working_directory, "run")))
    return folders


def read_first(folders: list[str]) -> dict[str, bytes]:
    """The run files of the first of ``folders`` that holds any (see :func:`read_run_files`)."""
    for folder in folders:
        files = read_run_files(folder)
        if files:
            return files
    return {}


def read_on_node(ip: str, folders: list[str], timeout: float = 60.0) -> dict[str, bytes]:
    """:func:`read_first` run on the node at ``ip``, by a zero-CPU Ray task pinned there."""
    global _remote_reader
    if _remote_reader is None:
        _remote_reader = ray.remote(num_cpus=0)(read_first)
    return ray.get(_remote_reader.options(resources={f"node:{ip}": 0.001}).remote(folders), timeout=timeout)


def trial_files(trial) -> dict[str, bytes]:
    """The small files of the trial's experiment folder, read where the trial ran.

    Called when the trial ends (its last report is in, so its folder is complete there); Tune's
    copy in the sweep's storage may lag behind until the trial's actor has stopped.
    """
    folders = run_folders(trial)
    files = read_first(folders)
    ip = (trial.last_result or {}).get("node_ip")
    if files or not ip or ip == ray.util.get_node_ip_address():
        return files
    try:
        return read_on_node(ip, folders)
    except Exception as e:  # noqa: BLE001 - a dead node, a timeout: the run goes without its files
        log.warning("trial %s: could not read its run files on node %s: %s", trial, ip, e)
        return {}


class _BestEffort:
    """Under ``best_effort`` a tracker that raises is switched off with one warning; else it raises.

    Wraps the hooks Tune calls (which then call the ``log_trial_*`` methods of the tracker).
    """

    tool = "tracker"
    best_effort = False
    _off = False

    def _safely(self, hook: str, *args: Any, **kwargs: Any) -> None:
        if self._off:
            return
        try:
            getattr(super(), hook)(*args, **kwargs)
        except Exception as e:
            if not self.best_effort:
                raise
            self._off = True
            log.warning("%s tracking failed in %s (%s): it is off for the rest of the sweep (tracking.best_effort)",
                        self.tool, hook, " ".join(str(e).split())[:300] or type(e).__name__)

    def setup(self, *args, **kwargs):
        self._safely("setup", *args, **kwargs)

    def on_trial_start(self, *args, **kwargs):
        self._safely("on_trial_start", *args, **kwargs)

    def on_trial_restore(self, *args, **kwargs):
        self._safely("on_trial_restore", *args, **kwargs)

    def on_trial_save(self, *args, **kwargs):
        self._safely("on_trial_save", *args, **kwargs)

    def on_trial_result(self, *args, **kwargs):
        self._safely("on_trial_result", *args, **kwargs)

    def on_trial_complete(self, *args, **kwargs):
        self._safely("on_trial_complete", *args, **kwargs)

    def on_trial_error(self, *args, **kwargs):
        self._safely("on_trial_error", *args, **kwargs)

    def on_experiment_end(self, *args, **kwargs):
        self._safely("on_experiment_end", *args, **kwargs)


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


class MlflowTrials(_BestEffort, MLflowLoggerCallback):
    """One MLflow run per trial: params (with include flags), per-iteration metrics, run files.

    Args:
        tracking_uri: the tracking server (credentials from MLflow's own env vars).
        experiment: the MLflow experiment (created if missing).
        tags: set on every run (``sweep``, ``sweep_folder``); ``trial_id`` is added.
        subsets: the searched subsets (key → items), for the include flags.
        best_effort: a failure switches MLflow off with a warning instead of failing the sweep.
    """

    tool = "MLflow"

    def __init__(self, tracking_uri: str, experiment: str, *, tags: dict[str, str], subsets: dict[str, list[str]],
                 best_effort: bool = False) -> None:
        super().__init__(tracking_uri, experiment_name=experiment, tags=tags)
        self.subsets, self.best_effort = subsets, best_effort

    def _client(self):
        return self.mlflow_util._get_client()

    def _existing_run(self, trial) -> str | None:
        """The run an earlier (interrupted) session of this sweep opened for the trial."""
        folder = str(self.tags.get("sweep_folder", ""))
        if "'" in folder or "'" in trial.trial_id:
            return None
        runs = self._client().search_runs(
            [self.mlflow_util.experiment_id], max_results=1,
            filter_string=f"tags.trial_id = '{trial.trial_id}' and tags.sweep_folder = '{folder}'")
        return runs[0].info.run_id if runs else None

    def log_trial_start(self, trial) -> None:
        from mlflow.entities import Param

        client = self._client()
        if trial not in self._trial_runs:
            run_id = self._existing_run(trial)
            if run_id:
                client.update_run(run_id, status="RUNNING")
            else:
                tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id}
                run_id = self.mlflow_util.start_run(tags=tags, run_name=str(trial)).info.run_id
            self._trial_runs[trial] = run_id
        params = [Param(mlflow_name(k), param_text(v)[:6000])
                  for k, v in trial_params(trial.config or {}, self.subsets).items()]
        for chunk in _chunks(params, _BATCH):
            client.log_batch(self._trial_runs[trial], params=chunk)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        from mlflow.entities import Metric, RunTag

        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        step, now = int(result.get("training_iteration") or 0), int(time.time() * 1000)
        metrics = [Metric(mlflow_name(k), v, now, step) for k, v in trial_metrics(result).items()]
        tags = [RunTag(k, str(result[k])[:8000]) for k in TAG_KEYS if isinstance(result.get(k), str)]
        for chunk in _chunks(metrics, 10 * _BATCH):
            self._client().log_batch(self._trial_runs[trial], metrics=chunk, tags=tags)
            tags = []

    def log_trial_end(self, trial, failed: bool = False) -> None:
        run_id = self._trial_runs.get(trial)
        if run_id is None:
            return
        files = trial_files(trial)
        if files:
            with tempfile.TemporaryDirectory(prefix="mtft-mlflow-") as tmp:
                for name, data in files.items():
                    Path(tmp, name).write_bytes(data)
                self._client().log_artifacts(run_id, tmp, artifact_path="run")
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if failed else "FINISHED")


class _FilesActor(_WandbLoggingActor):
    """Ray's W&B logging actor; a mapping on its checkpoint channel is the trial's run files
    (name → bytes), kept as W&B run files under ``run/``."""

    def run(self) -> None:
        try:
            super().run()
        finally:  # Ray kills this actor as soon as run returns: let W&B's service write the run out first
            self._wandb.teardown()

    def _handle_checkpoint(self, item) -> None:
        if not isinstance(item, dict):
            return super()._handle_checkpoint(item)
        try:
            run = self._wandb.run
            folder = Path(run.dir, "run")
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in item.items():
                (folder / name).write_bytes(data)
            run.save(str(folder / "*"), base_path=run.dir, policy="now")
        except Exception as e:  # noqa: BLE001 - the run's metrics still count without its files
            log.warning("W&B: could not save the run files of %s: %s", self._trial_name, e)
        return None


class WandbTrials(_BestEffort, WandbLoggerCallback):
    """One W&B run per trial: config (with include flags), per-iteration metrics, run files.

    Args:
        project, group: the W&B project and group (entity from ``WANDB_ENTITY`` or the login).
        mode: ``online`` or ``offline`` (no login needed; ``wandb sync`` the run folders later).
        subsets: the searched subsets (key → items), for the include flags.
        best_effort: a failure switches W&B off with a warning instead of failing the sweep.
        **kwargs: more ``wandb.init`` arguments (``dir``: where the ``wandb/`` run folders go).
    """

    tool = "W&B"
    _logger_actor_cls = _FilesActor

    def __init__(self, *, project: str, group: str, mode: str, subsets: dict[str, list[str]],
                 best_effort: bool = False, **kwargs: Any) -> None:
        super().__init__(project=project, group=group, mode=mode, upload_timeout=300, **kwargs)
        self.subsets, self.best_effort = subsets, best_effort

    def setup(self, *args, **kwargs) -> None:
        if self.kwargs.get("mode") != "offline":  # Ray's setup insists on an API key, offline needs none
            super().setup(*args, **kwargs)

    def _start_logging_actor(self, trial, exclude_results: list[str], **wandb_init_kwargs) -> None:
        if self._remote_logger_class is None:  # Ray's passes WANDB_API_KEY only: entity, host, ... too
            env = {k: v for k, v in os.environ.items() if k.startswith("WANDB_")}
            self._remote_logger_class = ray.remote(num_cpus=0, **_force_on_current_node(), max_restarts=-1,
                                                   max_task_retries=-1,
                                                   runtime_env={"env_vars": env})(self._logger_actor_cls)
        wandb_init_kwargs["config"] = trial_params(wandb_init_kwargs.get("config") or {}, self.subsets)
        super()._start_logging_actor(trial, exclude_results, **wandb_init_kwargs)

    def _cleanup_logging_actor(self, trial) -> None:
        try:  # Ray drops a logging actor's error silently: a lost W&B run is said once, here
            ray.get(self._trial_logging_futures[trial], timeout=0)
        except Exception as e:  # noqa: BLE001 - any failure of the actor, or its timeout
            log.warning("W&B run of trial %s did not finish: %s", trial, " ".join(str(e).split())[-300:])
        super()._cleanup_logging_actor(trial)

    def __del__(self) -> None:
        try:
            super().__del__()
        except Exception:  # noqa: BLE001 - at interpreter exit Ray's globals are gone, and its actors with it
            pass

    def log_trial_end(self, trial, failed: bool = False) -> None:
        if trial in self._trial_queues:
            files = trial_files(trial)
            if files:
                self._trial_queues[trial].put((_QueueItem.CHECKPOINT, files))
        super().log_trial_end(trial, failed)

