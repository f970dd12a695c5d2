"""open_clip image towers (``backbone.name: open_clip:<architecture>[/<pretrained tag>]``).

The backbone is the image tower (``model.visual``) of an open_clip architecture, wrapped in
:class:`OpenClipImageEncoder`: ``num_features`` (the tower's output, CLIP's joint embedding size),
``modality == "image"``, ``input_mean`` / ``input_std``, and a forward from normalised float
``(B, 3, H, W)`` to ``(B, num_features)``. Inputs of another size than the tower's
``image_size`` are resized to it first (``F.interpolate``, bilinear, antialiased when shrinking;
resizing commutes with the per-channel normalisation, so it may come after it): open_clip ViTs
have a fixed-length position embedding. To run a pretrained tower at the data's size instead,
set ``config: {image_size: 64}``: the checkpoint's position embedding is then interpolated once,
at load (open_clip's ``resize_pos_embed``).

Naming: ``open_clip:<architecture>`` is one of ``open_clip.list_models()`` (``ViT-B-32``), and
``/<tag>`` one of its ``open_clip.list_pretrained_tags_by_model(architecture)``
(``open_clip:ViT-B-32/laion2b_s34b_b79k``). The tag names the weights ``weights: hub`` fetches
and, with any ``weights``, the activation (QuickGELU for OpenAI's) and input statistics they
were trained with. ``hf-hub:`` / ``local-dir:`` names are not taken: use an architecture and
``weights: file``.

``weights``:

- ``"hub"``: the tag's checkpoint, from the Hugging Face cache (or open_clip's URL cache
  ``~/.cache/clip`` for URL-only tags); downloaded when missing unless ``HF_HUB_OFFLINE`` is set
  or the hub cannot be reached, which fails at once in one line naming the model and the cache.
- ``"file"``: ``weights_path``, a full open_clip checkpoint of the architecture (``.bin`` /
  ``.pt`` / ``.safetensors``, as open_clip's ``load_checkpoint`` reads; the text tower is built
  to load it strictly and then dropped).
- ``"none"``: random initialisation of the image tower alone (the caller seeds torch).

``backbone.config`` overrides fields of the architecture's vision tower (``CLIPVisionCfg``:
``width``, ``layers``, ``head_width`` (heads = width / head_width), ``patch_size``,
``image_size``, ``mlp_ratio``, ...) plus ``embed_dim`` (the output size) and ``quick_gelu``. With
``weights: none`` that builds a tiny tower offline; with pretrained weights only fields that keep
the tensors' shapes (or ``image_size``) make sense.

Example:
    >>> from mtft_ray.config.schema import BackboneConfig
    >>> b = BackboneConfig(name="open_clip:ViT-B-32", weights="none", config={
    ...     "width": 64, "layers": 2, "head_width": 32, "patch_size": 8, "image_size": 32, "embed_dim": 16})
    >>> model = create_open_clip_backbone(b).eval()
    >>> model.architecture, model.num_features, model.image_size
    ('open_clip:ViT-B-32', 16, (32, 32))
    >>> model(torch.zeros(2, 3, 64, 64)).shape  # resized to 32 x 32 first
    torch.Size([2, 16])
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtft_ray.config.schema import BackboneConfig
from mtft_ray.data.tokenize import hub_reachable
from mtft_ray.errors import MtftError
from mtft_ray.models.hub import hf_cache_dir, hub_offline

__all__ = ["OpenClipImageEncoder", "check_open_clip_backbone", "create_open_clip_backbone"]

_TOP_LEVEL = ("embed_dim", "quick_gelu")  # backbone.config keys that are not vision-tower fields
_URL_CACHE = Path("~/.cache/clip")  # where open_clip keeps URL downloads when no cache_dir is given


class OpenClipImageEncoder(nn.Module):
    """An open_clip image tower giving its (projected) image embedding.

    Attributes:
        visual: the tower (``VisionTransformer``, ``ModifiedResNet`` or ``TimmModel``).
        num_features: its output size.
        modality: ``"image"``.
        architecture: ``"open_clip:<architecture>"``.
        image_size: ``(H, W)`` the tower takes; other inputs are resized to it (bilinear, antialiased).
        input_mean, input_std: per-channel statistics the weights expect, for inputs in [0, 1].
        pretrained_cfg: ``{"architecture": ...}`` with a digest of the tower's config (QuickGELU
            included), so :func:`mtft_ray.models.state.model_fingerprint` tells apart equal shapes.
    """

    modality = "image"

    def __init__(self, visual: nn.Module, architecture: str, digest: str, image_size: tuple[int, int],
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.visual = visual
        self.architecture = architecture
        self.pretrained_cfg = {"architecture": f"{architecture}:{digest}"}
        self.image_size = image_size
        self.input_mean, self.input_std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        out = getattr(visual, "output_dim", None)
        if out is None:  # a timm trunk without projection: ask it
            with torch.no_grad():
                out = self._tower(torch.zeros(1, 3, *image_size)).shape[-1]
        self.num_features = int(out)

    def _tower(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.visual(pixels)
        return out[0] if isinstance(out, tuple) else out  # output_tokens=True: (pooled, tokens)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` floats -> ``(B, num_features)``."""
        if tuple(pixels.shape[-2:]) != self.image_size:
            pixels = F.interpolate(pixels, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return self._tower(pixels)


def create_open_clip_backbone(b: BackboneConfig) -> nn.Module:
    """The configured open_clip image tower, wrapped (:class:`OpenClipImageEncoder`), on CPU.

    Args:
        b: ``name`` ``open_clip:<architecture>[/<tag>]``, ``weights``, ``weights_path``, ``config``
            as in the module docstring.

    Raises:
        MtftError: unknown architecture or tag, unknown config field, weights 'package', a
            missing file, hub weights not cached offline or not downloadable, or a checkpoint that
            does not fit.
    """
    import open_clip
    from open_clip.model import _build_vision_tower

    arch, tag, tag_cfg, embed_dim, quick_gelu, vision_cfg = _resolve(b)
    if b.weights == "none":
        visual = _build_vision_tower(embed_dim, {**vision_cfg, "timm_model_pretrained": False}, quick_gelu)
    else:
        path = Path(b.weights_path).expanduser() if b.weights == "file" else _hub_checkpoint(b, tag, tag_cfg)
        try:
            model = open_clip.create_model(arch, pretrained=str(path), embed_dim=embed_dim, quick_gelu=quick_gelu,
                                           vision_cfg=copy.deepcopy(vision_cfg))
        except (RuntimeError, ValueError, KeyError, OSError) as e:
            lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()] or [type(e).__name__]
            first = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]  # load_state_dict: what, then why
            if len(first) > 300:
                first = first[:300] + " ..."
            raise MtftError(f"{b.name}: checkpoint {path} does not fit the {arch} model"
                            f"{f' (with backbone.config {b.config})' if b.config else ''}: {first}") from None
        visual = model.visual
    mean = tag_cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN
    std = tag_cfg.get("std") or open_clip.OPENAI_DATASET_STD
    size = vision_cfg.get("image_size", 224)
    image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    digest = hashlib.blake2b(json.dumps({"embed_dim": embed_dim, "quick_gelu": quick_gelu, "vision_cfg": vision_cfg},
                                        sort_keys=True, default=str).encode(), digest_size=6).hexdigest()
    return OpenClipImageEncoder(visual.float(), f"open_clip:{arch}", digest, image_size, mean, std)


