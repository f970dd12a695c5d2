"""Training-time augmentation of multitask finetuning batches, on the device (``finetune.augment``).

``dinov2`` is the paper's DINOv2 / MoCo v3 / torchvision recipe: random resized crop (scale
0.32-1, bicubic, back to the batch's own size), horizontal flip, colour jitter (0.4, 0.4, 0.2, 0.1;
p 0.8) and grayscale (p 0.2), drawn per sample with kornia. It takes the uint8 batch the training
loop has already moved to the device and gives back a uint8 batch of the same shape and layout,
so the normalisation (:func:`mtft_ray.models.inputs.model_input`) is unchanged. Every image of a
finetuning step is augmented (supports and queries); validation and evaluation never are.

The draws are seeded by (finetune seed, epoch, global step, rank), under a forked RNG: a rerun
repeats them exactly, and the global RNG the rest of training sees is untouched. ``none`` returns
the batch itself and draws nothing.

Example:
    >>> import torch
    >>> aug = BatchAugment("dinov2", seed=0)
    >>> batch = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    >>> out = aug(batch, epoch=1, step=1)
    >>> out.shape, out.dtype, torch.equal(out, aug(batch, epoch=1, step=1))
    (torch.Size([4, 16, 16, 3]), torch.uint8, True)
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from mtft_ray.data.store import SampleStore, is_tokens
from mtft_ray.errors import MtftError

__all__ = ["AUGMENTS", "BatchAugment", "StepAugment", "check_augment"]

AUGMENTS = ("none", "dinov2")

StepAugment = Callable[[torch.Tensor, int], torch.Tensor]  # (device batch, global step) -> batch


def _dinov2(size: tuple[int, int]) -> nn.Module:
    import kornia.augmentation as K  # only where augmentation is asked for

    return nn.Sequential(
        K.RandomResizedCrop(size, scale=(0.32, 1.0), resample="BICUBIC", align_corners=False),
        K.RandomHorizontalFlip(),
        K.ColorJitter(0.4, 0.4, 0.2, 0.1, p=0.8),
        K.RandomGrayscale(p=0.2),
    )


def _seed(*key: int) -> int:
    return int.from_bytes(hashlib.sha256(repr(("augment", *key)).encode()).digest()[:8], "little") >> 1


class BatchAugment:
    """One augmentation recipe applied to uint8 device batches.

    Args:
        name: one of :data:`AUGMENTS`.
        seed: the finetune seed the draws derive from.
    """

    def __init__(self, name: str, seed: int = 0) -> None:
        if name not in AUGMENTS:
            raise MtftError(f"finetune.augment must be one of {AUGMENTS}, got {name!r}")
        self.name, self.seed = name, seed
        self._pipes: dict[tuple[int, int], nn.Module] = {}  # by image size (the crop resizes back to it)

    def __call__(self, batch: torch.Tensor, *, epoch: int, step: int, rank: int = 0) -> torch.Tensor:
        """The augmented batch: uint8 ``(B, H, W)`` or ``(B, H, W, 3)``, on ``batch``'s device.

        Raises:
            MtftError: a token batch (text cannot be augmented).
        """
        if self.name == "none":
            return batch
        if is_tokens(batch) or batch.dtype != torch.uint8 or batch.ndim not in (3, 4):
            raise MtftError(f"finetune.augment={self.name!r} needs uint8 images, got {batch.dtype} "
                            f"{tuple(batch.shape)} (text cannot be augmented: use finetune.augment=none)")
        gray = batch.ndim == 3
        x = (batch.unsqueeze(1).expand(-1, 3, -1, -1) if gray else batch.permute(0, 3, 1, 2)).float().div_(255)
        size = (batch.shape[1], batch.shape[2])
        pipe = self._pipes.setdefault(size, _dinov2(size))
        devices = [batch.device] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"), torch.no_grad():
            s = _seed(self.seed, epoch, step, rank)
            torch.random.default_generator.manual_seed(s)
            if devices:
                with torch.cuda.device(batch.device):
                    torch.cuda.manual_seed(s)
            x = pipe(x)
        # on a grayscale batch every step keeps R = G = B (up to rounding): one channel goes back
        x = x.mean(1) if gray else x.permute(0, 2, 3, 1)
        return x.mul_(255).round_().clamp_(0, 255).to(torch.uint8).contiguous()

    def for_epoch(self, epoch: int, rank: int = 0) -> StepAugment | None:
        """What :func:`~mtft_ray.train.multitask.train_epoch` calls with each batch and its global
        step number; None for ``none`` (then nothing is called)."""
        if self.name == "none":
            return None
        return lambda batch, step: self(batch, epoch=epoch, step=step, rank=rank)


def check_augment(name: str, store: SampleStore) -> None:
    """Fail at setup, not at the first step, when ``finetune.augment`` cannot apply to the store.

    Raises:
        MtftError: augmentation asked for on tokenized text.
    """
    if name != "none" and store.is_text:
        raise MtftError(f"finetune.augment={name!r} augments images, but the store holds tokenized text: "
                        f"set finetune.augment=none for text sources")
