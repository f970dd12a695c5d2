"""Weight files into models, through timm's checkpoint loader, with one-line errors.

:func:`load_weights` is the one place where timm reads a weights file (``.pth``/``.pt``, maybe
nested under ``"state_dict"``/``"model"``, or ``.safetensors``; DDP/compile prefixes stripped)
and where whatever goes wrong becomes an :class:`~mtft_ray.errors.MtftError`.

Example:
    >>> import tempfile, timm, torch
    >>> model = timm.create_model("resnet18", num_classes=0)
    >>> path = tempfile.mkdtemp() + "/resnet18.pth"
    >>> torch.save(model.state_dict(), path)
    >>> load_weights(model, path, name="resnet18")
    <All keys matched successfully>
    >>> load_weights(model, path + ".gone", name="resnet18")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    mtft_ray.errors.MtftError: resnet18: weights file ....pth.gone does not exist
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import timm.models
import torch
from torch import nn

from mtft_ray.errors import MtftError

__all__ = ["load_weights", "remap_by_order"]

StateDict = dict[str, torch.Tensor]


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str,
    strict: bool = True,
    filter_fn: Callable[[StateDict, nn.Module], StateDict] | None = None,
) -> nn.modules.module._IncompatibleKeys | None:
    """Loads a weights file into ``model`` in place with ``timm.models.load_checkpoint``.

    Args:
        model: the model to fill.
        path: the weights file.
        name: the model's name, for messages.
        strict: every key must match (``False``: missing and unexpected keys are returned;
            a tensor of the wrong shape still fails).
        filter_fn: turns the file's state dict into the one to load (see :func:`remap_by_order`).

    Returns:
        The missing and unexpected keys (both empty when ``strict``); None for ``.npz``/``.npy``
        files, which timm hands to the model's own ``load_pretrained``.

    Raises:
        MtftError: ``{name}: weights file {path} ...`` on one line: the file does not exist, is
            not a checkpoint, or does not fit the model.
    """
    path = Path(path)
    if not path.is_file():  # timm would log an error and raise a bare FileNotFoundError
        raise MtftError(f"{name}: weights file {path} does not exist")

    def checked(state: StateDict, model: nn.Module) -> StateDict:
        if not any(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError("not a checkpoint: it holds no tensors")
        return filter_fn(state, model) if filter_fn else state

    try:
        # use_ema=False: the file's main weights, as before (timm prefers "state_dict_ema")
        return timm.models.load_checkpoint(model, str(path), use_ema=False, strict=strict, filter_fn=checked)
    except Exception as e:  # torch.load, safetensors and load_state_dict raise a dozen types
        raise MtftError(f"{name}: weights file {path} does not load: {_one_line(e)}") from e


def remap_by_order(state: StateDict, model: nn.Module) -> StateDict:
    """timm's ``remap_state_dict`` (the model's key names, position by position), checked first.

    For files with another naming but the same tensors in the same order. A ``filter_fn`` for
    :func:`load_weights`.

    Args:
        state: the file's state dict.
        model: the model whose key names are used.

    Returns:
        ``state``'s tensors under the model's keys.

    Raises:
        ValueError: the count of tensors or the kind of one (``weight``, ``bias``,
            ``running_mean``...) differs; AssertionError (from timm): a shape differs.
    """
    target = list(model.state_dict())
    if len(state) != len(target):
        raise ValueError(
            f"{len(state)} tensors in the file, {len(target)} in the model; "
            "the weights are for another architecture"
        )
    for i, (src, dst) in enumerate(zip(state, target)):
        if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise ValueError(f"tensor {i} {src} is not the model's {dst}; the weights are for another "
                             "architecture")
    return timm.models.remap_state_dict(state, model, allow_reshape=False)


def _one_line(error: BaseException, lines: int = 3) -> str:
    """The error's type (when its text is blank or a bare key) and first lines, joined."""
    text = " ".join(line.strip() for line in str(error).strip().splitlines()[:lines])
    return text if len(text) > 8 else f"{type(error).__name__}: {text}".rstrip(": ")
