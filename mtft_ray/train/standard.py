"""The standard-finetuning baseline: supervised cross-entropy over the pooled source classes.

Same images as multitask finetuning (every sample its tasks use) and the same budget (images
forwarded = M * m * epochs). A linear probe first (backbone frozen), then a full finetune;
validation and best-epoch selection as in multitask finetuning. The head is dropped after
training: evaluation is nearest centroid on the backbone's features, like every other method.

Example:
    >>> state, history = finetune_standard(model, tasks, store.labels, images, budget, cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mtft_ray.config.schema import FinetuneConfig, StandardConfig
from mtft_ray.evaluation.features import autocast
from mtft_ray.models.inputs import model_input, normalization
from mtft_ray.models.state import freeze_batchnorm_stats
from mtft_ray.progress import progress as progress_bar
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.checkpoint import epoch_score, improves
from mtft_ray.train.multitask import EpochStats, Validate, make_optimizer


def finetune_standard(model: nn.Module, tasks: TaskSet, labels: np.ndarray, images: torch.Tensor,
                      cfg: StandardConfig, ft: FinetuneConfig, *, validate: Validate | None = None,
                      device: torch.device | str = "cpu", progress: bool = False,
                      ) -> tuple[dict[str, torch.Tensor], list[EpochStats]]:
    """Train ``model`` + a linear head on the tasks' images; return the best state and history.

    Args:
        labels: class id of every store sample.
        cfg: the baseline's own settings (learning rates, batch size, probe share).
        ft: the multitask settings whose budget (epochs, optimizer, seed, BN policy) is matched.
    """
    device = torch.device(device)
    torch.manual_seed(ft.seed)
    sample_ids = tasks.all_samples()
    classes, y_all = np.unique(labels[sample_ids], return_inverse=True)
    model.to(device)
    head = nn.Linear(model.num_features, len(classes)).to(device)
    mean, std = normalization(model)
    budget = len(tasks) * tasks.m * ft.epochs
    total_steps = max(1, budget // cfg.batch_size)
    probe_steps = int(cfg.probe_fraction * total_steps)
    steps_per_epoch = math.ceil(total_steps / ft.epochs)

    probe_opt = make_optimizer([{"params": head.parameters(), "lr": cfg.head_lr}], ft.optimizer, cfg.head_lr,
                               ft.momentum, ft.weight_decay)
    full_opt = make_optimizer([{"params": model.parameters(), "lr": cfg.lr},
                               {"params": head.parameters(), "lr": cfg.lr}], ft.optimizer, cfg.lr, ft.momentum,
                              ft.weight_decay)
    rng = np.random.default_rng([ft.seed, 11])
    order = np.empty(0, np.int64)
    history: list[EpochStats] = []
    best_score, best_state = None, None
    if validate and ft.keep_pretrained:  # epoch 0: the pretrained weights are the first candidate
        t0 = time.perf_counter()
        val0 = validate(model)
        history.append(EpochStats(0, None, None, val0, None, 0, 0, time.perf_counter() - t0))
        best_score, best_state = epoch_score(0, val0), _cpu_copy(model)
    step = 0
    for epoch in range(1, ft.epochs + 1):
        model.train()
        if ft.freeze_bn:
            freeze_batchnorm_stats(model)
        n = min(steps_per_epoch, total_steps - step)
        bar = progress_bar(range(n), progress, desc=f"standard epoch {epoch}/{ft.epochs}", unit="step", leave=False)
        t0, losses, accs, n_images = time.perf_counter(), [], [], 0
        for _ in bar:
            if len(order) < cfg.batch_size:  # reshuffle the pooled images, seeded
                order = np.concatenate([order, rng.permutation(len(sample_ids))])
            idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
            batch = images.index_select(0, torch.from_numpy(sample_ids[idx])).to(device)
            y = torch.from_numpy(y_all[idx]).to(device)
            probing = step < probe_steps
            opt = probe_opt if probing else full_opt
            opt.zero_grad(set_to_none=True)
            with autocast(device), torch.set_grad_enabled(not probing):
                feats = model(model_input(batch, mean, std))
            logits = head(feats.float())
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            accs.append((logits.argmax(1) == y).float().mean().item())
            n_images += len(idx)
            step += 1
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", phase="probe" if probing else "full", refresh=False)
        val = validate(model) if validate else None
        stats = EpochStats(epoch, float(np.mean(losses)), float(np.mean(accs)), val, None, n, n_images,
                           time.perf_counter() - t0)
        history.append(stats)
        score = epoch_score(epoch, val)
        if improves(score, best_score):
            best_score, best_state = score, _cpu_copy(model)
    return best_state, history


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
