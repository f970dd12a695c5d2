"""Multi-objective search: the schema and space checks, the Optuna searcher and sampler on a real
study, the progress lines and table, and one real 2-objective NSGA-II sweep through the CLI."""

from __future__ import annotations

import csv
import functools
import math
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from mtft_ray.errors import MtftError
from mtft_ray.sweep.load import load_sweep
from mtft_ray.sweep.schema import SearchConfig
from mtft_ray.sweep.space import suggest
from mtft_ray.sweep.tuner import format_trials

BASE = {"methods": ["multitask"], "eval": {"shots": [1]}, "tasks": {"M": 20}, "finetune": {"epochs": 1}}
SPACE = {"tasks.M": {"int": [2, 8]}, "finetune.lr": {"float": [1e-5, 1e-3], "log": True}}
TWO = {"metric": ["acc_1shot", "seconds"], "mode": ["max", "min"]}


def write(tmp_path: Path, search: dict, base: dict | None = None) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "base": base or BASE, "search": {"space": SPACE, **search}}))
    return path


@pytest.mark.parametrize("search,needle", [
    ({"metric": "acc_1shot", "mode": ["max", "min"]}, "give one mode per metric"),
    ({"metric": ["acc_1shot", "seconds"], "mode": ["max"]}, "give one mode per metric"),
    ({"metric": ["acc_1shot", "acc_1shot"], "mode": ["max", "max"]}, "give distinct metrics"),
    ({**TWO, "algorithm": "random"}, "a multi-objective search (['acc_1shot', 'seconds']) needs algorithm 'optuna'"),
    ({"sampler": "nsga2", "algorithm": "random"}, "sampler 'nsga2' is Optuna's"),
    ({"metric": ["acc_1shot", "seconds"], "mode": ["max", "least"]}, "search.mode"),
    ({**TWO, "sampler": "cmaes"}, "search.sampler"),
])
def test_bad_objectives_are_refused_naming_the_file(tmp_path, search, needle):
    path = write(tmp_path, search)
    with pytest.raises(MtftError) as e:
        load_sweep(path)
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)


@pytest.mark.parametrize("metric,needle", [
    ("gpu_hour", ("search.metric 'gpu_hour' is not reported by trials; they report acc_1shot, multitask_acc_1shot, "
                  "seconds, trial_hours, gpu_hours, cpu_hours, dollars (with search.price_per_hour), train_seconds")),
    ("direct_acc_1shot", "search.metric 'direct_acc_1shot' is not reported by trials"),  # direct is not run
    ("acc_5shot", "search.metric 'acc_5shot' is not reported; eval.shots are [1]"),
    ("dollars", "search.metric 'dollars' needs search.price_per_hour"),
    ("ci95_1shot", "search.metric 'ci95_1shot' is not reported by trials"),
])
def test_every_metric_must_be_one_trials_report(tmp_path, metric, needle):
    path = write(tmp_path, {"metric": ["acc_1shot", metric], "mode": ["max", "min"]})
    with pytest.raises(MtftError) as e:
        load_sweep(path)
    assert str(path) in str(e.value) and needle in str(e.value), str(e.value)


def test_reported_metrics_load_with_their_modes(tmp_path):
    sweep, _ = load_sweep(write(tmp_path, {"metric": ["multitask_acc_1shot", "cpu_hours", "selection_diversity",
                                                      "dollars"], "mode": ["max", "min", "max", "min"],
                                           "price_per_hour": 3.0}))
    s = sweep.search
    assert s.multi and s.primary == "multitask_acc_1shot" and s.modes == ["max", "min", "max", "min"]
    one, _ = load_sweep(write(tmp_path, {"metric": ["acc_1shot", "gpu_hours"], "mode": "min"}))
    assert one.search.modes == ["min", "min"]  # one mode for every metric
    searched = {**BASE, "methods": ["direct", "multitask"]}  # a searched method's accuracy is reported
    sweep, _ = load_sweep(write(tmp_path, {"metric": ["direct_acc_1shot", "seconds"], "mode": ["max", "min"]},
                                base=searched))
    assert sweep.search.metrics == ["direct_acc_1shot", "seconds"]


