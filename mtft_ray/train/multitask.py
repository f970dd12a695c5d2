"""Multitask finetuning (the paper's Algorithm 2) as a plain loop a Ray Train worker can run.

A fixed task set is revisited every epoch in a seeded order; each step encodes the support
and query samples of ``tasks_per_step`` tasks in one forward pass and minimises the prototype
loss. After each epoch the backbone is scored on validation episodes and the best epoch's
weights are kept.

Example:
    >>> best_state, history = finetune_multitask(model, tasks, images, cfg.finetune,
    ...                                          validate=lambda m: val.evaluate(m)[0]["acc"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from mtft_ray.config.schema import FinetuneConfig
from mtft_ray.evaluation.features import autocast
from mtft_ray.models.backbones import freeze_batchnorm_stats, normalization, to_input
from mtft_ray.progress import progress as progress_bar
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.loss import PrototypeHead

Validate = Callable[[nn.Module], float]


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float | None
    temperature: float | None
    steps: int
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        return {**asdict(self), "images_per_s": self.images_per_s}


def make_optimizer(params: list[dict], name: str, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def task_order(n_tasks: int, epoch: int, seed: int) -> np.ndarray:
    """The seeded order tasks are visited in during ``epoch`` (the same on every worker)."""
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


def finetune_multitask(model: nn.Module, tasks: TaskSet, images: torch.Tensor, cfg: FinetuneConfig, *,
                       validate: Validate | None = None, device: torch.device | str = "cpu",
                       progress: bool = False, on_epoch: Callable[[EpochStats], None] | None = None,
                       ) -> tuple[dict[str, torch.Tensor], list[EpochStats]]:
    """Finetune ``model`` in place on ``tasks``; return the best epoch's state dict and the history.

    Args:
        model: a timm feature extractor (``num_classes=0``).
        tasks: the fixed finetuning tasks (sample ids into ``images``).
        images: the store's uint8 images as a CPU tensor.
        validate: scores the model on validation episodes (higher is better); without it the
            last epoch is kept.
        on_epoch: called after every epoch with its stats (progress reporting, Ray reports).
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    model.to(device)
    head = PrototypeHead(cfg.init_temperature).to(device)
    mean, std = normalization(model)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr},
              {"params": list(head.parameters()), "lr": cfg.lr_temperature, "weight_decay": 0.0}]
    opt = make_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)

    history: list[EpochStats] = []
    best_acc, best_state = -math.inf, None
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if cfg.freeze_bn:
            freeze_batchnorm_stats(model)
        steps = shard_steps(task_order(len(tasks), epoch, cfg.seed), cfg.tasks_per_step)
        bar = progress_bar(steps, progress, desc=f"multitask epoch {epoch}/{cfg.epochs}", unit="step", leave=False)
        t0, losses, accs, n_images = time.perf_counter(), [], [], 0
        for step in bar:
            opt.zero_grad(set_to_none=True)
            ids = np.concatenate([tasks.episode_samples(i) for i in step])
            batch = images.index_select(0, torch.from_numpy(ids)).to(device, non_blocking=True)
            with autocast(device):
                feats = model(to_input(batch, mean, std))
            loss = 0.0
            for j in range(len(step)):
                l_j, a_j = head(feats[j * tasks.m : (j + 1) * tasks.m], tasks.n_way, tasks.n_shot, tasks.n_query)
                loss = loss + l_j / len(step)
                accs.append(a_j)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            n_images += len(ids)
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(accs[-20:]):.2f}", refresh=False)
        seconds = time.perf_counter() - t0
        val = validate(model) if validate else None
        stats = EpochStats(epoch, float(np.mean(losses)), float(np.mean(accs)), val, head.temperature.item(),
                           len(steps), n_images, seconds)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
        score = val if val is not None else epoch
        if score > best_acc:
            best_acc, best_state = score, copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return best_state, history