def check_open_clip_backbone(b: BackboneConfig) -> None:
    """What can be checked without building anything or downloading: the architecture, tag and
    config fields, the weights file exists, and offline (``HF_HUB_OFFLINE``) that the tag's
    checkpoint is cached.

    Raises:
        MtftError: as :func:`create_open_clip_backbone` would, in milliseconds (after importing open_clip).
    """
    _, tag, tag_cfg, *_ = _resolve(b)
    if b.weights == "hub" and (hub_offline() or not hub_reachable()):
        _hub_checkpoint(b, tag, tag_cfg)


def _resolve(b: BackboneConfig) -> tuple[str, str | None, dict, int, bool, dict]:
    """(architecture, tag, the tag's pretrained cfg, embed_dim, quick_gelu, vision cfg with ``b.config`` applied)."""
    import open_clip
    from open_clip.model import CLIPVisionCfg

    model_id = b.model_id
    if model_id.startswith(("hf-hub:", "local-dir:")):
        raise MtftError(f"{b.name}: open_clip backbones are named open_clip:<architecture>[/<pretrained tag>] "
                        f"(e.g. open_clip:ViT-B-32/laion2b_s34b_b79k); for other checkpoints use the architecture "
                        f"with weights: file")
    arch, _, tag = model_id.partition("/")
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see open_clip.list_models())"
        raise MtftError(f"{b.name}: unknown open_clip architecture {arch!r}{hint}")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag and tag not in tags:
        raise MtftError(f"{b.name}: open_clip has no pretrained tag {tag!r} for {arch}; known: "
                        f"{', '.join(tags) or 'none'}")
    if b.weights == "package":
        raise MtftError(f"{b.name}: no pip package ships open_clip weights; use weights: hub (with a tag), file "
                        f"or none")
    if b.weights == "hub" and not tag:
        raise MtftError(f"{b.name}: weights 'hub' need a pretrained tag, named as open_clip:{arch}/<tag>; known tags: "
                        f"{', '.join(tags) or 'none (use weights: file or none)'}")
    if b.weights == "file":
        path = Path(b.weights_path).expanduser()
        if not path.is_file():
            raise MtftError(f"{b.name}: weights file {path} does not exist (weights: file)")
    tag_cfg = dict(open_clip.get_pretrained_cfg(arch, tag) or {}) if tag else {}
    model_cfg = open_clip.get_model_config(arch)
    overrides = dict(b.config or {})
    fields = {f.name for f in dataclasses.fields(CLIPVisionCfg)}
    unknown = sorted(k for k in overrides if k not in fields and k not in _TOP_LEVEL)
    if unknown:
        raise MtftError(f"{b.name}: backbone.config field(s) {', '.join(map(repr, unknown))} are not open_clip "
                        f"vision-tower fields (CLIPVisionCfg: {', '.join(sorted(fields))}) or "
                        f"{' / '.join(_TOP_LEVEL)}")
    embed_dim = int(overrides.pop("embed_dim", model_cfg["embed_dim"]))
    trained_with = model_cfg.get("quick_gelu", False) or tag_cfg.get("quick_gelu", False)
    quick_gelu = bool(overrides.pop("quick_gelu", trained_with))
    vision_cfg = {**model_cfg["vision_cfg"], **overrides}
    return arch, tag or None, tag_cfg, embed_dim, quick_gelu, vision_cfg


