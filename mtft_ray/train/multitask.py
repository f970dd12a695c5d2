"""Multitask finetuning (the paper's Algorithm 2): one epoch of steps on one rank.

A fixed task set is revisited every epoch in a seeded order; each step encodes the support
and query samples of ``tasks_per_step`` tasks in one forward pass and minimises the prototype
loss. After each epoch the backbone is scored on validation episodes;
:mod:`mtft_ray.train.worker` runs the epochs, in this process or on Ray Train workers, and keeps
the best one.

With several workers every step takes ``tasks_per_step`` distinct tasks on each of them
(:func:`epoch_steps`), and :func:`run_epoch` scales the loss so the averaged gradient is the
single-process mean over the step's tasks.

Example:
    >>> strategy = TorchStrategy(net, make_optimizer(param_groups(net, cfg), "adamw", 1e-4, 0.9, 0.0))  # doctest: +SKIP
    >>> run_epoch(strategy, net, tasks, images, cfg, epoch=1, device=torch.device("cpu")).stats        # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from mtft_ray.config.schema import FinetuneConfig
from mtft_ray.evaluation.features import autocast
from mtft_ray.models.inputs import model_input, normalization
from mtft_ray.models.state import freeze_batchnorm_stats
from mtft_ray.progress import progress as progress_bar
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.augment import BatchAugment, StepAugment
from mtft_ray.train.collective import all_reduce_sum
from mtft_ray.train.loss import PrototypeHead
from mtft_ray.train.strategies import Strategy

Validate = Callable[[nn.Module], float]
Scored = tuple[float, float]  # validation accuracy and its 95% half-width


@dataclass
class EpochStats:
    """One validation period's summary: the steps since the last validation and the validation
    after them (a whole epoch unless ``finetune.val_every`` validates within epochs); epoch 0 is
    the pretrained model's validation (no training, no loss)."""

    epoch: int
    train_loss: float | None
    train_acc: float | None
    val_acc: float | None
    temperature: float | None
    steps: int
    images: int
    seconds: float
    val_ci95: float | None = None  # 95% half-width of val_acc over the validation episodes

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s}

    @classmethod
    def from_json(cls, doc: dict) -> EpochStats:
        """From :meth:`to_json`'s dict, or a history entry holding more keys."""
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


