"""Model inputs: uint8 image batches to the normalised float tensors a backbone expects.

Example:
    >>> import torch
    >>> mean, std = normalization(torch.nn.Linear(2, 2))  # not a timm model: ImageNet's values
    >>> mean == IMAGENET_MEAN
    True
    >>> to_input(torch.zeros(2, 8, 8, dtype=torch.uint8), mean, std).shape  # grayscale -> 3 channels
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
from torch import nn

from mtft_ray.models.state import unwrap

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "model_input", "normalization", "to_input"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std the model's pretrained weights expect.

    Args:
        model: a timm model (possibly wrapped in DDP); other modules get ImageNet's values.

    Returns:
        ``(mean, std)`` per RGB channel, for inputs scaled to [0, 1].
    """
    model = unwrap(model)
    if getattr(model, "input_mean", None) is not None:  # Hugging Face / open_clip towers say their own
        return tuple(model.input_mean), tuple(model.input_std)
    if not getattr(model, "pretrained_cfg", None):
        return IMAGENET_MEAN, IMAGENET_STD
    config = timm.data.resolve_data_config({}, model=model)
    return tuple(float(m) for m in config["mean"]), tuple(float(s) for s in config["std"])


def to_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Turns a uint8 image batch into the model's normalised float input.

    Runs on the images' device (move the compact uint8 batch to the GPU first, then call this)
    and allocates only the output.

    Args:
        images: uint8, ``(B, H, W)`` grayscale (replicated to 3 channels) or ``(B, H, W, 3)`` RGB.
        mean: per-channel mean, for inputs scaled to [0, 1].
        std: per-channel standard deviation, same scale.

    Returns:
        float32 ``(B, 3, H, W)``, contiguous.

    Raises:
        ValueError: not uint8, or not one of the two shapes.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        pixels = images.unsqueeze(1)  # (B, 1, H, W): broadcast to 3 channels below
    elif images.ndim == 4 and images.shape[-1] == 3:
        pixels = images.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"images must be (B, H, W) or (B, H, W, 3), got {tuple(images.shape)}")
    b, _, h, w = pixels.shape
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    out = torch.empty((b, 3, h, w), dtype=torch.float32, device=images.device)
    torch.mul(pixels, 1.0 / (255.0 * std_t), out=out)  # (x / 255 - mean) / std
    return out.sub_(mean_t / std_t)


def model_input(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """What a backbone's forward takes, from a batch of store rows: normalised floats from uint8
    images (:func:`to_input`), or int64 ``(B, 2, L)`` token ids and masks from int32 text rows
    (text encoders split them; ``mean`` and ``std`` are unused)."""
    if batch.dtype == torch.int32 and batch.ndim == 3 and batch.shape[1] == 2:
        return batch.long()
    return to_input(batch, mean, std)
