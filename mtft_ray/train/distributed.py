"""Multitask finetuning on Ray Train workers (``TorchTrainer``, Train V2): the driver side.

:func:`preflight` checks the resume spec and the cluster's size before anything trains (the
caller has opened and probed the run's storage once: :func:`open_run_storage`);
:func:`finetune_distributed` launches the workers (:func:`mtft_ray.train.worker.train_fn_per_worker`)
with failure restarts and checkpoint retention by validation score, then loads the best
checkpoint back from storage. A run started again with the same storage and output name resumes
from its latest checkpoint.

Storage layout of a run (``storage.path/<out name>``, or the output folder)::

    train_spec.json        what a resume must match
    train/epoch_NNNN/      Ray Train checkpoints (see mtft_ray.train.checkpoint)
    result.json, ...       the run's results (copied by ``mtft-ray run``)

Example:
    >>> from mtft_ray.config import load_config
    >>> cfg = load_config("tiny.yaml", ["train.workers=2", "train.strategy=deepspeed"])  # doctest: +SKIP
    >>> storage = open_run_storage(cfg, "runs/tiny")                                        # doctest: +SKIP
    >>> preflight(cfg, storage)                                                             # doctest: +SKIP
    >>> run = finetune_distributed(cfg, tasks, storage)                                     # doctest: +SKIP
    >>> run.best_checkpoint, [h.val_acc for h in run.history]                               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mtft_ray.config.schema import ExperimentConfig, TrainConfig, resume_safe_fields
from mtft_ray.data.load import cache_root
from mtft_ray.errors import MtftError
from mtft_ray.ray_cluster import autoscaling_capacity, ensure_ray
from mtft_ray.storage import Storage, open_storage, probe_storage
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.checkpoint import TrainState
from mtft_ray.train.plan import batch_plan, worker_resources
from mtft_ray.train.worker import TrainRun, epoch_history, pretrained_state, train_fn_per_worker

log = logging.getLogger("mtft_ray")

RAY_RUN_NAME = "train"  # the Ray Train run's folder inside the run's storage folder


def run_storage(cfg: ExperimentConfig, out_dir: str | Path) -> Storage:
    """The run's storage folder: ``storage.path/<out dir name>``, or the output folder itself."""
    out = Path(out_dir).expanduser().resolve()
    if cfg.storage.path:
        base = open_storage(cfg.storage)
        return Storage(base.scheme, base.filesystem, base.path(out.name), base.endpoint)
    return open_storage(cfg.storage, default=out)


def open_run_storage(cfg: ExperimentConfig, out_dir: str | Path) -> Storage:
    """:func:`run_storage`, probed once (write + delete): unusable storage fails here, before any work."""
    storage = run_storage(cfg, out_dir)
    probe_storage(storage, cfg.storage)
    return storage


def training_spec(cfg: ExperimentConfig) -> dict:
    """What must not change when a run resumes from its checkpoints, and its hash: every training
    section less the fields the schema marks resume-safe (how it runs; epochs may grow)."""
    spec = cfg.model_dump(mode="json", include={"seed", "data", "backbone", "tasks", "finetune", "selection", "train"})
    for path in resume_safe_fields(ExperimentConfig):
        parent, leaf = path.rsplit(".", 1)
        node = spec
        for part in parent.split("."):
            node = node.get(part, {})
        node.pop(leaf, None)
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return {"hash": hashlib.sha256(blob.encode()).hexdigest()[:12], "spec": spec}


def check_cluster_fits(train: TrainConfig) -> None:
    """Fail now, rather than wait forever, when the cluster can never place every worker.

    An autoscaling cluster (a head that ``ray up`` launched) is not checked: its workers join
    when asked for, and Ray reports requests that no node type can ever hold as infeasible.

    Raises:
        MtftError: fewer worker slots than ``train.workers`` on the cluster's live nodes.
    """
    import ray  # heavy: only distributed runs get here

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


def preflight(cfg: ExperimentConfig, storage: Storage) -> None:
    """Everything that can fail before training, once the run's storage is open: resume spec, cluster size.

    Raises:
        MtftError: a run folder holding a run of another config, or a cluster too small for
            the workers.
    """
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


def finetune_distributed(cfg: ExperimentConfig, tasks: TaskSet, storage: Storage, callbacks: Sequence = ()) -> TrainRun:
    """Multitask finetuning of ``cfg.backbone`` on ``tasks`` with ``cfg.train.workers`` Ray Train workers.

    ``storage`` is the run's folder, opened and checked by :func:`preflight`. A run whose folder
    already holds checkpoints resumes from the latest one. ``callbacks`` go to Ray Train's ``RunConfig``.

    Raises:
        MtftError: a worker's MtftError, or a run that reported no checkpoint.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig  # heavy: Ray Train
    from ray.train.torch import TorchTrainer

    t0 = time.perf_counter()
    t = cfg.train
    worker_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"cache_dir": str(cache_root(cfg.data))})})
    trainer = TorchTrainer(  # the driver's store cache, wherever workers start
        train_fn_per_worker,
        train_loop_config={"cfg": worker_cfg, "tasks": tasks, "run_uri": storage.uri()},
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
    if state.best_epoch == 0:  # no finetuned epoch beat the pretrained weights (epoch 0, never checkpointed)
        best, weights = None, pretrained_state(cfg)
    else:
        best = result.get_best_checkpoint(metric="score", mode="max") or result.checkpoint
        weights = torch.load(io.BytesIO(_read(best, "model.pt")), map_location="cpu", weights_only=True)
    return TrainRun(weights, epoch_history(state), state, time.perf_counter() - t0,
                    best_checkpoint=_checkpoint_uri(best, storage) if best else "pretrained",
                    latest_checkpoint=_checkpoint_uri(result.checkpoint, storage), run_uri=storage.uri())
