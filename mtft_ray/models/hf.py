"""Hugging Face ``transformers`` backbones (``backbone.name: hf:<hub id>``): text encoders and vision towers.

:func:`create_hf_backbone` builds the configured model and wraps it so that, like every family
(:func:`mtft_ray.models.backbones.build_backbone`), it has ``num_features`` and maps what
:func:`mtft_ray.models.inputs.model_input` gives to pooled features ``(B, num_features)``:

- :class:`HFTextEncoder` (``modality == "text"``): any ``AutoModel`` whose config is not a vision
  config (BERT, MiniLM, RoBERTa, MPNet, ...). Input: int64 ``(B, 2, L)`` token ids ``[:, 0]`` and
  attention mask ``[:, 1]``; output: the mean of ``last_hidden_state`` over the attention mask,
  as sentence-transformers pools ``all-MiniLM-L6-v2`` (before its final L2 normalisation, which
  is not applied here).
- :class:`HFVisionEncoder` (``modality == "image"``): CLIP (``CLIPVisionModel``), SigLIP
  (``SiglipVisionModel``) and DINOv2 (``Dinov2Model``, with or without registers) vision towers;
  a full ``CLIPModel`` / ``SiglipModel`` checkpoint (``hf:openai/clip-vit-base-patch32``) gives
  its vision tower, the text tower is not loaded. Input: normalised float ``(B, 3, H, W)``
  (``input_mean`` / ``input_std``: the checkpoint's ``preprocessor_config.json`` when there is
  one, else HF's processor defaults: CLIP's values for CLIP, 0.5 / 0.5 for SigLIP, ImageNet's
  for DINOv2); output: ``pooler_output`` (CLIP: the post-layernorm class token; SigLIP: its
  attention-pooling head, or the token mean for a head-less tower; DINOv2: the layernormed
  class token). Inputs of another size than the config's ``image_size`` (64 px data for a
  224 px model) are not resized: the position embeddings are interpolated (bicubic, as HF does
  with ``interpolate_pos_encoding=True`` for CLIP and SigLIP, and always for DINOv2), so the
  model sees ``(H / patch) x (W / patch)`` patches; sides must be at least one patch.

``weights`` says where the weights come from:

- ``"package"``: a model folder shipped in a pip package (:data:`mtft_ray.packages.PACKAGED_MODELS`;
  ``hf:sentence-transformers/all-MiniLM-L6-v2``). Offline.
- ``"file"``: ``weights_path`` is a local model folder (``save_pretrained``: ``config.json`` and
  the weights).
- ``"hub"``: ``from_pretrained(<hub id>)`` through the Hugging Face cache. A cached model is used
  as cached; otherwise it is downloaded, unless ``HF_HUB_OFFLINE`` is set or the hub cannot be
  reached, which fails at once in one line naming the model and the cache.
- ``"none"``: random initialisation (the caller seeds torch) from ``backbone.config``: with a
  ``model_type`` it is the whole ``AutoConfig`` (``{"model_type": "bert", "hidden_size": 32,
  ...}``); without one, the config of ``weights_path`` (a folder), of the packaged model, or of
  the hub id (cached, or downloaded: config only), with ``backbone.config`` overriding fields.

With pretrained weights ``backbone.config`` overrides fields of the checkpoint's config (e.g.
``{"hidden_dropout_prob": 0.0}``); for a full CLIP / SigLIP checkpoint the fields are those of its
``vision_config``. An unknown field is an error (a typo would otherwise be silently ignored).
Weights are loaded in float32 whatever the checkpoint's dtype; a checkpoint that leaves tensors of
the model uninitialised (other than a text model's unused pooler) is an error.

Example:
    >>> from mtft_ray.config.schema import BackboneConfig
    >>> b = BackboneConfig(name="hf:tiny-clip", weights="none", config={
    ...     "model_type": "clip_vision_model", "hidden_size": 32, "num_hidden_layers": 2,
    ...     "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32, "patch_size": 8})
    >>> model = create_hf_backbone(b).eval()
    >>> model.architecture, model.modality, model.num_features
    ('hf:clip_vision_model', 'image', 32)
    >>> model(torch.zeros(2, 3, 64, 64)).shape  # 64 px on a 32 px config: 8 x 8 patches
    torch.Size([2, 32])
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtft_ray.config.schema import BackboneConfig
from mtft_ray.data.tokenize import hub_reachable
from mtft_ray.errors import MtftError
from mtft_ray.models.hub import hf_cache_dir, hub_offline
from mtft_ray.models.inputs import IMAGENET_MEAN, IMAGENET_STD
from mtft_ray.packages import PACKAGED_MODELS, packaged_model_dir

__all__ = ["CLIP_MEAN", "CLIP_STD", "HFTextEncoder", "HFVisionEncoder", "check_hf_backbone",
           "create_hf_backbone", "mean_pool"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)


class _Tower:
    """A supported vision checkpoint type: the tower class, where its config sits, default input stats."""

    def __init__(self, cls: str, sub_config: str | None, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.cls, self.sub_config, self.mean, self.std = cls, sub_config, mean, std


# model_type of a checkpoint's config -> its vision tower
_VISION_TOWERS = {
    "clip": _Tower("CLIPVisionModel", "vision_config", CLIP_MEAN, CLIP_STD),
    "clip_vision_model": _Tower("CLIPVisionModel", None, CLIP_MEAN, CLIP_STD),
    "siglip": _Tower("SiglipVisionModel", "vision_config", _HALF, _HALF),
    "siglip_vision_model": _Tower("SiglipVisionModel", None, _HALF, _HALF),
    "dinov2": _Tower("Dinov2Model", None, IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": _Tower("Dinov2WithRegistersModel", None, IMAGENET_MEAN, IMAGENET_STD),
}
# config fields that name a checkpoint's origin or bookkeeping, not what the model computes
_NOT_FUNCTION = {"_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache",
                 "_attn_implementation_autoset", "output_attentions", "output_hidden_states", "return_dict",
                 "id2label", "label2id", "gradient_checkpointing"}


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(B, L, D)`` over the positions where ``mask`` ``(B, L)`` is 1 (as
    sentence-transformers' mean pooling: a row without tokens gives zeros), in float32 (also
    under bf16 autocast)."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class HFTextEncoder(nn.Module):
    """A ``transformers`` text encoder giving mean-pooled token features.

    Attributes:
        model: the ``transformers`` model (``AutoModel``).
        num_features: ``hidden_size``.
        modality: ``"text"``.
        architecture: ``"hf:<model_type>"`` (``"hf:bert"``).
        pretrained_cfg: ``{"architecture": ...}`` with a digest of the config, so
            :func:`mtft_ray.models.state.model_fingerprint` tells apart configs of equal tensor shapes.
        input_mean, input_std: ImageNet's, only so :func:`mtft_ray.models.inputs.normalization`
            answers; text inputs are not normalised.
        trim_padding: drop the trailing positions that are padding in every row of a batch before
            the forward (default True): rows padded to the store's fixed length cost what their
            longest row costs. Exact (padded keys are masked out; right padding only is trimmed),
            at one host sync per batch.
    """

    modality = "text"
    trim_padding = True

    def __init__(self, model: nn.Module, architecture: str, digest: str) -> None:
        super().__init__()
        self.model = model
        self.num_features = int(model.config.hidden_size)
        self.architecture = architecture
        self.pretrained_cfg = {"architecture": f"{architecture}:{digest}"}
        self.input_mean, self.input_std = IMAGENET_MEAN, IMAGENET_STD

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, 2, L)`` integer ids and masks -> ``(B, num_features)`` mean-pooled features."""
        if tokens.ndim != 3 or tokens.shape[1] != 2 or tokens.is_floating_point():
            raise ValueError(f"{self.architecture} takes integer (B, 2, L) token ids and attention masks, got "
                             f"{tokens.dtype} {tuple(tokens.shape)}")
        ids, mask = tokens[:, 0].long(), tokens[:, 1].long()
        if self.trim_padding and mask.shape[1] > 1:
            used = int(torch.nonzero(mask.any(0)).max().item()) + 1 if bool(mask.any()) else 1
            ids, mask = ids[:, :used], mask[:, :used]
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask)


