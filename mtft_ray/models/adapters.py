"""Parameter-efficient finetuning: LoRA adapters injected with ``peft``, and what trains.

``finetune.peft: {method: lora, r, alpha, dropout, target_modules}`` puts LoRA adapters into the
backbone's matching layers (``peft.inject_adapter_in_model``: the model keeps its own class and
attributes, so every family's ``num_features`` and input normalisation still hold) and freezes
everything else. Only the adapters then train, and only they are checkpointed
(:func:`finetuned_state`; ``peft``'s own adapter state dict, loadable with
``set_peft_model_state_dict``), so a finetuned ViT-L costs megabytes, not a full copy.

Default targets (:func:`default_target_modules`) follow each family's attention projections, the
layers LoRA was designed for; convolutional timm models (the default EfficientNet-Lite0) get
every 1x1 convolution and linear layer (LoRA on a k x k or depthwise convolution would not keep
timm's "same" padding).

Example:
    >>> from mtft_ray.config.schema import BackboneConfig, PeftConfig
    >>> model = finetune_backbone(BackboneConfig(weights="none"), PeftConfig(r=4))
    >>> counts = parameter_counts(model)
    >>> counts["trainable"] < counts["total"] // 10
    True
    >>> model.peft_targets  # EfficientNet-Lite0: its 1x1 convolutions
    ['conv_head', 'conv_pw', 'conv_pwl']
    >>> sorted(finetuned_state(model))[0]
    'blocks.0.0.conv_pw.lora_A.weight'
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mtft_ray.config.schema import BackboneConfig, PeftConfig
from mtft_ray.errors import MtftError
from mtft_ray.models.backbones import build_backbone

__all__ = ["default_target_modules", "finetune_backbone", "finetuned_state", "has_adapters", "inject_lora",
           "is_adapter_state", "load_finetuned", "matching_modules", "parameter_counts"]

# Attention projections per architecture, by module name (peft's rule: a name matches a pattern
# when it equals it or ends with "." + pattern). Checked in this order; the first that matches
# any layer of the model is the default.
_ATTENTION_TARGETS = (
    ("q_proj", "v_proj"),  # HF CLIP, SigLIP
    ("query", "value"),  # HF BERT / MiniLM, DINOv2, ViT
    ("qkv", "proj"),  # timm ViT / DeiT / EVA (fused qkv)
    ("c_fc", "c_proj"),  # open_clip ViT: its MLP (attention is an nn.MultiheadAttention, whose out_proj
    # weight it reads directly: LoRA there would never train)
)


def _is_adaptable(module: nn.Module) -> bool:
    """A layer LoRA can wrap without changing what it computes: Linear, or a 1x1 ungrouped Conv2d."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1


def matching_modules(model: nn.Module, patterns: list[str]) -> dict[str, list[str]]:
    """The model's module names each pattern matches, by peft's rule (equal, or ends with ``.pattern``)."""
    names = [n for n, _ in model.named_modules() if n]
    return {p: [n for n in names if n == p or n.endswith("." + p)] for p in patterns}


def default_target_modules(model: nn.Module) -> list[str]:
    """The layers LoRA adapts when ``target_modules`` is not given: the first set of attention
    projections the model has (see ``_ATTENTION_TARGETS``), else every Linear and 1x1 Conv2d.

    Raises:
        MtftError: the model has no layer LoRA could adapt.
    """
    for patterns in _ATTENTION_TARGETS:
        found = matching_modules(model, list(patterns))
        hit = [p for p, names in found.items() if names]
        if hit:
            return hit
    modules = [(n, m) for n, m in model.named_modules() if n]
    names = [n for n, m in modules if _is_adaptable(m)]
    if not names:
        raise MtftError(f"{type(model).__name__}: no Linear or 1x1 Conv2d layer for LoRA to adapt; set "
                        f"finetune.peft.target_modules")
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})  # short patterns where a leaf name is unambiguous
    if all(_is_adaptable(m) for n, m in modules if n.rsplit(".", 1)[-1] in leaves):
        return leaves
    return names


