"""Benchmark of multitask finetuning speed on this machine: the measurement behind a calibration.

:func:`bench_train` times real multitask finetuning steps (:func:`~mtft_ray.train.multitask.train_epoch`
itself, on a synthetic :class:`~mtft_ray.tasks.pool.TaskSet` over random uint8 images of the
configured shape: no data set needed) for the configured backbone, image size, task shape and
tasks per step, in this process. In the same run it times a baseline: the pure forward and
backward pass of the same backbone on a batch of the same size already on the device (no
gather, normalisation, loss head or optimizer step). ``ratio = images_per_s / baseline`` is the
loop's share of the backbone's own speed; ratios hold on a noisy machine where absolute
figures do not. The two are timed in interleaved rounds, so load changes hit both.

Example:
    >>> from mtft_ray.config.schema import ExperimentConfig
    >>> cfg = ExperimentConfig.model_validate({"backbone": {"weights": "none"}, "data": {"image_size": 32},
    ...                                        "tasks": {"n_way": 2, "n_shot": 1, "n_query": 1}})
    >>> r = bench_train(cfg, steps=2, warmup=1)
    >>> r["calibration"]["images_per_s"] > 0, r["calibration"]["machine_kind"] == machine_kind()
    (True, True)

From a shell: ``mtft-ray bench train [CONFIG] [key=value ...] [--steps 30] [--save]``.
"""

from __future__ import annotations

import os
import resource
import time
from datetime import datetime, timezone

import numpy as np
import torch

import mtft_ray
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.evaluation.features import autocast
from mtft_ray.models.backbones import build_backbone
from mtft_ray.models.inputs import normalization, to_input
from mtft_ray.models.state import freeze_batchnorm_stats
from mtft_ray.tasks.pool import TaskSet
from mtft_ray.train.calibration import Calibration, machine_kind, save_calibration
from mtft_ray.train.loss import PrototypeHead
from mtft_ray.train.multitask import EpisodicModel, Step, make_optimizer, param_groups, train_epoch
from mtft_ray.train.strategies import TorchStrategy

__all__ = ["bench_train"]

ROUNDS = 3  # interleaved (loop, baseline) timing rounds


def _device(cfg: ExperimentConfig) -> torch.device:
    """``cfg.run.device`` resolved as :func:`mtft_ray.experiment.resolve_device` does (not imported: upward)."""
    if cfg.run.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.run.device == "cuda" and not torch.cuda.is_available():
        raise MtftError("run.device is 'cuda' but no CUDA GPU is visible")
    return torch.device(cfg.run.device)


def synthetic_tasks(n_tasks: int, n_way: int, n_shot: int, n_query: int) -> TaskSet:
    """``n_tasks`` episodes over disjoint sample ids ``0 .. n_tasks * m - 1`` (task ``i`` owns the i-th block)."""
    ids = np.arange(n_tasks * n_way * (n_shot + n_query), dtype=np.int64).reshape(n_tasks, n_way, n_shot + n_query)
    return TaskSet(support=ids[:, :, :n_shot].copy(), query=ids[:, :, n_shot:].copy(),
                   classes=np.tile(np.arange(n_way, dtype=np.int64), (n_tasks, 1)),
                   domains=np.full(n_tasks, -1, np.int64), ids=np.arange(n_tasks, dtype=np.int64))


