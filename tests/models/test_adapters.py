"""LoRA adapters (finetune.peft): which layers, what trains, what is saved, and bad input.

Real peft on real timm models; the distributed resume from adapter-only checkpoints is in
tests/train/test_distributed.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mtft_ray.config.schema import BackboneConfig, FinetuneConfig, PeftConfig, TaskConfig
from mtft_ray.errors import MtftError
from mtft_ray.models.adapters import (default_target_modules, finetune_backbone, finetuned_state, has_adapters,
                                      is_adapter_state, load_finetuned, parameter_counts)
from mtft_ray.models.backbones import build_backbone
from mtft_ray.models.state import model_fingerprint
from mtft_ray.tasks.pool import make_tasks
from mtft_ray.train.loss import PrototypeHead
from mtft_ray.train.multitask import EpisodicModel, make_optimizer, param_groups, run_epoch
from mtft_ray.train.strategies import TorchStrategy

LITE0 = BackboneConfig()  # the packaged pretrained weights: every build is the same base model
VIT = BackboneConfig(name="vit_tiny_patch16_224", weights="none")


def test_default_targets_are_the_attention_projections_or_the_1x1_convolutions():
    assert default_target_modules(build_backbone(VIT)) == ["qkv", "proj"]
    assert default_target_modules(build_backbone(LITE0)) == ["conv_head", "conv_pw", "conv_pwl"]


def test_only_adapters_train_and_the_pretrained_function_is_unchanged_at_start():
    base = build_backbone(LITE0)
    model = finetune_backbone(LITE0, PeftConfig(r=4))
    assert has_adapters(model) and not has_adapters(base)
    counts = parameter_counts(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert counts["total"] - counts["trainable"] == parameter_counts(base)["total"]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():  # LoRA's B starts at zero: the adapted model is the base model
        assert torch.allclose(model(x), base(x), atol=1e-5)
    # the adapters' initialisation is seeded: the driver and every worker build the same ones
    again = finetune_backbone(LITE0, PeftConfig(r=4))
    assert all(torch.equal(a, b) for a, b in zip(finetuned_state(model).values(), finetuned_state(again).values()))
    other = finetune_backbone(LITE0, PeftConfig(r=4, seed=1))
    assert any(not torch.equal(a, b) for a, b in zip(finetuned_state(model).values(), finetuned_state(other).values()))


def test_a_finetuning_step_moves_only_adapters_and_the_adapter_state_loads_back():
    from conftest import make_store

    small_store = make_store(n_domains=2, classes_per_domain=4, per_class=6, size=32)  # 8 px would give no gradient
    torch.manual_seed(0)
    backbone = finetune_backbone(LITE0, PeftConfig(r=4))
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if ".lora_" not in k}
    cfg = FinetuneConfig(epochs=1, lr=1e-2)
    net = EpisodicModel(backbone, PrototypeHead(10.0))
    strategy = TorchStrategy(net, make_optimizer(param_groups(net, cfg), "adamw", cfg.lr, 0.9, 0.0))
    tasks = make_tasks(small_store, np.arange(small_store.num_classes), TaskConfig(n_way=3, n_shot=1, n_query=2, M=4))
    run_epoch(strategy, net, tasks, torch.from_numpy(small_store.images), cfg, 1, device=torch.device("cpu"))
    after = backbone.state_dict()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)  # nothing frozen moved (BN statistics too)
    state = finetuned_state(backbone)
    assert is_adapter_state(state) and any(v.abs().sum() > 0 for k, v in state.items() if ".lora_B." in k)
    fresh = finetune_backbone(LITE0, PeftConfig(r=4))
    assert model_fingerprint(fresh) != model_fingerprint(backbone)  # feature caches key on base + adapter
    load_finetuned(fresh, state)
    assert model_fingerprint(fresh) == model_fingerprint(backbone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), backbone.eval()(x))


def test_adapter_weights_refuse_a_model_without_adapters_or_with_other_ones():
    state = finetuned_state(finetune_backbone(LITE0, PeftConfig(r=4)))
    with pytest.raises(MtftError, match="LoRA adapters only"):
        load_finetuned(build_backbone(LITE0), state)
    with pytest.raises(MtftError, match="do not fit"):
        load_finetuned(finetune_backbone(LITE0, PeftConfig(r=4, target_modules=["conv_head"])), state)
    with pytest.raises(RuntimeError):  # another rank: peft's own shape check
        load_finetuned(finetune_backbone(LITE0, PeftConfig(r=8)), state)


def test_an_unknown_target_module_is_one_clear_error_naming_the_layers_there_are():
    with pytest.raises(MtftError) as e:
        finetune_backbone(LITE0, PeftConfig(target_modules=["q_proj"]))
    msg = str(e.value)
    assert "'q_proj' matched no module of EfficientNet" in msg and "conv_pw" in msg and "\n" not in msg
    with pytest.raises(MtftError, match="cannot wrap"):
        finetune_backbone(LITE0, PeftConfig(target_modules=["bn1"]))


def test_the_lora_rank_is_a_config_key_a_sweep_can_set():
    from mtft_ray.config import load_config
    from mtft_ray.sweep.space import with_params

    cfg = with_params(load_config(None), {"finetune.peft.r": 16})
    assert cfg.finetune.peft == PeftConfig(r=16)
    with pytest.raises(MtftError, match="peft"):
        load_config(None, ["finetune.peft.rank=4"])
