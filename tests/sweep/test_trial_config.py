"""A trial's config: the validated base plus the sampled keys, derived without mutating anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtft_ray.config.load import set_dotted
from mtft_ray.config.schema import ExperimentConfig, StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.sweep.driver import epoch_metrics, trial_config
from mtft_ray.sweep.space import with_params


def test_with_params_validates_the_sampled_values_once_and_leaves_the_base_alone():
    base = ExperimentConfig.model_validate({"tasks": {"M": 10}})
    cfg = with_params(base, {"tasks.M": 25, "tasks.domains": ["a"], "tasks.domains[a]": True})
    assert (cfg.tasks.M, cfg.tasks.domains) == (25, ["a"]) and (base.tasks.M, base.tasks.domains) == (10, None)
    assert with_params(base, {}) is base
    with pytest.raises(MtftError, match=r"trial config .*tasks.M"):
        with_params(base, {"tasks.M": 0}, "trial config {'tasks.M': 0}")


def test_trial_config_sets_threads_progress_and_s3_storage_on_a_copy(tmp_path):
    base = ExperimentConfig()
    s3 = StorageConfig(path="s3://bucket/sweeps/q", endpoint_url="http://127.0.0.1:9")
    cfg = trial_config(base, {"finetune.lr": 1e-5}, tmp_path / "trial_abc" / "run", threads=2, storage=s3)
    assert (cfg.finetune.lr, cfg.run.threads, cfg.run.progress) == (1e-5, 2, False)
    assert cfg.storage.path == "s3://bucket/sweeps/q/trial_abc/train" and cfg.storage.endpoint_url == s3.endpoint_url
    assert base.run.progress and base.run.threads is None and base.storage.path is None and s3.path.endswith("/q")
    own = ExperimentConfig.model_validate({"run": {"threads": 1}, "storage": {"path": "/x"}})
    kept = trial_config(own, {}, Path("t/run"), threads=2, storage=s3)
    assert kept.run.threads == 1 and kept.storage.path == "/x"  # the experiment's own settings win


def test_epoch_metrics_take_what_every_trainer_path_reports():
    m = {"epoch": 2, "train_loss": 0.5, "train_acc": 0.9, "val_acc": None, "images_per_s": 123.456,
         "global_step": 8, "score": 2.0}
    assert epoch_metrics(m) == {"epoch": 2, "global_step": 8, "train_loss": 0.5, "train_acc": 0.9,
                                "images_per_s": 123.5}
    with_val = epoch_metrics({**m, "val_acc": 0.7, "val_ci95": 0.02})
    assert with_val["val_acc"] == 0.7 and with_val["val_ci95"] == 0.02


def test_one_dotted_setter():
    assert set_dotted({}, "a.b.c", 1) == {"a": {"b": {"c": 1}}}
    with pytest.raises(MtftError, match="'a' is not a section"):
        set_dotted({"a": 3}, "a.b", 1)