def inject_lora(model: nn.Module, peft_cfg: PeftConfig) -> nn.Module:
    """LoRA adapters in ``model``'s target layers (in place); every other parameter frozen.

    The adapters' initialisation is seeded by ``peft_cfg.seed`` without touching the global RNG,
    so a driver and every Ray Train worker build the same adapters.

    Raises:
        MtftError: a ``target_modules`` pattern that matches no module (named, with the model's
            adaptable layers as a hint), or one that matches only layers LoRA cannot wrap.
    """
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(peft_cfg.target_modules) if peft_cfg.target_modules else default_target_modules(model)
    found = matching_modules(model, targets)
    modules = dict(model.named_modules())
    missing = [p for p, names in found.items() if not names]
    if missing:
        hint = sorted({n.rsplit(".", 1)[-1] for n, m in modules.items() if n and _is_adaptable(m)})
        raise MtftError(f"finetune.peft.target_modules: {', '.join(map(repr, missing))} matched no module of "
                        f"{type(model).__name__} (a pattern matches a module name equal to it or ending in "
                        f"'.<pattern>'); its Linear / 1x1 conv layers are named: {', '.join(hint[:20]) or 'none'}")
    unfit = [p for p, names in found.items() if not any(_is_lora_layer(modules[n]) for n in names)]
    if unfit:
        raise MtftError(f"finetune.peft.target_modules: {', '.join(map(repr, unfit))} matched only modules LoRA "
                        f"cannot wrap ({', '.join(sorted({type(modules[n]).__name__ for p in unfit for n in found[p]}))}); "
                        f"target Linear, Conv or Embedding layers")
    config = LoraConfig(r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
                        target_modules=targets, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(peft_cfg.seed)
        model = inject_adapter_in_model(config, model)
    model.peft_targets = targets
    return model


def _is_lora_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)) or \
        type(module).__name__ == "Conv1D"  # transformers' GPT-2 style projection


def finetune_backbone(b: BackboneConfig, peft_cfg: PeftConfig | None) -> nn.Module:
    """The backbone multitask finetuning trains: the pretrained model, with LoRA adapters when
    ``peft_cfg`` is set (only they train); on CPU, eval mode."""
    model = build_backbone(b)
    return model if peft_cfg is None else inject_lora(model, peft_cfg).eval()


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` (or a module inside it) holds peft adapter layers."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def is_adapter_state(state: dict[str, torch.Tensor]) -> bool:
    """Whether a saved state dict holds LoRA adapter weights only (what a peft run checkpoints)."""
    return bool(state) and all(re.search(r"\.lora_[A-Za-z_]+\.", k) for k in state)


def finetuned_state(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """What a finetuned backbone is saved as: the adapter weights (``peft``'s adapter state dict)
    when it has adapters, else its full state dict.

    Args:
        state: the model's full state dict already gathered (ZeRO-3), else read from ``model``.
    """
    if not has_adapters(model):
        return model.state_dict() if state is None else state
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state)


def load_finetuned(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load what :func:`finetuned_state` saved back onto the model (adapters onto the base model).

    Raises:
        MtftError: adapter weights for a model without adapters (set ``finetune.peft``), or weights
            that do not fit (adapters missing or unexpected).
    """
    if not is_adapter_state(state):
        model.load_state_dict(state)
        return model
    if not has_adapters(model):
        raise MtftError("these weights are LoRA adapters only: build the backbone with the same finetune.peft "
                        "settings to load them")
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, state)
    wanted = {k for k in model.state_dict() if ".lora_" in k}
    missing = sorted(wanted & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise MtftError(f"adapter weights do not fit this backbone's adapters: missing {missing[:4]}, unexpected "
                        f"{sorted(result.unexpected_keys)[:4]} (another finetune.peft r or target_modules?)")
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Trainable and total parameters (each counted once)."""
    params = {id(p): p for p in model.parameters()}.values()
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}
