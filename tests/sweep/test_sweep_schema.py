"""Sweep YAML schema and search-space checks: every bad space fails before any trial, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mtft_ray.errors import MtftError
from mtft_ray.sweep import load_sweep
from mtft_ray.sweep.schema import SweepConfig, sweep_hash
from mtft_ray.sweep.space import apply_params, estimate_images, trial_count, tune_space
from mtft_ray.sweep.tuner import trial_plan

BASE = {"methods": ["multitask"], "eval": {"shots": [1]}, "tasks": {"M": 20}, "finetune": {"epochs": 1}}


def write(tmp_path: Path, search: dict, **top) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": BASE, "search": search, **top}))
    return path


@pytest.mark.parametrize("space,needles", [
    ({"selection.strategy": {"choice": []}}, ["search.space.selection.strategy", "choice is empty"]),
    ({"tasks.M": {"choice": [10, 0]}}, ["search.space.tasks.M=0", "greater than or equal to 1"]),
    ({"tasks.M": {"int": [0, 50]}}, ["search.space.tasks.M=0"]),
    ({"tasks.MM": {"choice": [10]}}, ["unknown key 'tasks.MM'"]),
    ({"finetune.lr": {"float": [1e-3, 1e-5]}}, ["search.space.finetune.lr", "lo > hi"]),
    ({"finetune.lr": {"float": [0, 1e-3], "log": True}}, ["must be positive"]),
    ({"tasks.M": {"choice": [1], "int": [1, 2]}}, ["exactly one of"]),
    ({"tasks.M": {"choices": [1]}}, ["unknown key 'search.space.tasks.M.choices'"]),
])
def test_bad_space_is_refused_naming_the_key(tmp_path, space, needles):
    path = write(tmp_path, {"space": space})
    with pytest.raises(MtftError) as e:
        load_sweep(path)
    assert str(path) in str(e.value)
    for n in needles:
        assert n in str(e.value)


def test_unknown_sweep_key_and_missing_search(tmp_path):
    with pytest.raises(MtftError, match="unknown key 'search.algo'"):
        load_sweep(write(tmp_path, {"space": {"tasks.M": {"choice": [5]}}, "algo": "tpe"}))
    exp = tmp_path / "exp.yaml"
    exp.write_text("tasks: {M: 5}\n")
    with pytest.raises(MtftError, match="needs a 'search:' section"):
        load_sweep(exp)


def test_metric_must_be_an_evaluated_shot_and_grid_needs_choices(tmp_path):
    with pytest.raises(MtftError, match="acc_5shot"):
        load_sweep(write(tmp_path, {"space": {"tasks.M": {"choice": [5]}}, "metric": "acc_5shot"}))
    with pytest.raises(MtftError, match="grid"):
        load_sweep(write(tmp_path, {"space": {"tasks.M": {"int": [5, 9]}}, "algorithm": "grid"}))


def test_base_from_file_with_overrides_and_cli_overrides(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(BASE))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "exp.yaml", "overrides": ["tasks.M=30"],
                                    "search": {"space": {"finetune.lr": {"float": [1e-5, 1e-3], "log": True}}}}))
    sweep, base = load_sweep(path, ["search.num_samples=3", "finetune.epochs=2"])
    assert base["tasks"]["M"] == 30 and base["finetune"]["epochs"] == 2 and sweep.search.num_samples == 3
    assert trial_count(sweep) == 3
    # expected images per trial: M * m * epochs, with the defaults' m = 5 * (1 + 4)
    assert estimate_images(sweep, base) == 30 * 25 * 2
    h = sweep_hash(sweep, base)
    sweep2, base2 = load_sweep(path, ["search.num_samples=4", "finetune.epochs=2"])
    assert sweep_hash(sweep2, base2) != h and sweep_hash(*load_sweep(path, ["search.num_samples=3",
                                                                            "finetune.epochs=2"])) == h


def test_grid_space_trial_count_and_apply():
    s = SweepConfig.model_validate({"search": {"algorithm": "grid", "num_samples": 2, "space": {
        "selection.strategy": {"choice": ["all", "random", "selected"]}, "tasks.M": {"choice": [25, 100]}}}})
    assert trial_count(s) == 12
    space = tune_space(s)
    assert space["tasks.M"] == {"grid_search": [25, 100]}
    assert apply_params({"tasks": {"M": 1}}, {"tasks.M": 25, "selection.k": 2}) == {
        "tasks": {"M": 25}, "selection": {"k": 2}}


def test_trial_plan_concurrency_from_cluster():
    s = SweepConfig.model_validate({"search": {"space": {"seed": {"choice": [0]}}}})
    assert trial_plan(s, {}, {"CPU": 2.0}).concurrency == 1
    assert trial_plan(s, {}, {"CPU": 16.0}).concurrency == 8
    ray_train = {"methods": ["multitask"], "train": {"workers": 2}}
    p = trial_plan(s, ray_train, {"CPU": 2.0, "TRAIN_DRIVER": 1.0})
    assert p.driver == {"TRAIN_DRIVER": 1.0} and p.per_trial == {"TRAIN_DRIVER": 1.0, "CPU": 2.0}
    assert p.concurrency == 1
    assert trial_plan(s, ray_train, {"CPU": 8.0, "TRAIN_DRIVER": 4.0}).concurrency == 4
    with pytest.raises(MtftError, match="TRAIN_DRIVER"):
        trial_plan(s, ray_train, {"CPU": 8.0})
