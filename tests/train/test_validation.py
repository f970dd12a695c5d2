"""Validation that can decide: within-epoch validation, early stopping, resumes within an epoch,
checks of the validation split and the plan before training, the diagnosis when finetuning hurts."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_store

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config  # noqa: E402

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.evaluation.evaluate import EpisodeEvaluator, validation_evaluator, validation_warnings
from mtft_ray.models.backbones import create_backbone
from mtft_ray.tasks.pool import make_tasks
from mtft_ray.train.loss import PrototypeHead
from mtft_ray.train.lr_probe import probe_lr, with_lr
from mtft_ray.train.multitask import EpisodicModel, epoch_steps, param_groups
from mtft_ray.train.worker import WorkerData, check_validation_plan, finetune_local, run_worker, validation_spans


def _setup(**finetune):
    store = make_store(n_domains=2, classes_per_domain=6, per_class=8, size=32)
    cfg = ExperimentConfig.model_validate({
        "tasks": {"n_way": 3, "n_shot": 1, "n_query": 2, "M": 6},
        "finetune": {"epochs": 2, "optimizer": "sgd", "lr": 0.05, "val_episodes": 30, "val_queries": 3, **finetune},
        "eval": {"n_way": 3, "shots": [1], "episodes": 30}, "run": {"progress": False}})
    tasks = make_tasks(store, np.arange(6), cfg.tasks)  # domain d0 trains, d1 validates
    data = WorkerData(store, torch.from_numpy(store.images), validation_evaluator(cfg, store, np.arange(6, 12)))
    return cfg, tasks, data


class ScriptedValidation(EpisodeEvaluator):
    """Real validation episodes whose accuracies follow a script: the stopping rule, not learning, is tested."""

    def __init__(self, real: EpisodeEvaluator, curve: list[float]) -> None:
        self.__dict__.update(real.__dict__)
        self.curve, self.calls = list(curve), 0

    def evaluate_features(self, features: torch.Tensor) -> list[dict]:
        real = super().evaluate_features(features)
        acc = self.curve[self.calls]
        self.calls += 1
        return [{**real[0], "acc": acc}]


def _reports(cfg, tasks, data, resume=None, keep: Path | None = None):
    seen = []

    def report(metrics, directory, name):
        seen.append((name, metrics))
        if keep is not None:
            shutil.copytree(directory, keep / name)  # the directory is gone once report returns

    state = run_worker(cfg, tasks, data, rank=0, world_size=1, device=torch.device("cpu"), resume=resume,
                       report=report)
    return state, seen


def test_validation_spans_put_every_val_every_th_global_step_and_the_epoch_end():
    assert validation_spans(6, 0, None) == [(0, 6)]
    assert validation_spans(6, 0, 2) == [(0, 2), (2, 4), (4, 6)]
    assert validation_spans(6, 6, 4) == [(0, 2), (2, 6)]        # global step 8 falls in the second epoch
    assert validation_spans(6, 0, 6) == [(0, 6)]


def test_early_stopping_stops_at_the_validation_the_patience_says():
    cfg, tasks, data = _setup(epochs=4, val_every=2, patience=2)
    # pretrained 0.50, then steps 2, 4, 6, 8, 10: best at step 4, stale at 6 and 8 -> stop at step 8
    data.val = ScriptedValidation(data.val, [0.50, 0.55, 0.60, 0.58, 0.60, 0.99, 0.99])
    state, seen = _reports(cfg, tasks, data)
    assert [m["global_step"] for _, m in seen] == [2, 4, 6, 8]
    assert [n for n, _ in seen] == ["epoch_0001_step_0000002", "epoch_0001_step_0000004", "epoch_0001",
                                    "epoch_0002_step_0000008"]
    assert state.global_step == 8 and state.best_step == 4 and state.best_epoch == 1 and state.stale == 2
    assert "no new best in 2 validations (finetune.patience=2)" in state.stopped_early
    assert "global step 8" in state.stopped_early and seen[-1][1]["stopped_early"] == state.stopped_early
    assert data.val.calls == 5  # epoch 0 and the four validations: nothing ran after the stop


def test_patience_counts_epoch_0_and_a_tie_is_not_a_new_best():
    cfg, tasks, data = _setup(epochs=3, patience=1)
    data.val = ScriptedValidation(data.val, [0.5, 0.5, 0.9])
    state, seen = _reports(cfg, tasks, data)
    assert [n for n, _ in seen] == ["epoch_0001"] and state.best_epoch == 0 and state.best_step == 0


def test_finetune_local_keeps_a_within_epoch_best():
    cfg, tasks, data = _setup(epochs=1, val_every=2)
    data.val = ScriptedValidation(data.val, [0.1, 0.2, 0.9, 0.3])  # best: global step 4, mid-epoch
    kept = {}
    run = finetune_local(cfg, tasks, data, torch.device("cpu"),
                         on_epoch=lambda m: kept.setdefault(m["global_step"], m["best_step"]))
    assert run.state.best_step == 4 and kept == {2: 2, 4: 4, 6: 4}
    assert [h.val_ci95 is not None for h in run.history] == [True] * 4


def test_a_resume_from_within_an_epoch_ends_where_the_whole_run_ends(tmp_path):
    cfg, tasks, data = _setup(epochs=2, val_every=4)
    full, seen = _reports(cfg, tasks, data, keep=(tmp_path / "full"))
    assert [n for n, _ in seen] == ["epoch_0001_step_0000004", "epoch_0001", "epoch_0002_step_0000008",
                                    "epoch_0002"]
    mid = tmp_path / "full" / "epoch_0002_step_0000008"
    cfg, tasks, data = _setup(epochs=2, val_every=4)
    resumed, seen = _reports(cfg, tasks, data, resume=lambda: _as_dir(mid), keep=(tmp_path / "resumed"))
    assert [n for n, _ in seen] == ["epoch_0002"] and resumed.global_step == full.global_step == 12
    assert resumed.resumes == 1 and [h["global_step"] for h in resumed.history] == [0, 4, 6, 8, 12]
    a = torch.load(tmp_path / "full" / "epoch_0002" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "epoch_0002" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the skipped steps were exactly the ones already done


class _as_dir:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> str:
        return str(self.path)

    def __exit__(self, *exc) -> None:
        return None


def test_val_every_larger_than_an_epoch_is_refused_before_training():
    cfg, tasks, _ = _setup(val_every=7, tasks_per_step=2)
    with pytest.raises(MtftError, match=r"finetune.val_every=7 is larger than an epoch \(3 steps: 6 tasks, 2 per "
                                        r"step on 1 worker\(s\)\).*at most 3"):
        check_validation_plan(cfg, len(tasks), 1)
    check_validation_plan(cfg.model_copy(update={"finetune": cfg.finetune.model_copy(update={"val_every": 3})}),
                          len(tasks), 1)
    assert len(epoch_steps(len(tasks), 1, cfg.finetune)) == 3


@pytest.mark.parametrize("key", ["patience", "val_every"])
def test_zero_patience_or_val_every_is_a_config_error(key):
    with pytest.raises(ValueError, match=f"finetune.{key}"):
        ExperimentConfig.model_validate({"finetune": {key: 0}})


def test_a_validation_split_with_fewer_classes_than_ways_is_refused():
    store = make_store(n_domains=2, classes_per_domain=4, per_class=8, size=32)
    cfg = ExperimentConfig.model_validate({"eval": {"n_way": 5, "shots": [1]}, "finetune": {"val_queries": 3}})
    with pytest.raises(MtftError, match=r"the validation split has 4 classes with at least 4 samples \(4 classes "
                                        r"in d1\), fewer than eval.n_way=5"):
        validation_evaluator(cfg, store, np.arange(4, 8))


def test_a_single_n_way_domain_for_validation_warns_that_it_cannot_decide():
    store = make_store(n_domains=2, classes_per_domain=5, per_class=8, size=32)
    cfg = ExperimentConfig.model_validate({"eval": {"n_way": 5, "shots": [1]}, "finetune": {"val_queries": 3}})
    (w,) = validation_warnings(cfg, store, np.arange(5, 10))
    assert "only 5 usable classes in d1 for 5-way episodes (1 distinct class set)" in w
    big = make_store(n_domains=2, classes_per_domain=9, per_class=8, size=32)
    assert validation_warnings(cfg, big, np.arange(9, 18)) == []  # 126 class sets


def test_the_temperature_group_and_the_task_order_options():
    cfg = ExperimentConfig().finetune
    net = EpisodicModel(create_backbone("tf_efficientnet_lite0", "none"), PrototypeHead())
    own, together = param_groups(net, cfg), param_groups(net, cfg.model_copy(update={"temperature_group": "backbone"}))
    assert [g["lr"] for g in own] == [cfg.lr, cfg.lr_temperature] and own[1]["params"] == [net.head.temperature]
    assert len(together) == 1 and together[0]["lr"] == cfg.lr and together[0]["params"][-1] is net.head.temperature
    fixed = cfg.model_copy(update={"task_order": "fixed", "tasks_per_step": 2})
    assert [s.tasks.tolist() for s in epoch_steps(5, 3, fixed)] == [[0, 1], [2, 3], [4]]
    shuffled = [np.concatenate([s.tasks for s in epoch_steps(40, e, cfg)]) for e in (1, 2)]
    assert sorted(shuffled[0]) == list(range(40)) and not (shuffled[0] == shuffled[1]).all()


def test_a_run_where_finetuning_hurts_says_why_and_keeping_the_pretrained_weights_fixes_it(tmp_path):
    make_folder_tree(tmp_path / "data")
    sections = {"finetune": {"optimizer": "sgd", "lr": 5.0, "keep_pretrained": False}, "methods": ["direct", "multitask"],
                "eval": {"shots": [1], "episodes": 100}}
    hurt = mtft("run", str(tiny_config(tmp_path, **sections)), "--out", "hurt", "--no-progress", cwd=tmp_path)
    assert hurt.returncode == 0, hurt.stderr
    doc = json.loads((tmp_path / "hurt" / "result.json").read_text())
    d = doc["diagnosis"]
    assert d["shots"] == [1] and -1 <= d["consistency"] <= 1 and d["times_seen_per_epoch"] > 1
    assert d["train_acc"] is not None and d["pretrained_val_acc"] is None
    assert doc["protocol"] == {"eval_prototype": "raw_mean", "temperature_group": "own", "task_order": "shuffled",
                               "keep_pretrained": False}
    assert "WARNING: multitask finetuning scored below direct adaptation beyond the CIs (3-way 1-shot" in hurt.stdout
    assert "consistency with the target is" in hurt.stdout and "each seen" in hurt.stdout
    sections["finetune"]["keep_pretrained"] = True
    kept = mtft("run", str(tiny_config(tmp_path, **sections)), "--out", "kept", "--no-progress", cwd=tmp_path)
    doc = json.loads((tmp_path / "kept" / "result.json").read_text())
    acc = {r["method"]: r["acc"] for r in doc["results"]}
    assert acc["multitask"] == acc["direct"] and doc["diagnosis"] is None
    assert "WARNING: multitask: no finetuned epoch beat the pretrained weights" in kept.stdout
    assert yaml.safe_load((tmp_path / "kept" / "config.yaml").read_text())["finetune"]["keep_pretrained"] is True


def test_lr_auto_probes_each_candidate_from_the_pretrained_weights_and_picks_the_best_on_validation():
    cfg, tasks, data = _setup(lr="auto", lr_candidates=[5.0, 1e-3, 0.1], lr_probe_steps=4)
    real = data.val
    for curve, chosen in (([0.7, 0.5, 0.2], 1e-3), ([0.2, 0.5, 0.7], 5.0), ([0.6, 0.6, 0.2], 1e-3)):
        data.val = ScriptedValidation(real, curve)  # one validation per candidate, lowest rate first
        probe = probe_lr(cfg, tasks, data, torch.device("cpu"))
        assert [r["lr"] for r in probe["candidates"]] == [1e-3, 0.1, 5.0] and probe["chosen"] == chosen
        assert probe["steps"] == 4 and data.val.calls == 3  # no epoch-0 validation inside the probe
    data.val = real
    first, again = (probe_lr(cfg, tasks, data, torch.device("cpu")) for _ in range(2))
    assert [r["train_acc"] for r in first["candidates"]] == [r["train_acc"] for r in again["candidates"]]  # seeded
    with pytest.raises(MtftError, match="finetune.lr is 'auto': resolve it"):
        _reports(cfg, tasks, data)
    data.val = None
    with pytest.raises(MtftError, match="finetune.lr is 'auto' but the split has no validation classes"):
        probe_lr(cfg, tasks, data, torch.device("cpu"))
    assert with_lr(cfg, 3e-5).finetune.lr == 3e-5 and cfg.finetune.lr == "auto"


@pytest.mark.parametrize(("value", "message"), [(0, "finetune.lr must be > 0 or 'auto', got 0"),
                                                ("fast", "finetune.lr")])
def test_a_bad_lr_is_a_config_error(value, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.model_validate({"finetune": {"lr": value}})
