"""Pretrained weights from the timm/Hugging Face hub (``weights: hub``), online or offline.

Online, timm downloads into the Hugging Face cache. Offline (``HF_HUB_OFFLINE=1``) only that
cache (or torch hub's, for url-only weights) is read, and a miss fails at once, in one line.

Example:
    >>> model = from_hub("tf_efficientnet_lite0", num_classes=0)  # downloads  # doctest: +SKIP
    >>> hf_cache_dir().is_absolute()
    True
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants
import timm
import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from timm.models import PretrainedCfg
from torch import nn

from mtft_ray.errors import MtftError
from mtft_ray.models.packaged import PACKAGED_WEIGHTS

__all__ = ["from_hub", "hf_cache_dir", "hub_offline"]


def from_hub(name: str, num_classes: int) -> nn.Module:
    """Builds ``name`` with timm's pretrained weights.

    Args:
        name: timm model name, optionally with a pretrained tag.
        num_classes: classifier size (0: pooled features).

    Returns:
        The model, as ``timm.create_model`` returns it.

    Raises:
        MtftError: timm has no weights for it, they are not cached offline, or the download failed.
    """
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise MtftError(f"{name}: timm has no pretrained weights for it; use weights: file or none")
    hf_cache = hf_cache_dir()
    if cfg.hf_hub_id:
        where = f"Hugging Face hub repo {cfg.hf_hub_id} (cache {hf_cache})"
    else:
        where = f"{cfg.url} (torch hub cache {_torch_hub_file(cfg.url).parent})"
    alternatives = (
        f"download them where there is internet, or use weights: package "
        f"(packaged: {', '.join(PACKAGED_WEIGHTS) or 'none'}) or weights: file with weights_path"
    )
    if hub_offline():
        cached = _cached_hub_weights(cfg, hf_cache)
        if cached is None:
            raise MtftError(
                f"{name}: weights 'hub' are not available offline (HF_HUB_OFFLINE is set): "
                f"looked for {where}; {alternatives}"
            )
        path, from_hf = cached
        overlay = {"file": str(path)}
        if from_hf:  # HF hub files are plain state dicts, never the url's custom format
            overlay["custom_load"] = False
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
        )
    cache_dir = hf_cache if cfg.hf_hub_id else None
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, cache_dir=cache_dir)
    except _download_errors() as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MtftError(
            f"{name}: could not get weights 'hub' from {where}: {first_line}; {alternatives} "
            f"(set HF_HUB_OFFLINE=1 on machines without internet to fail fast)"
        ) from e


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now, not at import."""
    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _cached_hub_weights(cfg: PretrainedCfg, hf_cache: Path) -> tuple[Path, bool] | None:
    """(path, from the HF cache) of already-downloaded weights for a timm pretrained cfg."""
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["pytorch_model.bin"]
        if names[0].endswith("pytorch_model.bin"):  # timm prefers the safetensors twin
            names.insert(0, names[0].replace("pytorch_model.bin", "model.safetensors"))
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=hf_cache, revision=revision or None)
            if isinstance(found, str):
                return Path(found), True
    if cfg.url and _torch_hub_file(cfg.url).is_file():
        return _torch_hub_file(cfg.url), False
    return None


def _download_errors() -> tuple[type[BaseException], ...]:
    errors: tuple[type[BaseException], ...] = (OSError, EntryNotFoundError)
    try:
        import httpx  # optional (not every huggingface_hub uses it); needed only once a download failed

        errors += (httpx.HTTPError,)
    except ImportError:
        pass
    return errors