# -- the searcher and its sampler, on a real Optuna study -------------------------------------------

def searcher_for(search: SearchConfig, seed: int = 7):
    from mtft_ray.sweep.hooks import FinalMetricOptuna, optuna_sampler

    plain = {k: d.model_dump(mode="json", by_alias=True, exclude_none=True) for k, d in search.space.items()}
    return FinalMetricOptuna(space=functools.partial(suggest, space=plain),
                             metric=search.metrics if search.multi else search.primary,
                             mode=search.modes if search.multi else search.modes[0],
                             sampler=optuna_sampler(search, seed))


def two_objectives(**kw) -> SearchConfig:
    return SearchConfig.model_validate({"space": SPACE, **TWO, "sampler": "nsga2", "num_samples": 8, **kw})


def epoch(i: int) -> dict:
    return {"epoch": i, "val_acc": 0.5, "training_iteration": i}


def test_two_objective_searcher_tells_optuna_each_final_report_and_finds_the_front(tmp_path):
    searcher = searcher_for(two_objectives())
    finals = {  # (acc_1shot, seconds): the front is t0, t1 and t3 (a tie of t1)
        "t0": {"acc_1shot": 0.60, "seconds": 10.0}, "t1": {"acc_1shot": 0.70, "seconds": 20.0},
        "t2": {"acc_1shot": 0.65, "seconds": 25.0}, "t3": {"acc_1shot": 0.70, "seconds": 20.0},
        "t4": {"acc_1shot": 0.99},  # no seconds: not a result
        "t5": None,  # raised
        "t6": {"acc_1shot": 0.99, "seconds": math.nan},
    }
    for tid, final in finals.items():
        params = searcher.suggest(tid)
        assert 2 <= params["tasks.M"] <= 8 and 1e-5 <= params["finetune.lr"] <= 1e-3
        searcher.on_trial_result(tid, epoch(1))  # a per-epoch report: skipped, not an error
        if final:
            searcher.on_trial_result(tid, {**final, "training_iteration": 2})
        searcher.on_trial_complete(tid, {**final, "training_iteration": 2} if final else None, error=final is None)
    study = searcher._ot_study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert isinstance(study.sampler, optuna.samplers.NSGAIISampler)
    states = {t.number: t.state.name for t in study.trials}
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE", 4: "PRUNED", 5: "FAIL",
                      6: "PRUNED"}  # none left RUNNING
    assert {t.number for t in study.best_trials} == {0, 1, 3}
    assert [t.values for t in study.trials[:4]] == [[0.6, 10.0], [0.7, 20.0], [0.65, 25.0], [0.7, 20.0]]

    # the searcher's checkpoint (what a resumed sweep restores) keeps the study and its sampler
    searcher.save(str(tmp_path / "searcher.pkl"))
    again = searcher_for(two_objectives())
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.suggest("t7") is not None and len(again._ot_study.trials) == 8
    assert {t.number for t in again._ot_study.best_trials} == {0, 1, 3}


def test_the_sampler_is_seeded_and_sized_from_the_search():
    from mtft_ray.sweep.hooks import optuna_sampler

    def draws(seed: int) -> list[dict]:
        searcher = searcher_for(two_objectives(), seed)
        return [searcher.suggest(f"t{i}") for i in range(3)]

    assert draws(3) == draws(3) and draws(3) != draws(4)
    sizes = {n: optuna_sampler(two_objectives(num_samples=n), 0)._population_size for n in (3, 40, 1000)}
    assert sizes == {3: 4, 40: 10, 1000: 50}
    tpe = optuna_sampler(two_objectives(sampler="tpe"), 0)
    assert type(tpe) is optuna.samplers.TPESampler


def test_single_objective_searcher_skips_epoch_reports():
    searcher = searcher_for(SearchConfig.model_validate({"space": SPACE, "metric": "acc_1shot"}))
    for i, acc in enumerate([0.4, 0.8, 0.6]):
        searcher.suggest(f"t{i}")
        searcher.on_trial_result(f"t{i}", epoch(1))  # would be a KeyError: no acc_1shot in it
        searcher.on_trial_complete(f"t{i}", {"acc_1shot": acc, "training_iteration": 2})
    assert searcher._ot_study.best_value == 0.8 and searcher._ot_study.best_trial.number == 1


