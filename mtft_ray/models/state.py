"""A built model's state: unwrapping, a fingerprint of its weights, frozen BatchNorm statistics.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    >>> freeze_batchnorm_stats(model)
    >>> model[0].training, model[1].training
    (True, False)
    >>> len(model_fingerprint(model)), unwrap(model) is model
    (16, True)
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["freeze_batchnorm_stats", "model_fingerprint", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DeepSpeed (``.module``) and ``torch.compile`` (``._orig_mod``).

    Args:
        model: any module, wrapped or not.

    Returns:
        The innermost model (``model`` itself if it is not wrapped).
    """
    for attr in ("_orig_mod", "module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def model_fingerprint(model: nn.Module) -> str:
    """Short hash of a model's architecture name and every tensor of its state dict.

    Two models share a fingerprint only if they compute the same function on the same
    architecture, so it keys feature caches. The name matters: ``tf_efficientnet_lite0`` and
    ``efficientnet_lite0`` have identical state-dict layouts but pad differently.

    Args:
        model: any module (DDP and ``torch.compile`` wrappers are looked through).

    Returns:
        16 hex characters.
    """
    model = unwrap(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    digest = hashlib.blake2b(digest_size=8)
    digest.update(str(cfg.get("architecture", type(model).__qualname__)).encode())
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        raw = tensor.cpu().contiguous().reshape(-1).view(torch.uint8)  # no copy on CPU
        digest.update(raw.numpy())
    return digest.hexdigest()


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Puts every BatchNorm layer in eval mode: running statistics are used and not updated.

    Affine parameters keep ``requires_grad`` and still train. ``model.train()`` undoes this, so
    call it again after every ``model.train()``.

    Args:
        model: the model, in place.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
