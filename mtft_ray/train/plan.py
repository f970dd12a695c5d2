"""The batch arithmetic and resources of a run, computed (never typed by hand) and printed by ``--dry-run``.

Example:
    >>> from mtft_ray.config.schema import ExperimentConfig
    >>> cfg = ExperimentConfig.model_validate({"tasks": {"M": 10}, "finetune": {"tasks_per_step": 2, "epochs": 3},
    ...                                        "train": {"workers": 2}})
    >>> p = batch_plan(cfg)
    >>> p.tasks_per_step, p.steps_per_epoch, p.total_steps
    (4, 3, 9)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from mtft_ray.config.schema import ExperimentConfig, TrainConfig
from mtft_ray.train.multitask import shard_steps
from mtft_ray.train.strategies import deepspeed_config


def worker_resources(train: TrainConfig) -> dict[str, float]:
    """What one Ray Train worker reserves: CPUs, a GPU with ``use_gpu``, and any custom resources."""
    res = {"CPU": float(train.cpus_per_worker), **{k: float(v) for k, v in train.resources_per_worker.items()}}
    if train.use_gpu:
        res["GPU"] = float(train.gpus_per_worker if train.gpus_per_worker is not None else 1)
    return {k: v for k, v in res.items() if v > 0}


@dataclass(frozen=True)
class BatchPlan:
    """How M tasks of m samples become optimizer steps at a given scale.

    Attributes:
        workers: data-parallel ranks (1 for the one-process path).
        tasks_per_worker: tasks each rank encodes per step (``finetune.tasks_per_step``).
        tasks_per_step: tasks per optimizer step over all ranks.
        steps_per_epoch: optimizer steps per epoch (the same function the loop uses).
        images_per_step: samples forwarded per optimizer step over all ranks.
        train_batch_size: DeepSpeed's ``train_batch_size`` in tasks (``None`` for ddp).
    """

    M: int
    m: int
    epochs: int
    workers: int
    tasks_per_worker: int
    tasks_per_step: int
    steps_per_epoch: int
    total_steps: int
    images_per_step: int
    images_per_epoch: int
    strategy: str
    zero_stage: int | None
    micro_batch: int | None
    grad_accum: int | None
    train_batch_size: int | None
    resources_per_worker: dict[str, float]
    total_resources: dict[str, float]

    def to_json(self) -> dict:
        return asdict(self)


def batch_plan(cfg: ExperimentConfig, M: int | None = None) -> BatchPlan:
    """The plan of ``cfg`` (``M`` defaults to ``cfg.tasks.M``; a task-level selection may choose fewer)."""
    M = cfg.tasks.M if M is None else M
    t, ft = cfg.train, cfg.finetune
    W = max(t.workers, 1)
    steps = [s for s in shard_steps(np.arange(M), ft.tasks_per_step * W) if len(s) >= W]
    ds = None
    if t.strategy == "deepspeed" and t.workers:
        ds = deepspeed_config(t.deepspeed, tasks_per_step=ft.tasks_per_step, world_size=W, use_gpu=t.use_gpu)
    per_worker = worker_resources(t) if t.workers else {}
    m = cfg.tasks.m
    return BatchPlan(
        M=M, m=m, epochs=ft.epochs, workers=W, tasks_per_worker=ft.tasks_per_step,
        tasks_per_step=ft.tasks_per_step * W, steps_per_epoch=len(steps), total_steps=len(steps) * ft.epochs,
        images_per_step=ft.tasks_per_step * W * m, images_per_epoch=sum(len(s) for s in steps) * m,
        strategy=t.strategy, zero_stage=t.deepspeed.zero_stage if ds else None,
        micro_batch=ds["train_micro_batch_size_per_gpu"] if ds else None,
        grad_accum=ds["gradient_accumulation_steps"] if ds else None,
        train_batch_size=ds["train_batch_size"] if ds else None,
        resources_per_worker=per_worker, total_resources={k: v * t.workers for k, v in per_worker.items()})


def format_plan(p: BatchPlan) -> str:
    """The plan as a few human-readable lines."""
    where = (f"{p.workers} Ray Train worker(s), {p.resources_per_worker} each, {p.total_resources} in all"
             if p.resources_per_worker else "this process (train.workers=0)")
    lines = [
        f"resources: {where}",
        f"tasks:     M={p.M} tasks x m={p.m} samples (M*m={p.M * p.m}), {p.epochs} epoch(s)",
        f"steps:     {p.tasks_per_worker} task(s) per worker x {p.workers} worker(s) = {p.tasks_per_step} tasks "
        f"({p.images_per_step} images) per step; {p.steps_per_epoch} steps per epoch, {p.total_steps} in all",
    ]
    skipped = p.M - p.images_per_epoch // p.m
    if skipped:
        lines.append(f"note:      {skipped} of {p.M} tasks per epoch fall in a last step with fewer tasks than workers "
                     f"and are skipped (a different {skipped} each epoch)")
    if p.strategy == "deepspeed":
        lines.append(f"deepspeed: ZeRO stage {p.zero_stage}; train_batch_size = micro batch {p.micro_batch} x "
                     f"grad accum {p.grad_accum} x world size {p.workers} = {p.train_batch_size} tasks")
    elif p.resources_per_worker:
        lines.append(f"strategy:  {p.strategy}" + (" (gradients averaged over workers)" if p.workers > 1 else ""))
    else:
        lines.append("strategy:  one process, plain torch optimizer (train.strategy applies to workers)")
    return "\n".join(lines)
