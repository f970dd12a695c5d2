"""The few collectives the training loop needs, as no-ops in a single process.

They work with any initialised ``torch.distributed`` process group (gloo on CPU, NCCL on GPU),
whoever set it up: Ray Train's TorchTrainer, ``torch.multiprocessing`` in tests, or a launcher.

Example:
    >>> import numpy as np
    >>> all_reduce_sum(np.array([1.0, 2.0]))  # one process: unchanged
    array([1., 2.])
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: np.ndarray) -> np.ndarray:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    values = np.asarray(values, np.float64)
    if world()[1] == 1:
        return values
    t = torch.from_numpy(values.copy()).to(_comm_device())
    dist.all_reduce(t)
    return t.cpu().numpy()


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``rows`` in rank order (each rank must pass the same shape)."""
    if world()[1] == 1:
        return rows
    t = rows.to(_comm_device()).contiguous()
    out = [torch.empty_like(t) for _ in range(world()[1])]
    dist.all_gather(out, t)
    return torch.cat([o.cpu() for o in out])


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
