"""Training-time augmentation (``finetune.augment``): a seeded, repeatable kornia recipe on the
device batch, an exact no-op for ``none``, rejected for text, and a real finetuning run with it."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from test_cli import make_folder_tree  # noqa: E402

from mtft_ray.config.schema import ExperimentConfig, FinetuneConfig
from mtft_ray.data.store import build_store
from mtft_ray.errors import MtftError
from mtft_ray.tasks.pool import make_tasks
from mtft_ray.train.augment import BatchAugment, check_augment


def _rgb(b: int = 8, size: int = 32) -> torch.Tensor:
    """Smooth colour gradients plus noise: crops, flips and jitter all visibly change them."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs = [np.stack([yy * rng.uniform(50, 255), xx * rng.uniform(50, 255), (1 - yy) * xx * 255], -1)
            + rng.normal(0, 8, (size, size, 3)) for _ in range(b)]
    return torch.from_numpy(np.clip(np.stack(imgs), 0, 255).astype(np.uint8))


def test_none_is_the_identical_tensor_and_draws_nothing():
    batch, state = _rgb(), torch.get_rng_state()
    aug = BatchAugment("none", seed=3)
    assert aug(batch, epoch=1, step=1) is batch
    assert aug.for_epoch(1) is None  # the training loop then calls nothing at all
    assert torch.equal(torch.get_rng_state(), state)
    assert FinetuneConfig().augment == "none"


def test_dinov2_changes_rgb_and_repeats_exactly_per_seed_epoch_step_rank():
    batch = _rgb()
    aug = BatchAugment("dinov2", seed=0)
    out = aug(batch, epoch=1, step=5, rank=0)
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.is_contiguous()
    assert (out != batch).any(dim=(1, 2, 3)).all()  # every image of the batch is changed
    assert torch.equal(out, BatchAugment("dinov2", seed=0)(batch, epoch=1, step=5, rank=0))  # a rerun repeats it
    for other in ({"epoch": 1, "step": 6, "rank": 0}, {"epoch": 2, "step": 5, "rank": 0},
                  {"epoch": 1, "step": 5, "rank": 1}):
        assert not torch.equal(out, aug(batch, **other)), other
    assert not torch.equal(out, BatchAugment("dinov2", seed=1)(batch, epoch=1, step=5, rank=0))
    assert torch.equal(aug.for_epoch(1, rank=0)(batch, 5), out)  # what train_epoch calls


def test_dinov2_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    BatchAugment("dinov2", seed=0)(_rgb(), epoch=1, step=1)
    assert torch.equal(torch.rand(5), expected)


def test_grayscale_glyph_batches_keep_their_layout():
    gray = _rgb(6, 24)[..., 0].contiguous()  # (B, H, W)
    out = BatchAugment("dinov2", seed=0)(gray, epoch=1, step=1)
    assert out.shape == gray.shape and out.dtype == torch.uint8 and not torch.equal(out, gray)


def test_text_cannot_be_augmented():
    tokens = [np.stack([np.arange(6, dtype=np.int32) + i, np.ones(6, np.int32)]) for i in range(6)]
    store = build_store(tokens, [("d", f"c{i % 3}") for i in range(6)])
    check_augment("none", store)
    with pytest.raises(MtftError, match="text"):
        check_augment("dinov2", store)
    with pytest.raises(MtftError, match="text cannot be augmented"):
        BatchAugment("dinov2")(torch.from_numpy(store.images), epoch=1, step=1)
    with pytest.raises(ValidationError):
        FinetuneConfig(augment="randaugment")


def test_finetuning_with_dinov2_runs_and_repeats(tmp_path, monkeypatch):
    """A real in-process multitask finetune on a folder of RGB images: ``dinov2`` trains on other
    pixels than ``none`` (other losses), and two runs with the same seed give identical losses."""
    from mtft_ray.experiment import Experiment

    monkeypatch.setenv("MTFT_RAY_CACHE", str(tmp_path / "cache"))
    make_folder_tree(tmp_path / "data", domains=2, classes=4, per_class=6, size=32)
    torch.set_num_threads(1)

    def losses(augment: str) -> list[float]:
        cfg = ExperimentConfig.model_validate({
            "data": {"source": "folder", "options": {"root": str(tmp_path / "data")}, "image_size": 32,
                     "split": {"target_domains": 1, "val_domains": 0}},
            "tasks": {"n_way": 3, "n_shot": 1, "n_query": 2, "M": 4},
            "finetune": {"epochs": 2, "tasks_per_step": 2, "augment": augment, "keep_pretrained": False},
            "eval": {"n_way": 3, "shots": [1], "n_query": 2, "episodes": 5}, "run": {"progress": False}})
        exp = Experiment(cfg)
        assert exp.store.image_shape == (32, 32, 3)
        run = exp.finetune_multitask(make_tasks(exp.store, exp.split.source, cfg.tasks), validate=False)
        return [x for h in run.state.history for x in h["step_losses"]]

    first = losses("dinov2")
    assert len(first) == 4 and all(np.isfinite(first))
    assert losses("dinov2") == first  # bit-identical: the augmentation is seeded
    assert losses("none") != first
