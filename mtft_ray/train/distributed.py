"""Multitask finetuning on Ray Train workers (``TorchTrainer``, Train V2): the driver side.

:func:`preflight` checks storage (write+delete probe), the resume spec and the cluster's size
before anything trains; :func:`finetune_distributed` launches the workers
(:func:`mtft_ray.train.worker.train_fn_per_worker`) with failure restarts and checkpoint
retention by validation score, then loads the best checkpoint back from storage. A run started
again with the same storage and output name resumes from its latest checkpoint.

Storage layout of a run (``storage.path/<out name>``, or the output folder)::

    train_spec.json        what a resume must match
    train/epoch_NNNN/      Ray Train checkpoints (see mtft_ray.train.checkpoint)
    result.json, ...       the run's results (copied by ``mtft-ray run``)

Example:
    >>> from mtft_ray.config import load_config
    >>> cfg = load_config("tiny.yaml", ["train.workers=2", "train.strategy=deepspeed"])  # doctest: +SKIP
    >>> storage = preflight(cfg, "runs/tiny")                                               # doctest: +SKIP
    >>> run = finetune_distributed(cfg, tasks, "runs/tiny")                                 # doctest: +SKIP
    >>> run.best_checkpoint, [h.val_acc for h in run.history]                               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtft_ray.config.schema import ExperimentConfig, TrainConfig
from mtft_ray.data.load import cache_root
from mtft_ray.errors import MtftError
from mtft_ray.storage import Storage, open_storage, probe_storage
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.checkpoint import TrainState
from mtft_ray.train.multitask import EpochStats
from mtft_ray.train.plan import batch_plan, worker_resources
from mtft_ray.train.worker import train_fn_per_worker

log = logging.getLogger("mtft_ray")

RAY_RUN_NAME = "train"  # the Ray Train run's folder inside the run's storage folder


def run_storage(cfg: ExperimentConfig, out_dir: str | Path) -> Storage:
    """The run's storage folder: ``storage.path/<out dir name>``, or the output folder itself."""
    out = Path(out_dir).expanduser().resolve()
    if cfg.storage.path:
        base = open_storage(cfg.storage)
        return Storage(base.scheme, base.filesystem, base.path(out.name), base.endpoint)
    return open_storage(cfg.storage, default=out)


def training_spec(cfg: ExperimentConfig) -> dict:
    """What must not change when a run resumes from its checkpoints (epochs may grow), and its hash."""
    spec = cfg.model_dump(mode="json", include={"seed", "data", "backbone", "tasks", "finetune", "selection", "train"})
    spec["finetune"].pop("epochs")
    spec["data"].pop("cache_dir")
    for k in ("max_failures", "checkpoints_to_keep", "fail_at_step", "cpus_per_worker", "gpus_per_worker",
              "resources_per_worker", "torch_threads"):  # how it runs, not what it computes
        spec["train"].pop(k)
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return {"hash": hashlib.sha256(blob.encode()).hexdigest()[:12], "spec": spec}


_DASHBOARD_URL: str | None = None


def ensure_ray(resources: dict[str, float] | None = None) -> str | None:
    """Connect to the Ray cluster (``$RAY_ADDRESS``) or start a local one, once per process.

    ``resources`` are the custom resources a local cluster declares (ignored when connecting to
    an existing cluster). The CLI makes a local cluster loopback-only and dashboard-free (see
    ``cli.main.local_ray_env``). Returns the cluster's dashboard URL, when it has one.
    """
    global _DASHBOARD_URL
    import ray

    if ray.is_initialized():
        return _DASHBOARD_URL
    kwargs: dict = {"logging_level": logging.WARNING}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs.update(resources=resources or {}, include_dashboard=False)
    ctx = ray.init(**kwargs)
    url = getattr(ctx, "dashboard_url", None)
    _DASHBOARD_URL = (url if "://" in url else f"http://{url}") if url else None
    return _DASHBOARD_URL


def check_cluster_fits(train: TrainConfig) -> None:
    """Fail now, rather than wait forever, when the cluster can never place every worker.

    An autoscaling cluster (a head that ``ray up`` launched) is not checked: its workers join
    when asked for, and Ray reports requests that no node type can ever hold as infeasible.

    Raises:
        MtftError: fewer worker slots than ``train.workers`` on the cluster's live nodes.
    """
    import ray

    from mtft_ray.cluster.check import autoscaling_capacity

    if autoscaling_capacity() is not None:
        return

    need = worker_resources(train)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    slots = 0
    for res in nodes:
        per_node = [math.floor(res.get(k, 0.0) / v + 1e-9) for k, v in need.items()]
        slots += min(per_node) if per_node else train.workers
    if slots < train.workers:
        have = {k: v for k, v in ray.cluster_resources().items() if k in need}
        raise MtftError(f"{train.workers} workers with {need} each do not fit the Ray cluster ({have} in "
                        f"{len(nodes)} node(s), room for {slots} worker(s)): lower --workers / train.workers or "
                        f"the resources per worker")