def make_optimizer(params: list[dict], name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def task_order(n_tasks: int, epoch: int, seed: int, order: str = "shuffled") -> np.ndarray:
    """The order tasks are visited in during ``epoch`` (the same on every worker): a seeded
    permutation per epoch (``"shuffled"``) or the task set's own order every epoch (``"fixed"``)."""
    if order == "fixed":
        return np.arange(n_tasks)
    return np.random.default_rng([seed, 7_000_003, epoch]).permutation(n_tasks)


def shard_steps(order: np.ndarray, tasks_per_step: int, world_size: int = 1, rank: int = 0) -> list[np.ndarray]:
    """Split an epoch's task order into global steps of ``tasks_per_step * world_size`` tasks and
    return this rank's share of each step, so M, m and the epoch budget mean the same at any scale.
    A short last step is dropped only where it could not give every rank a task."""
    per_step = tasks_per_step * world_size
    n_steps = math.ceil(len(order) / per_step)
    out = []
    for s in range(n_steps):
        step = order[s * per_step : (s + 1) * per_step]
        mine = step[rank::world_size]
        if len(step) >= world_size:
            out.append(mine)
    return out


@dataclass(frozen=True)
class Step:
    """One optimizer step as one rank sees it.

    Attributes:
        tasks: this rank's task indices (distinct from every other rank's).
        n_global: tasks in the whole step, over all ranks.
    """

    tasks: np.ndarray
    n_global: int


def epoch_steps(n_tasks: int, epoch: int, cfg: FinetuneConfig, world_size: int = 1, rank: int = 0) -> list[Step]:
    """This rank's steps of ``epoch``: :func:`shard_steps` plus each step's global task count."""
    order = task_order(n_tasks, epoch, cfg.seed, cfg.task_order)
    return [Step(g[rank::world_size], len(g))
            for g in shard_steps(order, cfg.tasks_per_step * world_size) if len(g) >= world_size]


class EpisodicModel(nn.Module):
    """The backbone and the prototype head as one module, so DDP and DeepSpeed see every parameter.

    ``forward`` encodes the samples of ``n_tasks`` episodes in one pass (bf16 autocast on GPU)
    and returns each task's loss (fp32 head) and accuracy.
    """

    def __init__(self, backbone: nn.Module, head: PrototypeHead) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor, n_tasks: int, n_way: int, n_shot: int, n_query: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(x.device):
            feats = self.backbone(x)
        m = n_way * (n_shot + n_query)
        losses, accs = [], []
        for j in range(n_tasks):
            l_j, a_j = self.head(feats[j * m : (j + 1) * m], n_way, n_shot, n_query)
            losses.append(l_j)
            accs.append(a_j)
        return torch.stack(losses), torch.tensor(accs, dtype=torch.float64)


def param_groups(net: EpisodicModel, cfg: FinetuneConfig) -> list[dict]:
    """The backbone at ``cfg.lr``; the temperature in its own group at ``cfg.lr_temperature``
    (``temperature_group: own``) or with the backbone's parameters (``backbone``)."""
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    if cfg.temperature_group == "backbone":
        return [{"params": backbone + list(net.head.parameters()), "lr": cfg.lr}]
    return [{"params": backbone, "lr": cfg.lr},
            {"params": list(net.head.parameters()), "lr": cfg.lr_temperature, "weight_decay": 0.0}]


@dataclass
class EpochResult:
    """What one epoch did, reduced over ranks.

    Attributes:
        stats: the epoch's summary (global images and steps, mean loss and accuracy).
        step_losses: the loss of every step: the mean over the step's tasks on all ranks.
    """

    stats: EpochStats
    step_losses: list[float]


def train_epoch(strategy: Strategy, net: EpisodicModel, tasks: TaskSet, images: torch.Tensor,
                steps: list[Step], *, device: torch.device, world_size: int = 1,
                before_step: Callable[[int], None] | None = None, first_step: int = 0,
                progress: bool = False, desc: str = "multitask",
                augment: StepAugment | None = None) -> tuple[list[float], float, int, float]:
    """Run ``steps`` through ``strategy``; returns (step losses, mean task accuracy, images, seconds).

    Each rank's loss is ``world_size / n_global * sum(its task losses)``: DDP and DeepSpeed
    average gradients over ranks, so the update is the gradient of the mean loss over all the
    step's tasks, exactly as one process taking every task would compute it.

    The model must already be in training mode (BatchNorm statistics frozen or not).

    Args:
        before_step: called with the 1-based global step number before each step (test hook).
        first_step: global steps done before this epoch.
        augment: called with each step's device batch and its 1-based global step number; returns
            the batch to train on (:meth:`~mtft_ray.train.augment.BatchAugment.for_epoch`). None: as stored.
    """
    mean, std = normalization(net.backbone)
    bar = progress_bar(steps, progress, desc=desc, unit="step", leave=False)
    t0, local_losses, acc_sum, n_acc, n_images = time.perf_counter(), [], 0.0, 0, 0
    for k, step in enumerate(bar):
        if before_step:
            before_step(first_step + k + 1)
        strategy.zero_grad()
        ids = np.concatenate([tasks.episode_samples(i) for i in step.tasks])
        batch = images.index_select(0, torch.from_numpy(ids)).to(device, non_blocking=True)
        if augment is not None:
            batch = augment(batch, first_step + k + 1)
        losses, accs = strategy.module(model_input(batch, mean, std), len(step.tasks), tasks.n_way, tasks.n_shot,
                                       tasks.n_query)
        loss = 0.0
        for l_j in losses:
            loss = loss + l_j / step.n_global
        if world_size > 1:
            loss = loss * world_size
        strategy.backward(loss)
        strategy.step()
        local_losses.append(loss.item())
        acc_sum, n_acc, n_images = acc_sum + float(accs.sum()), n_acc + len(accs), n_images + len(ids)
        bar.set_postfix(loss=f"{np.mean(local_losses[-20:]):.3f}", acc=f"{acc_sum / n_acc:.2f}", refresh=False)
    seconds = time.perf_counter() - t0
    totals = all_reduce_sum(np.array([*local_losses, acc_sum, n_acc, n_images, seconds]))
    step_losses = (totals[: len(steps)] / world_size).tolist()
    acc, images_total = totals[-4] / max(totals[-3], 1), int(totals[-2])
    return step_losses, float(acc), images_total, float(totals[-1] / world_size)


def run_epoch(strategy: Strategy, net: EpisodicModel, tasks: TaskSet, images: torch.Tensor, cfg: FinetuneConfig,
              epoch: int, *, device: torch.device, world_size: int = 1, rank: int = 0,
              validate: Callable[[], Scored] | None = None, before_step: Callable[[int], None] | None = None,
              first_step: int = 0, progress: bool = False, span: tuple[int, int] | None = None) -> EpochResult:
    """One epoch of multitask finetuning on this rank (or the steps ``span`` of it), then
    validation; stats reduced over ranks.

    Args:
        validate: scores the current model: (accuracy, 95% half-width); every rank calls it and
            it must return the same value on all of them.
        before_step: called with the 1-based global step number before each step.
        first_step: global steps done before these steps.
        span: run only the epoch's steps ``[start, stop)`` (validation within an epoch).
    """
    steps = epoch_steps(len(tasks), epoch, cfg, world_size, rank)
    if span is not None:
        steps = steps[span[0] : span[1]]
    strategy.module.train()
    if cfg.freeze_bn:
        freeze_batchnorm_stats(net.backbone)
    step_losses, acc, n_images, seconds = train_epoch(
        strategy, net, tasks, images, steps, device=device, world_size=world_size, before_step=before_step,
        first_step=first_step, progress=progress, desc=f"multitask epoch {epoch}/{cfg.epochs}",
        augment=BatchAugment(cfg.augment, cfg.seed).for_epoch(epoch, rank))
    val, ci = validate() if validate else (None, None)
    temperature = strategy.full_state_dict(net.head)["temperature"].item()
    stats = EpochStats(epoch, float(np.mean(step_losses)), acc, val, temperature, len(steps), n_images, seconds, ci)
    return EpochResult(stats, step_losses)
