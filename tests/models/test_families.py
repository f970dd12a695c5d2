"""Hugging Face and open_clip backbones: real (tiny, random-init or packaged) models, no mocks.

Each family takes one finetuning step on store-shaped inputs and gives finite features in eval
mode; the packaged MiniLM pools as sentence-transformers does; hub misses fail in one line.
"""

import doctest
import json

import pytest
import torch
import torch.nn.functional as F

from mtft_ray.config.schema import BackboneConfig
from mtft_ray.data.tokenize import load_tokenizer, tokenize
from mtft_ray.errors import MtftError
from mtft_ray.models import hf, openclip
from mtft_ray.models.backbones import build_backbone, check_backbone_config
from mtft_ray.models.hf import CLIP_MEAN, HFTextEncoder, HFVisionEncoder, mean_pool
from mtft_ray.models.inputs import IMAGENET_MEAN, model_input, normalization
from mtft_ray.models.openclip import OpenClipImageEncoder
from mtft_ray.models.state import model_fingerprint

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "intermediate_size": 64, "vocab_size": 30522}  # the MiniLM tokenizer's vocabulary
_VISION = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
FAMILIES = {
    "hf-bert": BackboneConfig(name="hf:tiny-bert", weights="none", config=TINY_BERT),
    "hf-clip": BackboneConfig(name="hf:tiny-clip", weights="none",
                              config={"model_type": "clip_vision_model", "intermediate_size": 64, **_VISION}),
    "hf-siglip": BackboneConfig(name="hf:tiny-siglip", weights="none",
                                config={"model_type": "siglip_vision_model", "intermediate_size": 64, **_VISION}),
    "hf-dinov2": BackboneConfig(name="hf:tiny-dinov2", weights="none",
                                config={"model_type": "dinov2", "mlp_ratio": 2, **_VISION}),
    "open_clip": BackboneConfig(name="open_clip:ViT-B-32", weights="none", config={
        "width": 64, "layers": 2, "head_width": 32, "patch_size": 8, "image_size": 32, "embed_dim": 24}),
}
SENTENCES = ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today.",
             "A child rides a bicycle down the street.", "Heavy rain flooded the village overnight.", "ok"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(MINILM)


@pytest.fixture(scope="module")
def minilm():
    return build_backbone(BackboneConfig(name=f"hf:{MINILM}", weights="package"))


def _rows(tokenizer, texts, length=32) -> torch.Tensor:
    rows, _ = tokenize(texts, tokenizer, max_length=length)
    return torch.from_numpy(rows)  # int32 (N, 2, L), as a text store holds them


def _store_batch(model, tokenizer, n: int) -> torch.Tensor:
    """n store rows in the model's modality: token rows, or 64 px uint8 grayscale images."""
    if model.modality == "text":
        return _rows(tokenizer, (SENTENCES * n)[:n])
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, 256, (n, 1, 8, 8), generator=g).float()
    return F.interpolate(coarse, size=64, mode="bilinear").squeeze(1).round().clamp(0, 255).to(torch.uint8)


def _prototype_loss(features: torch.Tensor, n_way: int, n_shot: int) -> torch.Tensor:
    """Prototypical-network loss of one task: rows are n_way classes x (n_shot support + rest query)."""
    per_class = features.shape[0] // n_way
    f = features.view(n_way, per_class, -1)
    prototypes = f[:, :n_shot].mean(1)
    queries = f[:, n_shot:].reshape(-1, f.shape[-1])
    logits = -torch.cdist(queries, prototypes) ** 2
    labels = torch.arange(n_way).repeat_interleave(per_class - n_shot)
    return F.cross_entropy(logits, labels)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_finetuning_step_and_an_evaluation(family, tokenizer):
    torch.manual_seed(0)
    model = build_backbone(FAMILIES[family])
    assert isinstance(model, (HFTextEncoder, HFVisionEncoder, OpenClipImageEncoder))
    assert model.modality == ("text" if family == "hf-bert" else "image")
    assert isinstance(model.architecture, str) and model.architecture.split(":")[0] in ("hf", "open_clip")
    assert not model.training  # build_backbone gives eval mode
    mean, std = normalization(model)
    if model.modality == "image":
        assert (mean, std) == (model.input_mean, model.input_std)
    batch = model_input(_store_batch(model, tokenizer, 8), mean, std)
    assert batch.dtype == (torch.long if model.modality == "text" else torch.float32)
    fingerprint = model_fingerprint(model)

    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = _prototype_loss(model(batch), n_way=2, n_shot=2)
    loss.backward()
    # every parameter takes part (DDP without find_unused_parameters fails otherwise)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before)
    assert model_fingerprint(model) != fingerprint

    model.eval()
    with torch.no_grad():
        features = model(batch)
    assert features.shape == (8, model.num_features)
    assert torch.isfinite(features).all()