def _chunks(items: list, n: int) -> list[list]:
    k = -(-len(items) // n)
    return [items[i : i + k] for i in range(0, len(items), k)]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(cfg: ExperimentConfig, steps: int = 20, warmup: int = 3, *, rgb: bool | None = None,
                save: bool = False, directory: str | None = None) -> dict:
    """Images per second of multitask finetuning steps for ``cfg`` on this machine, and a baseline.

    Builds ``cfg.backbone`` (its configured weights), the prototype head, the configured
    optimizer and a one-process :class:`TorchStrategy`, as one-process finetuning does, and
    runs ``warmup`` untimed and ``steps`` timed steps of :func:`train_epoch` with
    ``cfg.finetune.tasks_per_step`` tasks of ``cfg.tasks``' shape per step. bf16 autocast is on
    with CUDA (``cfg.run.device``), as in training.

    Args:
        steps: timed optimizer steps (and as many baseline passes).
        warmup: untimed steps (and baseline passes) first: allocator, cuDNN, first-call costs.
        rgb: RGB ``(H, W, 3)`` images; ``None``: grayscale for the ``glyphs`` source, else RGB.
        save: also store the calibration with :func:`save_calibration`.
        directory: where to save (default :func:`~mtft_ray.train.calibration.calibration_dir`).

    Returns:
        ``{"calibration": Calibration.to_json(), "baseline": {...}}``; the baseline holds its
        ``images_per_s``, ``ratio`` (loop / baseline) and the batch and machine measured, and
        ``"saved_to"`` is added with ``save``.
    """
    if steps < 1 or warmup < 0:
        raise MtftError(f"bench train needs steps >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = _device(cfg)
    ft, tc, size = cfg.finetune, cfg.tasks, cfg.data.image_size
    if ft.lr == "auto":  # the rate does not change the speed
        ft = ft.model_copy(update={"lr": ft.lr_candidates[0]})
    rgb = cfg.data.source != "glyphs" if rgb is None else rgb
    torch.manual_seed(ft.seed)
    load_before = os.getloadavg()[0]

    backbone = build_backbone(cfg.backbone).to(device)
    net = EpisodicModel(backbone, PrototypeHead(ft.init_temperature)).to(device)
    strategy = TorchStrategy(net, make_optimizer(param_groups(net, ft), ft.optimizer, ft.lr, ft.momentum,
                                                 ft.weight_decay))
    net.train()
    if ft.freeze_bn:
        freeze_batchnorm_stats(backbone)

    n_tasks = (warmup + steps) * ft.tasks_per_step
    tasks = synthetic_tasks(n_tasks, tc.n_way, tc.n_shot, tc.n_query)
    shape = (n_tasks * tasks.m, size, size, 3) if rgb else (n_tasks * tasks.m, size, size)
    images = torch.from_numpy(np.random.default_rng(ft.seed).integers(0, 256, shape, dtype=np.uint8))
    plan = [Step(np.arange(s * ft.tasks_per_step, (s + 1) * ft.tasks_per_step), ft.tasks_per_step)
            for s in range(warmup + steps)]
    batch_images = ft.tasks_per_step * tasks.m
    mean, std = normalization(backbone)
    x = to_input(torch.from_numpy(np.random.default_rng(ft.seed + 1).integers(0, 256, (batch_images, *shape[1:]),
                                                                                dtype=np.uint8)).to(device), mean, std)

    def baseline(n: int) -> float:
        """Seconds of ``n`` forward+backward passes of the backbone alone on ``x``."""
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            backbone.zero_grad(set_to_none=True)
            with autocast(device):
                out = backbone(x)
            out.float().sum().backward()
        _sync(device)
        return time.perf_counter() - t0

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if warmup:
        train_epoch(strategy, net, tasks, images, plan[:warmup], device=device)
        baseline(warmup)
    loop_s = loop_images = base_s = 0.0
    rounds = _chunks(plan[warmup:], ROUNDS)
    for chunk in rounds:
        _, _, n_img, seconds = train_epoch(strategy, net, tasks, images, chunk, device=device)
        loop_s, loop_images = loop_s + seconds, loop_images + n_img
        base_s += baseline(len(chunk))

    rate, base_rate = loop_images / loop_s, steps * batch_images / base_s
    cal = Calibration(
        machine_kind=machine_kind(device), backbone=cfg.backbone.name, image_size=size,
        precision="bf16" if device.type == "cuda" else "fp32", strategy=strategy.name, workers=0,
        images_per_s=round(rate, 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # KiB on Linux
        peak_gpu_mb=round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        steps=steps, measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        mtft_ray_version=mtft_ray.__version__, torch_version=torch.__version__)
    report = {"calibration": cal.to_json(), "baseline": {
        "images_per_s": round(base_rate, 2), "ratio": round(rate / base_rate, 3), "loop_s": round(loop_s, 3),
        "baseline_s": round(base_s, 3), "steps": steps, "warmup": warmup, "rounds": len(rounds),
        "images_per_step": batch_images, "tasks_per_step": ft.tasks_per_step,
        "task_shape": f"{tc.n_way}-way {tc.n_shot}+{tc.n_query}", "input": list(shape[1:]),
        "weights": cfg.backbone.weights, "device": str(device), "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}}
    if save:
        report["saved_to"] = str(save_calibration(cal, directory))
    return report