class HFVisionEncoder(nn.Module):
    """A ``transformers`` vision tower giving its pooled image feature (see the module docstring).

    Attributes:
        model: the tower (``CLIPVisionModel``, ``SiglipVisionModel``, ``Dinov2Model``).
        num_features: ``hidden_size``.
        modality: ``"image"``.
        architecture: ``"hf:<tower model_type>"`` (``"hf:clip_vision_model"``, ``"hf:dinov2"``).
        image_size: ``(H, W)`` the tower was configured for; other sizes interpolate the
            position embeddings.
        input_mean, input_std: per-channel statistics the weights expect, for inputs in [0, 1].
        pretrained_cfg: ``{"architecture": ...}`` with a digest of the config (fingerprints).
    """

    modality = "image"

    def __init__(self, model: nn.Module, architecture: str, digest: str, mean: tuple[float, ...],
                 std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.num_features = int(config.hidden_size)
        self.architecture = architecture
        self.pretrained_cfg = {"architecture": f"{architecture}:{digest}"}
        self.input_mean, self.input_std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        size = config.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
        # CLIP and SigLIP interpolate only when asked; DINOv2's embeddings always do
        self._ask_interpolation = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised ``(B, 3, H, W)`` floats -> ``(B, num_features)``."""
        kwargs = {}
        if self._ask_interpolation and tuple(pixels.shape[-2:]) != self.image_size:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(pixel_values=pixels, **kwargs)
        pooled = out.pooler_output
        return out.last_hidden_state.mean(1) if pooled is None else pooled


def create_hf_backbone(b: BackboneConfig) -> nn.Module:
    """The configured Hugging Face backbone, wrapped (:class:`HFTextEncoder` / :class:`HFVisionEncoder`), on CPU.

    Args:
        b: ``name`` ``hf:<hub id>`` (or ``family: hf``), ``weights``, ``weights_path``, ``config``
            as in the module docstring.

    Raises:
        MtftError: unknown or unsupported model type, unknown config field, a package that is not
            installed, a missing folder, hub weights not cached offline or not downloadable, or
            weights that do not fit the model.
    """
    import transformers

    config, source, tower = _resolve(b, allow_download=True)
    with _quiet():
        if tower is not None:
            cls = getattr(transformers, tower.cls)
            if b.weights == "none":
                model = cls(config)
            else:
                model = _load(b, cls, config, source)
        else:
            if b.weights == "none":
                try:
                    model = transformers.AutoModel.from_config(config)
                except ValueError as e:
                    raise MtftError(f"{b.name}: transformers has no AutoModel for model_type "
                                    f"{config.model_type!r}: {_first_line(e)}") from None
            else:
                model = _load(b, transformers.AutoModel, config, source)
    model = _without_unused_parameters(model.float())
    architecture = f"hf:{config.model_type}"
    digest = _config_digest(config)
    if tower is None:
        return HFTextEncoder(model, architecture, digest)
    mean, std = _input_stats(b, source, tower)
    return HFVisionEncoder(model, architecture, digest, mean, std)


def check_hf_backbone(b: BackboneConfig) -> None:
    """What can be checked without building the model or downloading anything: the config (model
    type and field names) where it is on disk, the package is installed, the folder exists, and
    offline (``HF_HUB_OFFLINE``) that the hub id is in the cache.

    Raises:
        MtftError: as :func:`create_hf_backbone` would, in about the time of reading a config.
    """
    _resolve(b, allow_download=False)


# --- configs ---------------------------------------------------------------------------------


def _resolve(b: BackboneConfig, allow_download: bool) -> tuple[Any, Path | str | None, _Tower | None]:
    """(the tower's config with ``b.config`` applied, where the weights / base config come from,
    the vision tower or None for a text model). Without ``allow_download`` a hub config that is
    not cached gives (None, id, None) online, and fails offline."""
    from transformers import AutoConfig

    overrides = dict(b.config or {})
    model_type = overrides.pop("model_type", None)
    source = _source(b)
    if b.weights == "none" and model_type is not None:
        return _from_model_type(b, model_type, overrides), source, _tower_of(b, model_type)
    if source is None:
        raise MtftError(f"{b.name}: weights 'none' build a random-init model from a config, but backbone.config has "
                        f"no model_type and there is no base config to start from; give backbone.config a model_type "
                        f"(e.g. {{\"model_type\": \"bert\", \"hidden_size\": 32, ...}}), or weights_path a model "
                        f"folder")
    if isinstance(source, Path):
        config = _read_config(b, lambda **kw: AutoConfig.from_pretrained(source, **kw), f"model folder {source}")
    else:
        if not allow_download and not hub_offline():
            found = _cached(source, "config.json")
            if found is None:
                return None, source, None  # fetched on use
        config = _from_hub(b, lambda **kw: AutoConfig.from_pretrained(source, cache_dir=str(hf_cache_dir()), **kw))
    checkpoint_type = config.model_type
    tower = _tower_of(b, checkpoint_type)
    if tower is not None and tower.sub_config:
        config = getattr(config, tower.sub_config)
    if model_type is not None and model_type not in (checkpoint_type, config.model_type):
        raise MtftError(f"{b.name}: backbone.config model_type {model_type!r} does not match the checkpoint's "
                        f"{checkpoint_type!r}; leave model_type out to override fields of the checkpoint's config")
    _apply(b, config, overrides)
    return config, source, tower


def _source(b: BackboneConfig) -> Path | str | None:
    """Where the weights (or, for weights 'none', the base config) are: a folder, a hub id, or None."""
    if b.weights == "package":
        return packaged_model_dir(b.model_id)
    if b.weights == "file" or (b.weights == "none" and b.weights_path):
        folder = Path(b.weights_path).expanduser()
        if not (folder / "config.json").is_file():
            what = "does not exist" if not folder.exists() else "has no config.json"
            raise MtftError(f"{b.name}: weights_path {folder} {what}; weights: {b.weights} wants a model folder "
                            f"written by save_pretrained (config.json and the weights)")
        return folder
    if b.weights == "hub":
        return b.model_id
    if b.model_id in PACKAGED_MODELS:
        return packaged_model_dir(b.model_id)
    return b.model_id if (b.config or {}).get("model_type") is None and _is_hub_id(b.model_id) else None


def _is_hub_id(model_id: str) -> bool:
    return bool(model_id) and model_id.count("/") <= 1 and not model_id.startswith((".", "/", "~"))


def _from_model_type(b: BackboneConfig, model_type: str, fields: dict) -> Any:
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        import difflib

        close = difflib.get_close_matches(model_type, list(CONFIG_MAPPING_NAMES), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise MtftError(f"{b.name}: backbone.config model_type {model_type!r} is not a transformers model type{hint}")
    _check_fields(b, AutoConfig.for_model(model_type), fields)
    try:
        config = AutoConfig.for_model(model_type, **fields)
    except (TypeError, ValueError) as e:
        raise MtftError(f"{b.name}: backbone.config does not make a {model_type} config: {_first_line(e)}") from None
    tower = _tower_of(b, model_type)
    return getattr(config, tower.sub_config) if tower is not None and tower.sub_config else config


def _tower_of(b: BackboneConfig, model_type: str) -> _Tower | None:
    """The vision tower of a model type, None for a text model; an error for other vision or
    encoder-decoder models."""
    if model_type in _VISION_TOWERS:
        return _VISION_TOWERS[model_type]
    from transformers import AutoConfig

    probe = AutoConfig.for_model(model_type)
    if any(hasattr(probe, f) for f in ("vision_config", "image_size", "num_channels", "patch_size")):
        raise MtftError(f"{b.name}: model_type {model_type!r} is a vision or multimodal model this project does not "
                        f"wrap; supported vision towers: {', '.join(_VISION_TOWERS)} (text: BERT-like encoders)")
    if getattr(probe, "is_encoder_decoder", False):
        raise MtftError(f"{b.name}: model_type {model_type!r} is an encoder-decoder model; use an encoder-only text "
                        f"model (BERT, MiniLM, RoBERTa, MPNet, ...)")
    return None


def _check_fields(b: BackboneConfig, config: Any, fields: dict) -> None:
    unknown = sorted(k for k in fields if not hasattr(config, k))
    if unknown:
        raise MtftError(f"{b.name}: backbone.config field(s) {', '.join(map(repr, unknown))} are not fields of a "
                        f"{config.model_type} config ({type(config).__name__})")


def _apply(b: BackboneConfig, config: Any, overrides: dict) -> None:
    _check_fields(b, config, overrides)
    for key, value in overrides.items():
        setattr(config, key, value)


def _config_digest(config: Any) -> str:
    d = {k: v for k, v in config.to_dict().items() if k not in _NOT_FUNCTION}
    return hashlib.blake2b(json.dumps(d, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _read_config(b: BackboneConfig, load: Callable[..., Any], where: str) -> Any:
    try:
        return load()
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise MtftError(f"{b.name}: no usable config in {where}: {_first_line(e)}") from None


# --- weights ---------------------------------------------------------------------------------


def _load(b: BackboneConfig, cls: Any, config: Any, source: Path | str) -> nn.Module:
    """``cls.from_pretrained`` from a folder or the hub, in float32; an error if tensors stay uninitialised."""
    def load(**kwargs: Any) -> Any:
        return cls.from_pretrained(source, config=config, dtype=torch.float32, output_loading_info=True,
                                   ignore_mismatched_sizes=True, **kwargs)  # mismatches: reported below

    try:
        if isinstance(source, Path):
            model, info = load()
        else:
            model, info = _from_hub(b, lambda **kw: load(cache_dir=str(hf_cache_dir()), **kw))
    except (RuntimeError, ValueError) as e:  # a config that cannot be built, unreadable files
        raise MtftError(f"{b.name}: the weights in {_where(source)} do not fit the model{_hint(b)}: "
                        f"{_first_line(e)}") from None
    text = not any(t.cls == cls.__name__ for t in _VISION_TOWERS.values())
    missing = sorted(k for k in info.get("missing_keys", ()) if not (text and "pooler." in k))
    mismatched = sorted(f"{k} {tuple(ckpt)} in the file, {tuple(ours)} in the model"
                        for k, ckpt, ours in info.get("mismatched_keys", ()))
    if missing or mismatched:
        problems = [f"{label} ({len(keys)}): {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("shape mismatch", mismatched)) if keys]
        raise MtftError(f"{b.name}: the weights in {_where(source)} do not fit the model{_hint(b)}: "
                        f"{'; '.join(problems)}")
    return model


def _without_unused_parameters(model: nn.Module) -> nn.Module:
    """No parameter the wrapper's forward leaves without a gradient (DDP, without
    ``find_unused_parameters``, fails on those): a text model's pooler becomes an ``Identity``
    (mean pooling does not use it), and DINOv2's ``mask_token`` (used only with
    ``bool_masked_pos``) becomes a buffer, keeping its state-dict key."""
    if isinstance(getattr(model, "pooler", None), nn.Module) and not hasattr(model.config, "image_size"):
        model.pooler = nn.Identity()  # no parameters, and callable for forwards that always call it
    embeddings = getattr(model, "embeddings", None)
    token = getattr(embeddings, "mask_token", None)
    if isinstance(token, nn.Parameter) and model.config.model_type.startswith("dinov2"):
        del embeddings.mask_token
        embeddings.register_buffer("mask_token", token.detach().clone())
    return model


def _hint(b: BackboneConfig) -> str:
    return f" (with backbone.config {b.config})" if b.config else ""


def _where(source: Path | str) -> str:
    return f"folder {source}" if isinstance(source, Path) else f"hub id {source} (cache {hf_cache_dir()})"


def _from_hub(b: BackboneConfig, load: Callable[..., Any]) -> Any:
    """``load(local_files_only=...)``: from the cache first, then (online) from the hub; one-line errors."""
    cache = hf_cache_dir()
    try:
        return load(local_files_only=True)
    except OSError:
        offline = hub_offline()
        if offline or not hub_reachable():  # a DNS probe: no 45 s of retries without a network
            why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
            if b.weights == "none":
                raise MtftError(
                    f"{b.name}: weights 'none' without a model_type in backbone.config start from the config of "
                    f"{b.model_id}, which is not in the Hugging Face cache {cache} and {why}; give backbone.config a "
                    f"model_type (e.g. {{\"model_type\": \"bert\", \"hidden_size\": 32, ...}}) or weights_path a "
                    f"model folder") from None
            raise MtftError(
                f"{b.name}: {b.model_id} is not in the Hugging Face cache {cache} and {why} (weights: {b.weights}); "
                f"download it where there is internet, or use weights: package (packaged: "
                f"{', '.join(PACKAGED_MODELS)}) or weights: file with weights_path a model folder") from None
    try:
        return load(local_files_only=False)
    except OSError as e:
        raise MtftError(f"{b.name}: could not get {b.model_id} from the Hugging Face hub (cache {cache}): "
                        f"{_first_line(e)}; set HF_HUB_OFFLINE=1 on machines without internet to fail fast") from None


def _cached(model_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model_id, filename, cache_dir=hf_cache_dir())
    return found if isinstance(found, str) else None


def _input_stats(b: BackboneConfig, source: Path | str | None, tower: _Tower) -> tuple[tuple, tuple]:
    """image_mean / image_std of the checkpoint's preprocessor_config.json, else the tower's defaults."""
    path: str | Path | None = None
    if isinstance(source, Path):
        path = source / "preprocessor_config.json"
    elif isinstance(source, str) and b.weights in ("hub", "none"):
        path = _cached(source, "preprocessor_config.json")
        if path is None and b.weights == "hub" and not hub_offline() and hub_reachable():
            try:
                from huggingface_hub import hf_hub_download

                path = hf_hub_download(source, "preprocessor_config.json", cache_dir=hf_cache_dir())
            except Exception:  # noqa: BLE001 - optional file: the defaults hold without it
                path = None
    if path is not None and Path(path).is_file():
        try:
            pre = json.loads(Path(path).read_text())
            mean, std = pre.get("image_mean"), pre.get("image_std")
            if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
                return tuple(mean), tuple(std)
        except (OSError, ValueError):
            pass
    return tower.mean, tower.std


@contextlib.contextmanager
def _quiet():
    """No load reports (a full CLIP checkpoint's text tower is 'unexpected' by design; what matters
    raises) and no progress bars while loading."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