def preflight(cfg: ExperimentConfig, out_dir: str | Path) -> Storage:
    """Everything that can fail before training: storage (write+delete probe), resume spec, cluster size.

    Raises:
        MtftError: unusable storage, a run folder holding a run of another config, or a
            cluster too small for the workers.
    """
    storage = run_storage(cfg, out_dir)
    probe_storage(storage, cfg.storage)
    spec = training_spec(cfg)
    exists = storage.exists("train_spec.json")
    if exists:
        old = json.loads(storage.read_bytes("train_spec.json"))
        if old.get("hash") != spec["hash"]:
            raise MtftError(f"{storage.uri()} holds a run of another training config (hash {old.get('hash')}, now "
                            f"{spec['hash']}); resuming it would mix the two: use another --out or delete it")
    ensure_ray()
    check_cluster_fits(cfg.train)
    if not exists:  # only once the run can start, so a refused run leaves no claim on the folder
        storage.write_bytes(json.dumps(spec, indent=2).encode(), "train_spec.json")
    return storage


@dataclass
class DistributedRun:
    """What the driver gets back from a distributed finetune.

    Attributes:
        best_state: the best epoch's backbone weights, loaded from storage.
        history: per-epoch stats (reduced over workers).
        best_checkpoint: address of the best checkpoint (``s3://...`` or a path).
        latest_checkpoint: address of the last checkpoint.
        run_uri: the run's storage folder.
        state: the loop state in the last checkpoint (global step, resumes, every step's loss).
        seconds: wall time of the driver call, worker start-up included.
    """

    best_state: dict[str, torch.Tensor]
    history: list[EpochStats]
    best_checkpoint: str
    latest_checkpoint: str
    run_uri: str
    state: TrainState
    seconds: float

    def summary(self) -> dict:
        return {"run": self.run_uri, "best_checkpoint": self.best_checkpoint,
                "latest_checkpoint": self.latest_checkpoint, "seconds": round(self.seconds, 2),
                **self.state.to_json()}


def _checkpoint_uri(ckpt: Any, storage: Storage) -> str:
    return f"s3://{ckpt.path}" if storage.scheme == "s3" else ckpt.path


def _read(ckpt: Any, name: str) -> bytes:
    with ckpt.filesystem.open_input_stream(f"{ckpt.path}/{name}") as f:
        return f.read()


def _mtft_error_in(e: BaseException) -> MtftError | None:
    """The MtftError a worker raised, found through Ray's wrappers."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, MtftError):
            return x
        todo += [getattr(x, "cause", None), x.__cause__, x.__context__,
                 *getattr(x, "worker_failures", {}).values()]
    return None


def finetune_distributed(cfg: ExperimentConfig, tasks: TaskSet, out_dir: str | Path,
                         callbacks: Sequence = ()) -> DistributedRun:
    """Multitask finetuning of ``cfg.backbone`` on ``tasks`` with ``cfg.train.workers`` Ray Train workers.

    Runs :func:`preflight` first (cheap when already done). A run whose storage folder already
    holds checkpoints resumes from the latest one. ``callbacks`` go to Ray Train's ``RunConfig``.

    Raises:
        MtftError: bad storage or cluster (before training), or a worker's MtftError.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    storage = preflight(cfg, out_dir)
    t = cfg.train
    worker_cfg = cfg.model_copy(deep=True)
    worker_cfg.data.cache_dir = str(cache_root(cfg.data))  # the driver's store cache, wherever workers start
    trainer = TorchTrainer(
        train_fn_per_worker,
        train_loop_config={"cfg": worker_cfg.model_dump(mode="json"), "tasks": tasks, "run_uri": storage.uri()},
        scaling_config=ScalingConfig(num_workers=t.workers, use_gpu=t.use_gpu,
                                     resources_per_worker=worker_resources(t)),
        run_config=RunConfig(
            name=RAY_RUN_NAME, storage_path=storage.root, storage_filesystem=storage.filesystem,
            failure_config=FailureConfig(max_failures=t.max_failures), callbacks=list(callbacks),
            checkpoint_config=CheckpointConfig(num_to_keep=t.checkpoints_to_keep, checkpoint_score_attribute="score",
                                               checkpoint_score_order="max")),
    )
    log.info("distributed finetune: %s", batch_plan(cfg, len(tasks)).to_json())
    try:
        result = trainer.fit()
    except Exception as e:  # TrainingFailedError wraps the workers' exceptions
        inner = _mtft_error_in(e)
        if inner is not None:
            raise MtftError(str(inner)) from None
        raise
    if result.checkpoint is None:
        raise MtftError(f"the distributed run in {storage.uri()} reported no checkpoint")
    state = TrainState.from_json(json.loads(_read(result.checkpoint, "state.json")))
    best = next((c for c, m in result.best_checkpoints or [] if m.get("epoch") == state.best_epoch), result.checkpoint)
    weights = torch.load(io.BytesIO(_read(best, "model.pt")), map_location="cpu", weights_only=True)
    fields = set(EpochStats.__dataclass_fields__)
    history = [EpochStats(**{k: v for k, v in h.items() if k in fields}) for h in state.history]
    return DistributedRun(weights, history, _checkpoint_uri(best, storage), _checkpoint_uri(result.checkpoint, storage),
                          storage.uri(), state, time.perf_counter() - t0)
