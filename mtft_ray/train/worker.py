"""The Ray Train worker function: one rank's whole multitask finetune, checkpointed every epoch.

Each worker loads the data store from the driver's cache, builds the backbone and its strategy
(DDP or DeepSpeed), resumes from ``ray.train.get_checkpoint()`` when there is one, takes its own
share of the tasks of every step, validates with the embedding split over ranks, and reports
metrics and a checkpoint (every rank's part, merged by Ray in storage) after every epoch.

Example:
    >>> from ray.train.torch import TorchTrainer                                          # doctest: +SKIP
    >>> TorchTrainer(train_fn_per_worker, train_loop_config={"cfg": cfg.model_dump(mode="json"),
    ...              "tasks": tasks, "run_uri": "s3://bucket/runs/tiny"}, ...).fit()      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.data.load import load_store
from mtft_ray.data.splits import split_classes
from mtft_ray.data.store import SampleStore
from mtft_ray.evaluation.evaluate import EpisodeEvaluator, validation_evaluator
from mtft_ray.evaluation.features import embed
from mtft_ray.models.backbones import create_backbone
from mtft_ray.storage import open_storage
from mtft_ray.tasks.pool import TaskSet, write_manifest
from mtft_ray.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from mtft_ray.train.collective import all_gather_rows
from mtft_ray.train.loss import PrototypeHead
from mtft_ray.train.multitask import EpisodicModel, make_optimizer, param_groups, run_epoch
from mtft_ray.train.strategies import build_strategy

Report = Callable[[dict, Path, int], None]



def sharded_validate(val: EpisodeEvaluator, backbone: nn.Module, images: torch.Tensor, *, device: torch.device,
                     batch_size: int, rank: int, world_size: int) -> float:
    """Validation accuracy with the embedding split over ranks (equal shares, so ZeRO-3 ranks stay
    in step); every rank gets the same value."""
    ids = val.sample_ids
    per = math.ceil(len(ids) / world_size)
    mine = ids[rank * per : (rank + 1) * per]
    mine = np.concatenate([mine, np.repeat(ids[:1], per - len(mine))])  # pad the last share
    feats = all_gather_rows(embed(backbone, images, mine, batch_size, device))[: len(ids)]
    return val.evaluate_features(feats)[0]["acc"]


def _fail_hook(cfg: ExperimentConfig, run_uri: str, rank: int) -> Callable[[int], None] | None:
    """``train.fail_at_step``: rank 0 raises once at that global step (a marker in storage says "done")."""
    at = cfg.train.fail_at_step
    if at is None or rank != 0:
        return None
    storage = open_storage(cfg.storage.model_copy(update={"path": run_uri}))
    marker = ("fail_hook", f"step{at}.done")

    def hook(step: int) -> None:
        if step == at and not storage.exists(*marker):
            storage.write_bytes(b"failed here once\n", *marker)
            raise RuntimeError(f"train.fail_at_step={at}: failing once at global step {at} (test hook)")

    return hook


def run_worker(cfg: ExperimentConfig, tasks: TaskSet, *, rank: int, world_size: int, device: torch.device,
               resume: Callable[[], AbstractContextManager[str]] | None, report: Report, run_uri: str | None = None
               ) -> TrainState:
    """One worker's whole training: build, resume, train every remaining epoch, checkpoint each.

    Independent of Ray: :func:`train_fn_per_worker` supplies Ray's checkpoint and report; tests
    may drive it from ``torch.multiprocessing``.

    Args:
        resume: opens a local copy of the checkpoint to resume from (``checkpoint.as_directory``),
            or None to start afresh.
        report: ``report(metrics, checkpoint_dir, epoch)``, called by every rank after every epoch.
        run_uri: the run's storage folder (for the failure test hook).
    """
    t, ft = cfg.train, cfg.finetune
    torch.set_num_threads(t.torch_threads or max(1, int(t.cpus_per_worker)))
    store = load_store(cfg.data, seed=cfg.seed)
    images = torch.from_numpy(store.images)
    val = validation_evaluator(cfg, store, split_classes(store, cfg.data.split).val, device=device)
    torch.manual_seed(ft.seed)
    b = cfg.backbone
    backbone = create_backbone(b.name, b.weights, b.weights_path)
    net = EpisodicModel(backbone, PrototypeHead(ft.init_temperature)).to(device)
    opt = make_optimizer(param_groups(net, ft), ft.optimizer, ft.lr, ft.momentum, ft.weight_decay)
    strategy = build_strategy(t.strategy, net, opt, world_size=world_size, device=device, ds=t.deepspeed,
                              tasks_per_step=ft.tasks_per_step)
    state = TrainState(world_size=world_size, strategy=t.strategy)
    if resume is not None:
        with resume() as d:
            state = load_checkpoint(Path(d), strategy, rank)
        state.resumes += 1
        state.world_size = world_size
    manifest = None
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            write_manifest(Path(d) / "manifest.json", tasks, store)
            manifest = (Path(d) / "manifest.json").read_text()

    def validate() -> float:
        return sharded_validate(val, backbone, images, device=device, batch_size=cfg.run.batch_size, rank=rank,
                                world_size=world_size)

    hook = _fail_hook(cfg, run_uri, rank) if run_uri else None
    for epoch in range(state.epoch + 1, ft.epochs + 1):
        res = run_epoch(strategy, net, tasks, images, ft, epoch, device=device, world_size=world_size, rank=rank,
                        validate=validate if val is not None else None, before_step=hook,
                        first_step=state.global_step)
        s = res.stats
        state.epoch, state.global_step = epoch, state.global_step + s.steps
        score = s.val_acc - 1e-9 * epoch if s.val_acc is not None else float(epoch)  # ties: the earlier epoch
        if state.best_score is None or score > state.best_score:
            state.best_epoch, state.best_score = epoch, score
        state.history.append({**s.to_json(), "global_step": state.global_step, "step_losses": res.step_losses})
        metrics = {**s.to_json(), "global_step": state.global_step, "score": score, "best_epoch": state.best_epoch,
                   "resumes": state.resumes, "world_size": world_size}
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(Path(d), strategy, backbone, state, rank, manifest)
            report(metrics, Path(d), epoch)
    return state


def _ray_report(metrics: dict, directory: Path, epoch: int) -> None:
    import ray.train

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                     checkpoint_dir_name=f"epoch_{epoch:04d}")


def train_fn_per_worker(config: dict) -> dict:
    """The Ray Train worker function (``TorchTrainer(train_fn_per_worker, train_loop_config=...)``).

    Args:
        config: ``{"cfg": ExperimentConfig as JSON, "tasks": TaskSet, "run_uri": storage folder}``.

    Returns:
        The final loop state as JSON (Ray keeps rank 0's as ``result.return_value``).
    """
    import ray.train
    import ray.train.torch

    cfg = ExperimentConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ckpt = ray.train.get_checkpoint()
    state = run_worker(cfg, config["tasks"], rank=rank, world_size=world_size, device=device,
                       resume=ckpt.as_directory if ckpt is not None else None, report=_ray_report,
                       run_uri=config["run_uri"])
    return state.to_json()