def _hub_checkpoint(b: BackboneConfig, tag: str | None, tag_cfg: dict) -> Path:
    """The tag's checkpoint file: from the cache, else downloaded (online); one-line errors."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_WEIGHTS_NAME
    from open_clip.pretrained import _get_safe_alternatives, download_pretrained

    hf_cache = hf_cache_dir()
    repo, filename = os.path.split(tag_cfg.get("hf_hub", ""))  # "org/repo/" or "org/repo/file.bin", as open_clip
    url = tag_cfg.get("url", "")
    places = []
    if repo:
        names = [filename or HF_WEIGHTS_NAME]
        names = [*_get_safe_alternatives(names[0]), *names]
        for name in names:
            found = try_to_load_from_cache(repo, name, cache_dir=hf_cache)
            if isinstance(found, str):
                return Path(found)
        places.append(f"Hugging Face hub repo {repo} (cache {hf_cache})")
    if url:
        cached = _URL_CACHE.expanduser() / os.path.basename(url)
        if cached.is_file():
            return cached
        places.append(f"{url} (cache {_URL_CACHE.expanduser()})")
    where = " or ".join(places) or "nowhere (the tag names no download)"
    offline = hub_offline()
    if offline or not hub_reachable():  # a DNS probe: no 45 s of retries without a network
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise MtftError(f"{b.name}: weights 'hub' (open_clip tag {tag}) are not cached and {why}: looked for {where}; "
                        f"download them where there is internet, or use weights: file with weights_path a checkpoint")
    try:
        path = download_pretrained(tag_cfg, cache_dir=str(hf_cache) if repo else None)
    except Exception as e:  # noqa: BLE001 - open_clip wraps every download error differently
        text = str(e).strip()
        raise MtftError(f"{b.name}: could not get weights 'hub' (open_clip tag {tag}) from {where}: "
                        f"{text.splitlines()[0] if text else type(e).__name__}; set HF_HUB_OFFLINE=1 on machines "
                        f"without internet to fail fast") from None
    if not path:
        raise MtftError(f"{b.name}: open_clip tag {tag} names no checkpoint to download")
    return Path(path)
