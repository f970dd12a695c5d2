"""The one multitask-finetuning path: a rank's whole finetune, checkpointed and reported every epoch.

:func:`run_worker` builds the backbone and its strategy (plain torch, DDP or DeepSpeed), resumes
from a checkpoint when given one, takes its own share of every step's tasks, validates with the
embedding split over ranks, and hands a checkpoint directory and the epoch's metrics to
``report`` after every epoch. It is the same function wherever it runs:

* on Ray Train workers: :func:`train_fn_per_worker` (``TorchTrainer``), whose report is
  ``ray.train.report`` (checkpoints kept in storage, resumable, forwarded to Tune);
* in the calling process (``train.workers: 0``): :func:`finetune_local`, whose report keeps the
  best epoch's weights in memory and calls ``on_epoch`` (a sweep's per-epoch Tune report).
  Ray Train's own local mode (``ScalingConfig(num_workers=0)``, Ray 2.60) was tried for this and
  does not fit: its ``report`` only remembers the last checkpoint object (whose directory is gone
  once the call returns), persists nothing to storage, keeps no best checkpoint and runs no
  callbacks, so a trial could neither pick its best epoch nor report epochs to Tune through it.

Example:
    >>> run = finetune_local(cfg, tasks, WorkerData(store, images, val), torch.device("cpu"))  # doctest: +SKIP
    >>> run.best_epoch, [h.val_acc for h in run.history]                                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.data.load import load_store
from mtft_ray.data.splits import split_classes
from mtft_ray.data.sharded import as_rows
from mtft_ray.data.store import SampleStore
from mtft_ray.evaluation.evaluate import EpisodeEvaluator, validation_evaluator
from mtft_ray.evaluation.features import embed
from mtft_ray.models.adapters import finetune_backbone, finetuned_state
from mtft_ray.storage import open_storage
from mtft_ray.tasks.pool import TaskSet, write_manifest
from mtft_ray.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from mtft_ray.train.collective import all_gather_rows
from mtft_ray.train.loss import PrototypeHead
from mtft_ray.errors import MtftError
from mtft_ray.train.multitask import EpisodicModel, EpochStats, epoch_steps, make_optimizer, param_groups, run_epoch
from mtft_ray.train.strategies import build_strategy, cpu_float

Report = Callable[[dict, Path, str], None]


@dataclass
class WorkerData:
    """What a rank trains and validates on.

    Attributes:
        store: the sample store (labels, names for the manifest).
        images: the store's uint8 images as a CPU tensor.
        val: validation episodes, or None without validation classes (then the last epoch is kept).
    """

    store: SampleStore
    images: torch.Tensor
    val: EpisodeEvaluator | None

    @classmethod
    def load(cls, cfg: ExperimentConfig, device: torch.device) -> WorkerData:
        """From the store cache (a Ray worker, wherever it starts)."""
        store = load_store(cfg.data, seed=cfg.seed)
        val = validation_evaluator(cfg, store, split_classes(store, cfg.data.split).val, device=device)
        return cls(store, as_rows(store.images), val)


@dataclass
class TrainRun:
    """What a finished finetune gives back, in-process or from Ray Train workers.

    Attributes:
        best_state: the best epoch's backbone weights (fp32, CPU; adapters only with finetune.peft).
        history: per-epoch stats (reduced over workers).
        state: the loop state after the last epoch (global step, resumes, every step's loss).
        seconds: wall time, worker start-up included.
        best_checkpoint, latest_checkpoint, run_uri: addresses in storage (Ray Train runs only).
    """

    best_state: dict[str, torch.Tensor]
    history: list[EpochStats]
    state: TrainState
    seconds: float
    best_checkpoint: str | None = None
    latest_checkpoint: str | None = None
    run_uri: str | None = None

    def summary(self) -> dict:
        return {"run": self.run_uri, "best_checkpoint": self.best_checkpoint,
                "latest_checkpoint": self.latest_checkpoint, "seconds": round(self.seconds, 2),
                **self.state.to_json()}


def epoch_history(state: TrainState) -> list[EpochStats]:
    """The per-epoch stats recorded in a loop state."""
    return [EpochStats.from_json(h) for h in state.history]


def sharded_validate(val: EpisodeEvaluator, backbone: nn.Module, images: torch.Tensor, *, device: torch.device,
                     batch_size: int, rank: int, world_size: int) -> tuple[float, float]:
    """Validation accuracy and its 95% half-width, with the embedding split over ranks (equal
    shares, so ZeRO-3 ranks stay in step); every rank gets the same values."""
    ids = val.sample_ids
    per = math.ceil(len(ids) / world_size)
    mine = ids[rank * per : (rank + 1) * per]
    mine = np.concatenate([mine, np.repeat(ids[:1], per - len(mine))])  # pad the last share
    feats = all_gather_rows(embed(backbone, images, mine, batch_size, device))[: len(ids)]
    row = val.evaluate_features(feats)[0]
    return row["acc"], row["ci95"]


def validation_spans(n_steps: int, first_step: int, val_every: int | None, start: int = 0) -> list[tuple[int, int]]:
    """The step spans ``[a, b)`` of an epoch of ``n_steps`` steps after each of which the model is
    validated: every global step that is a multiple of ``val_every``, and the epoch's end.

    >>> validation_spans(10, first_step=0, val_every=4)
    [(0, 4), (4, 8), (8, 10)]
    >>> validation_spans(10, first_step=10, val_every=4, start=2)  # resumed at global step 12
    [(2, 6), (6, 10)]
    """
    ends = [] if val_every is None else [k for k in range(start + 1, n_steps) if (first_step + k) % val_every == 0]
    bounds = [start, *ends, n_steps]
    return list(zip(bounds[:-1], bounds[1:]))


def check_validation_plan(cfg: ExperimentConfig, n_tasks: int, world_size: int) -> None:
    """Settings that cannot work with this run's epoch length, rejected before anything trains.

    Raises:
        MtftError: ``finetune.val_every`` larger than an epoch's steps.
    """
    ft = cfg.finetune
    steps = len(epoch_steps(n_tasks, 1, ft, world_size))
    if ft.val_every is not None and ft.val_every > steps:
        raise MtftError(f"finetune.val_every={ft.val_every} is larger than an epoch ({steps} steps: {n_tasks} tasks, "
                        f"{ft.tasks_per_step} per step on {world_size} worker(s)); validation already runs at every "
                        f"epoch end: set val_every to at most {steps}, or leave it unset")


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


def run_worker(cfg: ExperimentConfig, tasks: TaskSet, data: WorkerData, *, rank: int, world_size: int,
               device: torch.device, resume: Callable[[], AbstractContextManager[str]] | None, report: Report,
               run_uri: str | None = None, progress: bool = False) -> TrainState:
    """One rank's whole training: build, resume, train every remaining epoch, checkpoint and report each.

    Independent of Ray: :func:`train_fn_per_worker` supplies Ray's checkpoint and report,
    :func:`finetune_local` an in-memory one; tests may drive it from ``torch.multiprocessing``.

    Args:
        resume: opens a local copy of the checkpoint to resume from (``checkpoint.as_directory``),
            or None to start afresh.
        report: ``report(metrics, checkpoint_dir, name)``, called by every rank after every
            validation (every epoch end, and every ``finetune.val_every`` steps); the directory is
            gone once it returns. ``name`` is the checkpoint's folder name (``epoch_0002``, or
            ``epoch_0002_step_0000150`` within an epoch).
        run_uri: the run's storage folder (for the failure test hook).
        progress: progress bars for the epochs' steps.
    """
    t, ft = cfg.train, cfg.finetune
    if ft.lr == "auto":
        raise MtftError("finetune.lr is 'auto': resolve it with mtft_ray.train.lr_probe.probe_lr before training")
    backbone = finetune_backbone(cfg.backbone, ft.peft)  # with finetune.peft: LoRA adapters, the rest frozen
    torch.manual_seed(ft.seed)  # after the backbone: the head, dropout and the loop see the same RNG on any path
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
            write_manifest(Path(d) / "manifest.json", tasks, data.store)
            manifest = (Path(d) / "manifest.json").read_text()

    def validate() -> tuple[float, float]:
        return sharded_validate(data.val, backbone, data.images, device=device, batch_size=cfg.run.batch_size,
                                rank=rank, world_size=world_size)

    hook = _fail_hook(cfg, run_uri, rank) if run_uri else None
    if state.epoch == 0 and not state.history and data.val is not None and ft.keep_pretrained:
        t0 = time.perf_counter()  # epoch 0: the pretrained weights are the first candidate (not reported)
        val0, ci0 = validate()
        state.offer(0, val0, step=0)
        state.history.append({**EpochStats(0, None, None, val0, ft.init_temperature, 0, 0, time.perf_counter() - t0,
                                           ci0).to_json(), "global_step": 0, "step_losses": []})
    for epoch in range(state.epoch + 1, ft.epochs + 1):
        n_steps = len(epoch_steps(len(tasks), epoch, ft, world_size, rank))
        first = state.global_step - state.step_in_epoch  # global steps before this epoch
        for span in validation_spans(n_steps, first, ft.val_every, state.step_in_epoch):
            if state.stopped_early:
                return state
            res = run_epoch(strategy, net, tasks, data.images, ft, epoch, device=device, world_size=world_size,
                            rank=rank, validate=validate if data.val is not None else None, before_step=hook,
                            first_step=state.global_step, progress=progress, span=span)
            s = res.stats
            state.global_step += s.steps
            state.step_in_epoch = 0 if span[1] == n_steps else span[1]
            state.epoch = epoch if span[1] == n_steps else epoch - 1
            score = state.offer(epoch, s.val_acc, step=state.global_step)
            if ft.patience is not None and s.val_acc is not None and state.stale >= ft.patience:
                state.stopped_early = (f"no new best in {state.stale} validations (finetune.patience={ft.patience}): "
                                       f"stopped at epoch {epoch}, global step {state.global_step}; best at step "
                                       f"{state.best_step}")
            state.history.append({**s.to_json(), "global_step": state.global_step, "step_losses": res.step_losses})
            metrics = {**s.to_json(), "global_step": state.global_step, "score": score,
                       "best_epoch": state.best_epoch, "best_step": state.best_step, "resumes": state.resumes,
                       "world_size": world_size, "stopped_early": state.stopped_early}
            name = f"epoch_{epoch:04d}" if not state.step_in_epoch else f"epoch_{epoch:04d}_step_{state.global_step:07d}"
            with tempfile.TemporaryDirectory() as d:
                save_checkpoint(Path(d), strategy, backbone, state, rank, manifest)
                report(metrics, Path(d), name)
    return state


def finetune_local(cfg: ExperimentConfig, tasks: TaskSet, data: WorkerData, device: torch.device, *,
                   on_epoch: Callable[[dict], None] | None = None, progress: bool = False) -> TrainRun:
    """:func:`run_worker` in this process (``train.workers: 0``): one rank, the best epoch kept in memory.

    Args:
        on_epoch: called with each epoch's metrics, the same dict Ray Train workers report.
    """
    t0, best = time.perf_counter(), {}

    def report(metrics: dict, directory: Path, name: str) -> None:
        if metrics["best_step"] == metrics["global_step"]:
            best["state"] = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        if on_epoch:
            on_epoch(metrics)

    state = run_worker(cfg, tasks, data, rank=0, world_size=1, device=device, resume=None, report=report,
                       progress=progress)
    best_state = pretrained_state(cfg) if state.best_epoch == 0 else best["state"]
    return TrainRun(best_state, epoch_history(state), state, time.perf_counter() - t0)


def pretrained_state(cfg: ExperimentConfig) -> dict[str, torch.Tensor]:
    """The backbone's pretrained weights as fp32 CPU tensors: what a run keeps when epoch 0 is best
    (with finetune.peft: the untrained adapters, which leave the pretrained function unchanged)."""
    return cpu_float(finetuned_state(finetune_backbone(cfg.backbone, cfg.finetune.peft)))


def kept_pretrained_warning(method: str, history: list[EpochStats]) -> str | None:
    """The warning a run carries when no finetuned epoch beat the pretrained weights (epoch 0) on
    validation, with the numbers; None when one did (or epoch 0 was not validated)."""
    pre = next((h for h in history if h.epoch == 0), None)
    tuned = [h for h in history if h.epoch > 0 and h.val_acc is not None]
    if pre is None or pre.val_acc is None or not tuned:
        return None
    top = max(tuned, key=lambda h: (h.val_acc, -h.epoch))
    if top.val_acc > pre.val_acc:
        return None
    return (f"{method}: no finetuned epoch beat the pretrained weights on validation (pretrained "
            f"{100 * pre.val_acc:.2f}%, best finetuned {100 * top.val_acc:.2f}% at epoch {top.epoch}): kept the "
            f"pretrained weights")


def _ray_report(metrics: dict, directory: Path, name: str) -> None:
    import ray.train  # only inside a Ray Train worker

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(directory)),
                     checkpoint_dir_name=name)


def train_fn_per_worker(config: dict) -> dict:
    """The Ray Train worker function (``TorchTrainer(train_fn_per_worker, train_loop_config=...)``).

    Args:
        config: ``{"cfg": ExperimentConfig, "tasks": TaskSet, "run_uri": storage folder}``.

    Returns:
        The final loop state as JSON (Ray keeps rank 0's as ``result.return_value``).
    """
    import ray.train  # only inside a Ray Train worker
    import ray.train.torch

    cfg: ExperimentConfig = config["cfg"]
    t = cfg.train
    torch.set_num_threads(t.torch_threads or max(1, int(t.cpus_per_worker)))
    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device() if t.use_gpu else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ckpt = ray.train.get_checkpoint()
    state = run_worker(cfg, config["tasks"], WorkerData.load(cfg, device), rank=rank, world_size=world_size,
                       device=device, resume=ckpt.as_directory if ckpt is not None else None, report=_ray_report,
                       run_uri=config["run_uri"])
    return state.to_json()
