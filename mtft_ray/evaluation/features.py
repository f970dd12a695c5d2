"""Embed a split once per backbone checkpoint; keep the features in an on-disk cache.

The cache key is (model fingerprint, data fingerprint, sample ids), so a pretrained backbone's
features are computed once and shared by every run and trial that evaluates it.

Example:
    >>> feats = embed(model, images, ids, batch_size=128)  # (len(ids), model.num_features)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mtft_ray.models.inputs import model_input, normalization
from mtft_ray.progress import progress as progress_bar


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on GPU; a no-op context on CPU (CPU bf16 is slower than fp32 there)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, sample_ids: np.ndarray, batch_size: int = 128,
          device: torch.device | str = "cpu", progress: bool = False, desc: str = "embedding") -> torch.Tensor:
    """Features of ``images[sample_ids]`` in eval mode, as float32 on the CPU.

    Args:
        images: the store's uint8 images as a CPU tensor (``as_rows(store.images)``: a tensor, or a memory-mapped :class:`~mtft_ray.data.sharded.ShardedArray`).
        sample_ids: which samples, in output order.
    """
    device = torch.device(device)
    mean, std = normalization(model)
    was_training = model.training
    model.eval()
    ids = torch.as_tensor(np.asarray(sample_ids), dtype=torch.long)
    out = torch.empty((len(ids), model.num_features), dtype=torch.float32)
    starts = progress_bar(range(0, len(ids), batch_size), progress, desc=desc, unit="batch", leave=False)
    for s in starts:
        batch = images.index_select(0, ids[s : s + batch_size]).to(device, non_blocking=True)
        with autocast(device):
            out[s : s + batch_size] = model(model_input(batch, mean, std)).float().cpu()
    model.train(was_training)
    return out


class FeatureCache:
    """Features on disk under ``root/features/<key>.npy``, keyed by model, data and sample ids."""

    def __init__(self, root: str | Path) -> None:
        self.dir = Path(root) / "features"

    @staticmethod
    def key(model_fp: str, data_fp: str, sample_ids: np.ndarray) -> str:
        ids = hashlib.sha256(np.ascontiguousarray(sample_ids, dtype=np.int64).tobytes()).hexdigest()[:12]
        return f"{model_fp}-{data_fp}-{ids}"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.dir / f"{key}.npy"
        return torch.from_numpy(np.load(path)) if path.is_file() else None

    def put(self, key: str, features: torch.Tensor) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.tmp.npy"
        np.save(tmp, features.numpy())
        tmp.replace(self.dir / f"{key}.npy")
