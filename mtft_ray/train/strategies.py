"""Training strategies behind one small protocol: plain torch (one process or DDP) and DeepSpeed ZeRO.

A strategy owns how the model is wrapped, how a loss becomes an optimizer step, and how the
training state is checkpointed. The loop only calls ``module(...)``, ``zero_grad``,
``backward``, ``step``, ``save``, ``load`` and ``full_state_dict``, so it is the same for all.

Both strategies average gradients over ranks; the loop scales each rank's loss so that the
average equals the single-process mean over a step's tasks (see ``multitask.train_epoch``).

Example:
    >>> import torch
    >>> net = torch.nn.Linear(4, 2)
    >>> s = TorchStrategy(net, torch.optim.SGD(net.parameters(), lr=0.1))
    >>> s.zero_grad(); s.backward(s.module(torch.ones(1, 4)).sum()); s.step()
    >>> sorted(s.full_state_dict(net))
    ['bias', 'weight']
    >>> ds = deepspeed_config(DeepSpeedConfig(zero_stage=3), tasks_per_step=2, world_size=4, use_gpu=False)
    >>> ds["train_batch_size"]  # micro batch 2 x grad accum 1 x world size 4
    8
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from mtft_ray.config.schema import DeepSpeedConfig
from mtft_ray.errors import MtftError
from mtft_ray.models.adapters import has_adapters

STRATEGIES = ("ddp", "deepspeed")


class Strategy(Protocol):
    """How one worker wraps, steps and checkpoints a model.

    Attributes:
        name: ``"ddp"`` (also the one-process case) or ``"deepspeed"``.
        module: what training forward passes call (the model, its DDP wrapper or the engine).
    """

    name: str
    module: nn.Module

    def zero_grad(self) -> None: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...

    def save(self, directory: Path, rank: int) -> None:
        """Write this rank's part of the training state (every rank calls it)."""

    def load(self, directory: Path) -> None:
        """Restore the training state written by :meth:`save` (every rank calls it)."""

    def full_state_dict(self, module: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """Full fp32 CPU weights of a submodule (a collective under ZeRO-3: every rank calls it);
        only its trainable parameters with ``trainable_only`` (LoRA adapters: nothing frozen is gathered)."""


def trainable_entries(module: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``module``'s state dict that are trainable parameters (what a run with
    frozen weights, e.g. LoRA adapters, needs to save)."""
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def cpu_float(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached fp32 CPU copies of a state dict's tensors (integer buffers keep their dtype)."""
    return {k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().clone() for k, v in state.items()}


class TorchStrategy:
    """A torch optimizer on the model, wrapped in DDP when ``distributed`` (gradients averaged)."""

    name = "ddp"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, distributed: bool = False,
                 device: torch.device | None = None) -> None:
        self.model, self.optimizer = model, optimizer
        self.frozen = has_adapters(model)  # LoRA: save and load only what trains
        self.module: nn.Module = model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device is not None and device.type == "cuda" else None
            self.module = DistributedDataParallel(model, device_ids=ids)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()

    def save(self, directory: Path, rank: int) -> None:
        if rank == 0:  # every rank holds the same state
            model = self.model.state_dict()
            if self.frozen:
                model = trainable_entries(self.model, model)
            torch.save({"model": model, "optimizer": self.optimizer.state_dict()}, Path(directory) / "torch_state.pt")

    def load(self, directory: Path) -> None:
        path = Path(directory) / "torch_state.pt"
        if not path.is_file():
            raise MtftError(f"checkpoint {directory} has no torch_state.pt: it was not written by the ddp strategy")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if self.frozen:  # only the trainable parameters were saved: they must all be there
            wanted = set(trainable_entries(self.model, self.model.state_dict()))
            if set(state["model"]) != wanted:
                raise MtftError(f"checkpoint {directory} does not hold this model's trainable parameters "
                                f"({len(state['model'])} saved, {len(wanted)} expected): another finetune.peft?")
            self.model.load_state_dict(state["model"], strict=False)
        else:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def full_state_dict(self, module: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        state = module.state_dict()
        return cpu_float(trainable_entries(module, state) if trainable_only else state)


def deepspeed_config(ds: DeepSpeedConfig, *, tasks_per_step: int, world_size: int, use_gpu: bool) -> dict:
    """The DeepSpeed config dict; batch sizes derived, never typed by hand.

    A "sample" for DeepSpeed is one task (an episode of m images): the micro batch is the tasks
    one worker takes per step, there is no gradient accumulation, so
    ``train_batch_size = tasks_per_step * 1 * world_size`` tasks per optimizer step.
    """
    micro, accum = tasks_per_step, 1
    bf16 = use_gpu if ds.bf16 is None else ds.bf16
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": micro * accum * world_size,
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": bool(bf16)},
        "gradient_clipping": 0.0,
        # the client optimizer (AdamW / SGD with the temperature's own group) is a plain torch one
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def skip_deepspeed_shm_build() -> None:
    """Keep DeepSpeed from JIT-compiling its CPU shared-memory op (~80 s on first use).

    ``deepspeed.init_distributed`` builds the op on the CPU accelerator, but only its inference
    all-reduce uses it; training collectives go through torch.distributed (gloo). DeepSpeed
    builds the op only when ``deepspeed.ops.__compatible_ops__`` marks it compatible, and that
    dict is cached for the process, so marking it incompatible skips the build.
    """
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


class DeepSpeedStrategy:
    """A DeepSpeed engine (ZeRO stage 1, 2 or 3) around the model and a client torch optimizer.

    The client optimizer keeps its parameter groups (the temperature's own learning rate);
    ``engine.backward`` / ``engine.step`` replace the raw optimizer; every rank saves and loads
    its own shard with ``engine.save_checkpoint`` / ``engine.load_checkpoint``.
    """

    name = "deepspeed"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ds_config: dict) -> None:
        if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
            os.environ["DS_ACCELERATOR"] = "cpu"
        import deepspeed

        if not torch.cuda.is_available():
            skip_deepspeed_shm_build()
        self.stage = ds_config["zero_optimization"]["stage"]
        self.frozen = has_adapters(model)  # LoRA: frozen base weights stay out of checkpoints
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
        self.module: nn.Module = self.engine
        self.model = self.engine.module

    def zero_grad(self) -> None:
        self.engine.zero_grad()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    def save(self, directory: Path, rank: int) -> None:
        self.engine.save_checkpoint(str(Path(directory) / "deepspeed"), tag="state",
                                    exclude_frozen_parameters=self.frozen)

    def load(self, directory: Path) -> None:
        path = Path(directory) / "deepspeed"
        if not path.is_dir():
            raise MtftError(f"checkpoint {directory} has no deepspeed/ folder: it was not written by DeepSpeed")
        loaded, _ = self.engine.load_checkpoint(str(path), tag="state", load_module_strict=not self.frozen)
        if loaded is None:
            raise MtftError(f"DeepSpeed could not load the checkpoint in {path}")

    def full_state_dict(self, module: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        def read() -> dict[str, torch.Tensor]:
            state = module.state_dict()
            return cpu_float(trainable_entries(module, state) if trainable_only else state)

        if self.stage == 3:
            import deepspeed

            params = [p for p in module.parameters() if p.requires_grad or not trainable_only]
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return read()
        return read()


def build_strategy(name: str, model: nn.Module, optimizer: torch.optim.Optimizer, *, world_size: int,
                   device: torch.device, ds: DeepSpeedConfig | None = None, tasks_per_step: int = 1) -> Strategy:
    """The named strategy around ``model`` (already on ``device``) and its optimizer.

    Args:
        name: ``"ddp"`` (plain torch in one process, DDP with more) or ``"deepspeed"``.
        ds: DeepSpeed settings (ZeRO stage, bf16), for ``"deepspeed"``.
        tasks_per_step: tasks each worker takes per step (DeepSpeed's micro batch).
    """
    if name == "ddp":
        return TorchStrategy(model, optimizer, distributed=world_size > 1, device=device)
    if name == "deepspeed":
        cfg = deepspeed_config(ds or DeepSpeedConfig(), tasks_per_step=tasks_per_step, world_size=world_size,
                               use_gpu=device.type == "cuda")
        return DeepSpeedStrategy(model, optimizer, cfg)
    raise MtftError(f"unknown training strategy {name!r}; known: {', '.join(STRATEGIES)}")