def test_hf_vision_towers_take_inputs_of_any_size():
    """64 px inputs on towers configured for 32 px: position embeddings interpolated, no resize."""
    for family in ("hf-clip", "hf-siglip", "hf-dinov2"):
        model = build_backbone(FAMILIES[family])
        assert model.image_size == (32, 32)
        with torch.no_grad():
            native, larger = model(torch.randn(2, 3, 32, 32)), model(torch.randn(2, 3, 64, 64))
        assert native.shape == larger.shape == (2, 32)
    assert build_backbone(FAMILIES["hf-siglip"]).input_mean == (0.5, 0.5, 0.5)
    assert build_backbone(FAMILIES["hf-dinov2"]).input_mean == IMAGENET_MEAN
    assert build_backbone(FAMILIES["hf-clip"]).input_mean == CLIP_MEAN


def test_packaged_minilm_mean_pools_like_sentence_transformers(minilm, tokenizer):
    assert minilm.architecture == "hf:bert" and minilm.num_features == 384
    rows = _rows(tokenizer, SENTENCES, length=64)
    x = model_input(rows, *normalization(minilm))
    with torch.no_grad():
        got = minilm(x)
        hidden = minilm.model(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state
    mask = x[:, 1].unsqueeze(-1).float()
    by_hand = (hidden * mask).sum(1) / mask.sum(1)
    assert got.shape == (len(SENTENCES), 384)
    assert torch.allclose(got, by_hand, atol=1e-5)
    assert torch.allclose(mean_pool(hidden, x[:, 1]), by_hand, atol=1e-6)
    # the padding past the batch's longest row is trimmed: as if the store held shorter rows
    with torch.no_grad():
        shorter = minilm(model_input(_rows(tokenizer, SENTENCES, length=16), *normalization(minilm)))
    assert torch.allclose(got, shorter, atol=1e-5)
    e = F.normalize(got, dim=-1)
    paraphrase, unrelated = (e[0] * e[1]).sum(), (e[0] * e[2]).sum()
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)


def test_packaged_minilm_matches_the_sentence_transformers_reference(minilm, tokenizer):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from mtft_ray.packages import packaged_model_dir

    reference = sentence_transformers.SentenceTransformer(str(packaged_model_dir(MINILM)), device="cpu")
    expected = reference.encode(SENTENCES, convert_to_tensor=True)  # mean pooling, then L2 normalisation
    with torch.no_grad():
        got = minilm(model_input(_rows(tokenizer, SENTENCES, length=64), *normalization(minilm)))
    assert torch.allclose(F.normalize(got, dim=-1), expected, atol=1e-5)


def test_full_clip_checkpoint_gives_its_vision_tower(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    text = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    full = CLIPModel(CLIPConfig(vision_config={**_VISION, "intermediate_size": 64}, text_config=text,
                                projection_dim=16)).eval()
    full.save_pretrained(tmp_path)
    stats = {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(stats))
    b = BackboneConfig(name="hf:openai/clip-tiny", weights="file", weights_path=str(tmp_path))
    check_backbone_config(b)
    model = build_backbone(b)
    assert model.architecture == "hf:clip_vision_model"
    assert (model.input_mean, model.input_std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    assert not any(n.startswith("model.text") for n, _ in model.named_parameters())
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixels), full.vision_model(pixel_values=pixels).pooler_output)
    # backbone.config overrides the vision config; one that changes shapes does not fit
    assert build_backbone(BackboneConfig(name="hf:x", weights="file", weights_path=str(tmp_path),
                                         config={"attention_dropout": 0.1})).model.config.attention_dropout == 0.1
    with pytest.raises(MtftError, match=r"do not fit the model .*shape mismatch"):
        build_backbone(BackboneConfig(name="hf:x", weights="file", weights_path=str(tmp_path),
                                      config={"intermediate_size": 128}))


def test_hub_miss_offline_is_one_line_naming_model_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    for b in (BackboneConfig(name="hf:nobody-org/not-a-cached-model", weights="hub"),
              BackboneConfig(name="open_clip:ViT-B-32/laion2b_s34b_b79k", weights="hub")):
        for call in (build_backbone, check_backbone_config):
            with pytest.raises(MtftError) as info:
                call(b)
            message = str(info.value)
            assert "\n" not in message
            assert b.model_id.split("/")[0] in message and str(tmp_path / "hf-cache") in message
            assert "HF_HUB_OFFLINE" in message


