"""``finetune.lr: auto``: pick the learning rate by a short probe on validation.

Each of ``finetune.lr_candidates`` finetunes a fresh copy of the pretrained backbone for
``finetune.lr_probe_steps`` steps (the first steps of the run's own epoch 1: the same tasks, order
and seed), through the one worker function in this process, and is scored on the validation
episodes; the best rate (ties to the lower one) is used for the run. The probe is recorded in
``result.json`` (``lr_probe``). It costs ``len(lr_candidates) * lr_probe_steps`` steps and as many
validations, in the driver process also when the run itself trains on Ray Train workers.

Example:
    >>> probe = probe_lr(cfg, tasks, data, torch.device("cpu"))  # doctest: +SKIP
    >>> probe["chosen"], probe["candidates"]  # 3e-05, [{"lr": 1e-05, "val_acc": 0.61, ...}, ...]  # doctest: +SKIP
"""

from __future__ import annotations

import time

import torch

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.multitask import task_order
from mtft_ray.train.worker import WorkerData, finetune_local


def probe_lr(cfg: ExperimentConfig, tasks: TaskSet, data: WorkerData, device: torch.device, *,
             progress: bool = False) -> dict:
    """Score every candidate rate; returns ``{"chosen", "steps", "candidates": [{lr, val_acc, val_ci95}], "seconds"}``.

    Raises:
        MtftError: no validation classes to score the rates on.
    """
    ft = cfg.finetune
    if data.val is None:
        raise MtftError("finetune.lr is 'auto' but the split has no validation classes to score rates on: "
                        "set data.split.val_domains (or val_fraction), or give finetune.lr a number")
    t0 = time.perf_counter()
    n = min(len(tasks), ft.lr_probe_steps * ft.tasks_per_step)
    probe_tasks = tasks.subset(task_order(len(tasks), 1, ft.seed, ft.task_order)[:n])
    rows = []
    for lr in sorted(ft.lr_candidates):
        short = ft.model_copy(update={"lr": lr, "epochs": 1, "keep_pretrained": False, "val_every": None,
                                      "patience": None})
        run = finetune_local(cfg.model_copy(update={"finetune": short}), probe_tasks, data, device, progress=progress)
        last = run.history[-1]
        rows.append({"lr": lr, "val_acc": last.val_acc, "val_ci95": last.val_ci95, "train_acc": last.train_acc})
    best = max(rows, key=lambda r: (r["val_acc"], -r["lr"]))
    return {"chosen": best["lr"], "steps": len(probe_tasks) // ft.tasks_per_step, "candidates": rows,
            "seconds": round(time.perf_counter() - t0, 2)}


def with_lr(cfg: ExperimentConfig, lr: float) -> ExperimentConfig:
    """``cfg`` with ``finetune.lr`` set (the probe's choice)."""
    return cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"lr": lr})})
