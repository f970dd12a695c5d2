"""What a training checkpoint holds, and how every rank writes and reads its part.

A checkpoint directory (one per epoch, reported through ``ray.train.report``)::

    model.pt          full backbone weights, fp32 (rank 0): what evaluation loads; with
                      finetune.peft only the adapters (peft's adapter state dict)
    state.json        epoch, global step, history, best epoch, resumes (rank 0)
    manifest.json     the exact tasks of the run (rank 0)
    rng/rank<r>.pt    each rank's torch / numpy / python RNG state
    digests.json      size and sha256 of model.pt and state.json, checked before a resume (rank 0)
    torch_state.pt    ddp: model + optimizer (rank 0; every rank holds the same); with adapters
                      only the trainable parameters (adapters and the head's temperature)
    deepspeed/        deepspeed: every rank's ZeRO shard, written by the engine (frozen weights
                      excluded with adapters)

Example:
    >>> state = TrainState(epoch=2, global_step=10)
    >>> TrainState.from_json(state.to_json()).global_step
    10
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtft_ray.errors import MtftError
from mtft_ray.io import file_digest, verify_digest
from mtft_ray.models.adapters import finetuned_state, has_adapters
from mtft_ray.train.collective import barrier
from mtft_ray.train.strategies import Strategy

DIGESTS = "digests.json"


def epoch_score(epoch: int, val_acc: float | None) -> float:
    """How good an epoch (or a global step) is, higher is better: its validation accuracy, ties
    going to the earlier one; without validation, the latest is best."""
    return val_acc - 1e-12 * epoch if val_acc is not None else float(epoch)


def improves(score: float, best: float | None) -> bool:
    """Whether ``score`` beats the best so far (None: nothing yet)."""
    return best is None or score > best


@dataclass
class TrainState:
    """The loop's own state, saved in ``state.json`` beside the strategy's state.

    Attributes:
        epoch: epochs completed.
        global_step: optimizer steps completed (over the whole run, all attempts).
        history: one entry per completed epoch (stats, global step, every step's loss).
        best_epoch: the epoch with the best score so far (validation accuracy, else the latest).
        best_step: the global step of that best validation (0: the pretrained weights).
        resumes: how often training restarted from a checkpoint.
        step_in_epoch: steps of epoch ``epoch + 1`` done (a checkpoint within an epoch).
        stale: validations in a row since the last new best (early stopping's count).
        stopped_early: why training stopped before its last epoch (``finetune.patience``), or None.
    """

    epoch: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    resumes: int = 0
    world_size: int = 1
    strategy: str = "ddp"
    best_step: int | None = None
    step_in_epoch: int = 0
    stale: int = 0
    stopped_early: str | None = None

    def offer(self, epoch: int, val_acc: float | None, step: int | None = None) -> float:
        """Score the model at ``epoch`` (and global ``step``; ties go to the earlier one, see
        :func:`epoch_score`); it becomes the best if it improves, else one more stale validation.
        Returns its score."""
        score = epoch_score(epoch if step is None else step, val_acc)
        if improves(score, self.best_score):
            self.best_epoch, self.best_step, self.best_score, self.stale = epoch, step, score, 0
        else:
            self.stale += 1
        return score

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> TrainState:
        return cls(**doc)


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))


def save_checkpoint(directory: Path, strategy: Strategy, backbone: nn.Module, state: TrainState, rank: int,
                    manifest: str | None = None) -> None:
    """Every rank writes its part of the checkpoint into its own ``directory``; ends with a barrier.

    Ray Train merges the ranks' directories into one checkpoint in storage.
    """
    directory = Path(directory)
    strategy.save(directory, rank)
    adapters = has_adapters(backbone)
    weights = strategy.full_state_dict(backbone, trainable_only=adapters)  # a collective under ZeRO-3
    if adapters:
        weights = finetuned_state(backbone, weights)
    (directory / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), directory / "rng" / f"rank{rank}.pt")
    if rank == 0:
        torch.save(weights, directory / "model.pt")
        (directory / "state.json").write_text(json.dumps(state.to_json()))
        if manifest is not None:
            (directory / "manifest.json").write_text(manifest)
        digests = {name: file_digest(directory / name) for name in ("model.pt", "state.json")}
        (directory / DIGESTS).write_text(json.dumps(digests))  # checked before a resume loads them
    barrier()


def load_checkpoint(directory: Path, strategy: Strategy, rank: int) -> TrainState:
    """Restore the strategy's state and this rank's RNG; return the loop state."""
    directory = Path(directory)
    if not (directory / "state.json").is_file():
        raise MtftError(f"{directory} is not an mtft-ray training checkpoint (no state.json)")
    if (directory / DIGESTS).is_file():
        for name, expected in json.loads((directory / DIGESTS).read_text()).items():
            bad = verify_digest(directory / name, expected)
            if bad:
                raise MtftError(f"checkpoint damaged, not resuming from it: {bad}")
    state = TrainState.from_json(json.loads((directory / "state.json").read_text()))
    strategy.load(directory)
    rng = directory / "rng" / f"rank{rank}.pt"
    if rng.is_file():  # absent when the world grew since the checkpoint
        _set_rng_state(torch.load(rng, map_location="cpu", weights_only=True))
    return state