def test_check_errors_fast_and_clearly(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(MtftError, match=r"weights_path .*no-such-folder does not exist"):
        check_backbone_config(BackboneConfig(name="hf:x", weights="file", weights_path=str(missing)))
    with pytest.raises(MtftError, match=r"weights 'none' .*model_type"):
        check_backbone_config(BackboneConfig(name="hf:nobody-org/not-a-cached-model", weights="none",
                                             config={"hidden_size": 32}))
    with pytest.raises(MtftError, match=r"weights 'none' .*model_type"):
        build_backbone(BackboneConfig(name="hf:nobody-org/not-a-cached-model", weights="none"))
    with pytest.raises(MtftError, match=r"'num_hidden_layer' are not fields of a bert config"):
        check_backbone_config(BackboneConfig(name="hf:x", weights="none", config={**TINY_BERT, "num_hidden_layer": 1}))
    with pytest.raises(MtftError, match=r"'vit' is a vision or multimodal model"):
        check_backbone_config(BackboneConfig(name="hf:x", weights="none", config={"model_type": "vit"}))
    check_backbone_config(BackboneConfig(name=f"hf:{MINILM}", weights="package"))
    with pytest.raises(MtftError, match=r"did you mean ViT-B-32"):
        check_backbone_config(BackboneConfig(name="open_clip:ViT-B/32", weights="none"))
    with pytest.raises(MtftError, match=r"need a pretrained tag.*laion2b_s34b_b79k"):
        check_backbone_config(BackboneConfig(name="open_clip:ViT-B-32", weights="hub"))
    with pytest.raises(MtftError, match=r"'heads' are not open_clip vision-tower fields"):
        check_backbone_config(BackboneConfig(name="open_clip:ViT-B-32", weights="none", config={"heads": 2}))
    with pytest.raises(MtftError, match=r"weights file .* does not exist"):
        check_backbone_config(BackboneConfig(name="open_clip:ViT-B-32", weights="file",
                                             weights_path=str(tmp_path / "gone.bin")))


def test_random_init_from_a_packaged_config_with_overrides(minilm):
    b = BackboneConfig(name=f"hf:{MINILM}", weights="none", config={"num_hidden_layers": 1})
    model = build_backbone(b)
    assert model.model.config.num_hidden_layers == 1 and model.num_features == 384
    assert model_fingerprint(model) != model_fingerprint(minilm)


def test_fingerprint_tells_configs_of_equal_shapes_apart():
    def built(config):
        torch.manual_seed(0)
        return build_backbone(BackboneConfig(name="hf:tiny", weights="none", config=config))

    gelu, again, relu = built(TINY_BERT), built(TINY_BERT), built({**TINY_BERT, "hidden_act": "relu"})
    assert all(torch.equal(a, b) for a, b in zip(gelu.state_dict().values(), relu.state_dict().values()))
    assert model_fingerprint(gelu) == model_fingerprint(again) != model_fingerprint(relu)

    def tower(quick_gelu):
        torch.manual_seed(0)
        return build_backbone(BackboneConfig(name="open_clip:ViT-B-32", weights="none",
                                             config={**FAMILIES["open_clip"].config, "quick_gelu": quick_gelu}))

    assert model_fingerprint(tower(False)) != model_fingerprint(tower(True))


def test_open_clip_checkpoint_file_and_resizing(tmp_path):
    import open_clip

    torch.manual_seed(0)
    tiny = dict(FAMILIES["open_clip"].config)
    vision = {**open_clip.get_model_config("ViT-B-32")["vision_cfg"], **tiny}
    vision.pop("embed_dim")
    full = open_clip.create_model("ViT-B-32", embed_dim=tiny["embed_dim"], vision_cfg=vision).eval()
    path = tmp_path / "tiny-vit-b-32.bin"
    torch.save(full.state_dict(), path)
    model = build_backbone(BackboneConfig(name="open_clip:ViT-B-32/openai", weights="file", weights_path=str(path),
                                          config={**tiny, "quick_gelu": False}))
    assert (model.num_features, model.image_size, model.input_mean) == (24, (32, 32), CLIP_MEAN)
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        resized = F.interpolate(pixels, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        assert torch.allclose(model(pixels), full.encode_image(resized), atol=1e-6)
    with pytest.raises(MtftError, match=r"does not fit the ViT-B-32 model .*size mismatch"):
        build_backbone(BackboneConfig(name="open_clip:ViT-B-32", weights="file", weights_path=str(path),
                                      config={**tiny, "width": 32}))


@pytest.mark.parametrize("module", [hf, openclip])
def test_module_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