def test_progress_line_and_table_show_every_objective():
    from ray.tune.experiment import Trial

    from mtft_ray.sweep.hooks import TrialLines

    trial = Trial("trial_driver", config={"tasks.M": 4}, trial_id="abc_00001", stub=True)
    trial.update_last_result({"acc_1shot": 0.55, "ci95_1shot": 0.03, "seconds": 31.234, "gpu_hours": 0.0})
    line = TrialLines(["acc_1shot", "seconds", "gpu_hours"], ["tasks.M"]).line(trial, "done")
    assert line == "[0] trial abc_00001 done:  tasks.M=4  acc_1shot 55.00 ± 3.00  seconds 31.23  gpu_hours 0"
    assert TrialLines("acc_1shot", ["tasks.M"]).line(trial, "done").endswith("tasks.M=4  acc_1shot 55.00 ± 3.00")
    rows = [{"trial_id": "abc_00001", "status": "TERMINATED", "tasks.M": 4, **trial.last_result}]
    table = format_trials(rows, ["tasks.M"], "acc_1shot", ["acc_1shot", "seconds", "gpu_hours"]).splitlines()
    assert table[0].split() == ["trial", "status", "tasks.M", "acc_1shot", "±ci95", "seconds", "gpu_hours", "k",
                                "diversity", "consistency", "M", "m"]
    assert table[1].split()[3:7] == ["55.00", "3.00", "31.2", "0"]
    assert format_trials(rows, ["tasks.M"], "acc_1shot").splitlines()[0].split()[5] == "k"  # no extra columns


# -- one real sweep ------------------------------------------------------------------------------

def brute_front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of (max, min) points that no other point dominates."""
    dominated = lambda q, p: q[0] >= p[0] and q[1] <= p[1] and q != p
    return {i for i, p in enumerate(points) if not any(dominated(q, p) for q in points)}


@pytest.mark.slow
def test_real_two_objective_nsga2_sweep_and_its_pareto_analysis(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
    from test_cli import make_folder_tree, mtft, tiny_config

    make_folder_tree(tmp_path / "data")
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 4},
                                      finetune={"epochs": 1, "tasks_per_step": 2, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}).read_text())
    path, out = tmp_path / "multi.yaml", tmp_path / "sw"
    path.write_text(yaml.safe_dump({"name": "multi", "base": base, "search": {
        "space": {"tasks.M": {"choice": [2, 4]}, "finetune.lr": {"float": [1e-5, 1e-3], "log": True}},
        "algorithm": "optuna", **TWO, "sampler": "nsga2", "num_samples": 3, "study_storage": "optuna.db"}}))
    r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {x["status"] for x in rows} == {"TERMINATED"}
    points = [(float(x["acc_1shot"]), float(x["seconds"])) for x in rows]
    assert all(0 <= a <= 1 and s > 0 for a, s in points)
    progress = [x for x in r.stdout.splitlines() if "] trial " in x and " done:" in x]
    assert len(progress) == 3 and all("acc_1shot" in x and " seconds " in x for x in progress), r.stdout[-2000:]

    study = optuna.load_study(study_name="multi", storage=f"sqlite:///{out / 'optuna.db'}")
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert sorted(tuple(t.values) for t in study.trials) == sorted(points)  # each objective told, in order
    front = brute_front(points)
    assert sorted(tuple(t.values) for t in study.best_trials) == sorted(points[i] for i in front)

    a = mtft("analyze", str(out), cwd=tmp_path)
    assert a.returncode == 0, a.stderr[-2000:]
    assert (out / "analysis" / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "analysis" / "report.md").read_text()
    pareto = md.split("## Pareto front\n", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("|")[1].strip() for line in pareto.splitlines() if line.startswith("| ")} - {"trial", "---"}
    assert listed == {rows[i]["trial_id"].rsplit("_", 1)[-1] for i in front}, pareto
    assert f"{len(front)} of 3 finished trials are on the Pareto front" in pareto
