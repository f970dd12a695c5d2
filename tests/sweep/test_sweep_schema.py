"""Sweep YAML schema and search-space checks: every bad space fails before any trial, naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mtft_ray.errors import MtftError
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.sweep.load import load_sweep
from mtft_ray.sweep.schema import SweepConfig, sweep_hash
from mtft_ray.sweep.space import apply_params, estimate_images, estimate_minutes, trial_count, tune_space
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
    assert base.tasks.M == 30 and base.finetune.epochs == 2 and sweep.search.num_samples == 3
    assert trial_count(sweep) == 3
    # expected images per trial: M * m * epochs, with the defaults' m = 5 * (1 + 4)
    assert estimate_images(sweep, base) == 30 * 25 * 2
    h = sweep_hash(sweep, base)
    # more samples (or another budget) is the same sweep, extended; another experiment is not
    assert sweep_hash(*load_sweep(path, ["search.num_samples=8", "search.budget={cpu_hours: 1}",
                                         "finetune.epochs=2"])) == h
    assert sweep_hash(*load_sweep(path, ["search.num_samples=3", "finetune.epochs=3"])) != h


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
    assert trial_plan(s, ExperimentConfig(), {"CPU": 2.0}).concurrency == 1
    assert trial_plan(s, ExperimentConfig(), {"CPU": 16.0}).concurrency == 8
    ray_train = ExperimentConfig.model_validate({"methods": ["multitask"], "train": {"workers": 2}})
    p = trial_plan(s, ray_train, {"CPU": 2.0, "TRAIN_DRIVER": 1.0})
    assert p.driver == {"TRAIN_DRIVER": 1.0} and p.per_trial == {"TRAIN_DRIVER": 1.0, "CPU": 2.0}
    assert p.concurrency == 1
    assert trial_plan(s, ray_train, {"CPU": 8.0, "TRAIN_DRIVER": 4.0}).concurrency == 4
    with pytest.raises(MtftError, match="TRAIN_DRIVER"):
        trial_plan(s, ray_train, {"CPU": 8.0})


@pytest.mark.parametrize("spec,needle", [
    ({"subset": ["a"]}, "two or more distinct items"),
    ({"subset": ["a", "a"]}, "two or more distinct items"),
    ({"subset": ["a", "b"], "choice": [1]}, "exactly one of"),
])
def test_bad_subset_is_refused(tmp_path, spec, needle):
    with pytest.raises(MtftError, match=needle):
        load_sweep(write(tmp_path, {"space": {"tasks.domains": spec}}))


def test_subset_only_on_a_list_key_and_random_search_enumerates_at_most_12_items(tmp_path):
    with pytest.raises(MtftError, match=r"search.space.tasks.M=\['a', 'b'\]"):
        load_sweep(write(tmp_path, {"space": {"tasks.M": {"subset": ["a", "b"]}}}))
    many = [f"d{i}" for i in range(13)]
    with pytest.raises(MtftError, match="8,191 non-empty subsets of 13 items.*use algorithm 'optuna'"):
        load_sweep(write(tmp_path, {"space": {"tasks.domains": {"subset": many}}, "algorithm": "random"}))
    sweep, _ = load_sweep(write(tmp_path, {"space": {"tasks.domains": {"subset": many}}}))  # optuna: flags
    assert sweep.search.space["tasks.domains"].kind == "subset"


def test_grid_over_a_subset_walks_every_non_empty_subset():
    s = SweepConfig.model_validate({"search": {"algorithm": "grid", "num_samples": 1, "space": {
        "tasks.domains": {"subset": ["a", "b", "c"]}, "tasks.M": {"choice": [25, 100]}}}})
    assert trial_count(s) == 7 * 2
    assert tune_space(s)["tasks.domains"] == {"grid_search": [["a"], ["b"], ["c"], ["a", "b"], ["a", "c"],
                                                              ["b", "c"], ["a", "b", "c"]]}


def test_optuna_define_by_run_never_samples_an_empty_subset():
    """Real Optuna (TPE, seeded): one include flag per item, the last forced on when all others are off;
    choices with list values travel as JSON text and come back as lists."""
    import functools

    import optuna

    from mtft_ray.sweep.space import suggest

    space = {"tasks.domains": {"subset": ["a", "b", "c"]}, "eval.shots": {"choice": [[1], [1, 5]]},
             "finetune.lr": {"float": [1e-5, 1e-3], "log": True}, "tasks.M": {"int": [10, 20]}}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0), direction="maximize")
    seen = []
    for _ in range(40):
        trial = study.ask()
        values = functools.partial(suggest, space=space)(trial)
        seen.append(values)
        study.tell(trial, float(len(values["tasks.domains"])))
    subsets = {tuple(v["tasks.domains"]) for v in seen}
    assert () not in subsets and len(subsets) >= 5 and subsets <= {
        ("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")}
    assert {json.dumps(v["eval.shots"]) for v in seen} <= {"[1]", "[1, 5]"}
    assert all(1e-5 <= v["finetune.lr"] <= 1e-3 and 10 <= v["tasks.M"] <= 20 for v in seen)
    # the flags are Optuna's own parameters; when a and b are off, c is not asked but on
    forced = [t for t in study.trials if not t.params["tasks.domains[a]"] and not t.params["tasks.domains[b]"]]
    assert forced and all("tasks.domains[c]" not in t.params for t in forced)
    # a trial's config carries the flags too; applying it sets only the list
    assert apply_params({}, {"tasks.domains": ["a"], "tasks.domains[a]": True}) == {"tasks": {"domains": ["a"]}}


def test_cost_estimate_counts_training_and_per_trial_overhead_in_waves():
    """7 trials, 3 at a time: 3 waves, each as long as one trial (its images at the measured rate
    plus the measured overhead)."""
    s = SweepConfig.model_validate({"search": {"space": {"tasks.M": {"choice": [40, 80]}}, "num_samples": 7}})
    base = ExperimentConfig.model_validate({"methods": ["multitask"], "finetune": {"epochs": 2}})
    images = estimate_images(s, base)
    assert images == 60 * 25 * 2
    rate, overhead = 150.0, 20.0  # a calibration's figures
    assert estimate_minutes(s, base, 3, rate, overhead) == pytest.approx(3 * (images / rate + overhead) / 60)
    assert estimate_minutes(s, base, 7, rate, overhead) == pytest.approx(estimate_minutes(s, base, 3, rate, overhead) / 3)
