"""Extending a finished sweep, warm-starting from another, and the budget cap: plain pieces, then real sweeps."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config

from mtft_ray.errors import MtftError
from mtft_ray.storage import open_storage
from mtft_ray.config.schema import StorageConfig
from mtft_ray.sweep.cost import BudgetGate, check_budget, spend
from mtft_ray.sweep.history import PastTrial, optuna_params, replay
from mtft_ray.sweep.schema import SweepConfig
from mtft_ray.sweep.tuner import read_trials_csv, sweep_grid_size, trials_csv


# ------------------------------------------------------------------------------------ plain pieces


def test_spend_is_hours_times_what_the_trial_holds_and_its_share_of_a_priced_node():
    s = spend(7200.0, {"CPU": 4.0, "GPU": 1.0, "TRAIN_DRIVER": 1.0}, price_per_hour=2.0, node={"CPU": 8, "GPU": 4})
    assert s == {"trial_hours": 2.0, "gpu_hours": 2.0, "cpu_hours": 8.0, "dollars": 1.0}  # 1 of 4 GPUs
    assert spend(3600.0, {"CPU": 2.0}, 1.0, {"CPU": 8.0, "GPU": 0.0})["dollars"] == 0.25  # CPUs when no GPU
    assert "dollars" not in spend(3600.0, {"CPU": 2.0})
    with pytest.raises(MtftError, match="search.node"):
        spend(3600.0, {"CPU": 2.0}, 1.0, {})


def test_the_gate_stops_after_the_trial_that_reaches_the_cap_counting_running_trials():
    gate = BudgetGate({"cpu_hours": 1.0}, estimate={"cpu_hours": 0.4})
    assert gate.allows(0) and gate.allows(2) and not gate.allows(3)  # 3 running x 0.4 would pass 1.0
    gate.finished({"cpu_hours": 0.6})  # the finished trials' mean replaces the estimate
    assert gate.per_trial() == {"cpu_hours": 0.6} and gate.allows(0) and not gate.allows(1)
    assert not gate.stopped
    gate.finished({"cpu_hours": 0.5})  # 1.1 spent: over the cap
    assert not gate.allows(0) and gate.stopped
    failed = BudgetGate({"gpu_hours": 1.0}, estimate={"gpu_hours": 0.3})
    failed.finished(None)  # a trial that reported nothing counts as its estimate
    assert failed.spent == {"gpu_hours": 0.3}


def test_a_budget_smaller_than_one_trial_or_one_that_caps_nothing_is_refused():
    with pytest.raises(MtftError, match=r"smaller than one trial \(budget.cpu_hours 0.01 < one trial's ~0.05"):
        check_budget({"cpu_hours": 0.01}, {"cpu_hours": 0.05, "gpu_hours": 0.0}, "s.yaml")
    with pytest.raises(MtftError, match="gpu_hours caps a spend these trials never incur"):
        check_budget({"gpu_hours": 1.0}, {"cpu_hours": 0.05, "gpu_hours": 0.0}, "s.yaml")
    check_budget({"cpu_hours": 0.05}, {"cpu_hours": 0.05}, "s.yaml")  # exactly one trial fits


def test_replay_gives_optuna_the_include_flags_and_json_choices_and_skips_what_does_not_fit():
    import optuna

    space = {"tasks.domains": {"subset": ["a", "b", "c"]}, "eval.shots": {"choice": [[1], [1, 5]]},
             "finetune.lr": {"float": [1e-5, 1e-3], "log": True}}
    good = {"tasks.domains": ["a", "c"], "eval.shots": [1, 5], "finetune.lr": 1e-4}
    assert optuna_params(good, space) == {"tasks.domains[a]": True, "tasks.domains[b]": False,
                                          "tasks.domains[c]": True, "eval.shots": "[1, 5]", "finetune.lr": 1e-4}
    study = optuna.create_study(directions=["maximize", "minimize"])
    past = [PastTrial("t1", good, [0.8, 0.1]), PastTrial("t2", {**good, "finetune.lr": 0.5}, [0.9, 0.1]),
            PastTrial("t3", {**good, "tasks.domains": ["z"]}, [0.9, 0.1]), PastTrial("t4", {"finetune.lr": 1e-4}, [0, 0])]
    assert replay(study, past, space) == (1, ["t2", "t3", "t4"])
    (t,) = study.trials
    assert t.state.name == "COMPLETE" and t.values == [0.8, 0.1] and t.params["tasks.domains[b]"] is False


def test_trials_csv_reads_back_with_numbers_and_trial_ids_as_text(tmp_path):
    rows = [{"trial_id": "12345678_00001", "status": "TERMINATED", "tasks.M": 25, "acc_1shot": 0.8125,
             "tasks.domains": "a+b"}, {"trial_id": "abc_00002", "status": "ERROR", "error": "boom"}]
    storage = open_storage(StorageConfig(path=str(tmp_path)))
    storage.write_bytes(trials_csv(rows).encode(), "trials.csv")
    assert read_trials_csv(storage) == rows
    assert read_trials_csv(storage, "nope.csv") is None


def test_a_grid_sample_is_the_whole_grid():
    s = SweepConfig.model_validate({"search": {"algorithm": "grid", "num_samples": 3, "space": {
        "tasks.M": {"choice": [2, 4, 8]}, "tasks.domains": {"subset": ["a", "b"]}}}})
    assert sweep_grid_size(s) == 9


# -------------------------------------------------------------------------------------- real sweeps


def _sweep(tmp_path: Path, name: str, search: dict, **base_sections) -> Path:
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 4},
                                      finetune={"epochs": 1, "tasks_per_step": 2, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}, **base_sections).read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, "search": {
        "space": {"tasks.M": {"choice": [2, 4]}, "finetune.lr": {"float": [1e-5, 1e-3], "log": True}},
        "algorithm": "optuna", "metric": "acc_1shot", **search}}))
    return path


def _rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def _study(out: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


@pytest.fixture
def tree(tmp_path):
    return make_folder_tree(tmp_path / "data")


@pytest.mark.slow
def test_a_finished_sweep_extended_from_4_to_8_killed_midway_ends_with_8_trials_counted_once(tmp_path, tree):
    path, out = _sweep(tmp_path, "ext", {"num_samples": 4, "study_storage": "optuna.db"}), tmp_path / "sw"
    first = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    rows4 = _rows(out)
    assert len(rows4) == 4 and {r["status"] for r in rows4} == {"TERMINATED"}
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/run/result.json")}
    assert len(finished) == 4

    # extend to 8, SIGKILL once the first new trial has finished
    env = {**os.environ, "MTFT_RAY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mtft_ray.cli.main", "sweep", str(path), "search.num_samples=8", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while len(list(out.glob("*/run/result.json"))) < 5 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(list(out.glob("*/run/result.json"))) >= 5, "no new trial finished before the kill"
        assert proc.poll() is None, "the extension ended before the kill: the test proves nothing"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    doc = json.loads((out / "sweep.json").read_text())
    assert [s["num_samples"] for s in doc["segments"]] == [4, 4] and doc["segments"][1]["finished"] is False

    again = mtft("sweep", str(path), "search.num_samples=8", "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rows8 = _rows(out)
    assert len(rows8) == 8 and len({r["trial_id"] for r in rows8}) == 8 and {r["status"] for r in rows8} == {"TERMINATED"}
    assert [r["trial_id"] for r in rows8[:4]] == [r["trial_id"] for r in rows4]  # the first four, once
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # none of them ran again
    assert len(list(out.glob("*/run/result.json"))) == 8
    complete = [t for t in _study(out, "ext").trials if t.state.name == "COMPLETE"]
    assert len(complete) == 8
    assert sorted(t.value for t in complete) == sorted(float(r["acc_1shot"]) for r in rows8)
    assert json.loads((out / "sweep.json").read_text())["segments"][1]["finished"] is True

    # the same command once more: nothing to run; the analysis sees the 8 trials once
    same = mtft("sweep", str(path), "search.num_samples=8", "--out", str(out), cwd=tmp_path)
    assert same.returncode == 0 and "] trial " not in same.stdout and len(_rows(out)) == 8
    a = mtft("analyze", str(out), "--out", str(tmp_path / "an"), cwd=tmp_path)
    assert a.returncode == 0 and "ext: 8 trials (8 finished)" in a.stdout, a.stdout + a.stderr[-2000:]

    # a new sweep warm-started from this one: its study starts with the 8 finished trials
    warm = _sweep(tmp_path, "warm", {"num_samples": 1, "study_storage": "optuna.db", "warm_start": str(out)})
    w = mtft("sweep", str(warm), "--out", str(tmp_path / "warm"), cwd=tmp_path)
    assert w.returncode == 0, w.stderr[-3000:]
    assert "searcher warm with 8 finished trial(s)" in w.stderr
    assert len(_rows(tmp_path / "warm")) == 1  # only its own trial is a row
    assert sum(t.state.name == "COMPLETE" for t in _study(tmp_path / "warm", "warm").trials) == 9


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["optuna", "random"])
def test_a_budget_cap_stops_the_sweep_after_the_trial_that_reaches_it(tmp_path, tree, algorithm):
    from mtft_ray.sweep.cost import estimate_trial
    from mtft_ray.sweep.load import load_sweep

    # the cap is one trial's estimate; real tiny trials cost a fraction of it (a few seconds each on an
    # idle machine, the estimate's stated 16 s overhead dominates), so allow many before the cap
    samples = 30
    path = _sweep(tmp_path, "budget", {"num_samples": samples, "algorithm": algorithm})
    sweep, base = load_sweep(path, ["resources={cpu: 2}"])  # one trial at a time on 2 CPUs
    one, _ = estimate_trial(sweep, base, {"CPU": 2.0})
    cap = round(one["cpu_hours"] * 1.05, 6)  # room for one estimated trial, and a bit

    tiny = mtft("sweep", str(path), "resources={cpu: 2}", f"search.budget={{cpu_hours: {cap / 4}}}", "--dry-run",
                cwd=tmp_path)
    assert tiny.returncode == 2 and "search.budget is smaller than one trial" in tiny.stderr, tiny.stderr[-2000:]
    dry = mtft("sweep", str(path), "resources={cpu: 2}", f"search.budget={{cpu_hours: {cap}}}", "--dry-run",
               cwd=tmp_path)
    assert dry.returncode == 0 and "budget:      cpu_hours" in dry.stdout, dry.stderr[-2000:]

    out = tmp_path / "sw"
    r = mtft("sweep", str(path), "resources={cpu: 2}", f"search.budget={{cpu_hours: {cap}}}", "--out", str(out),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(_rows(out), key=lambda x: float(x["timestamp"]) if x.get("timestamp") else 0.0)
    spent = [float(x["cpu_hours"]) for x in rows]
    assert all(x["status"] == "TERMINATED" for x in rows) and all(s > 0 for s in spent)
    assert len(rows) < samples, "the budget never stopped the sweep"
    assert sum(spent[:-1]) < cap <= sum(spent), (spent, cap)  # stopped right after the trial that reached it
    assert "search.budget reached" in r.stderr
    assert abs(float(rows[0]["cpu_hours"]) - 2 * float(rows[0]["trial_hours"])) < 1e-5


def test_dry_run_prices_a_gpu_sweep_on_a_cluster_from_its_calibration_and_node_label(tmp_path, tree):
    """cluster/aws.yaml's g5.xlarge workers (A10G, label $0.45/h): a calibration for gpu-a10g-x1 prices
    each trial; --price-per-hour overrides the label; a dollar budget below one trial is refused."""
    repo = Path(__file__).parents[2]
    cal = tmp_path / "calibrations"
    cal.mkdir()
    (cal / "gpu-a10g-x1--tf_efficientnet_lite0--32px--bf16--ddp--w1.json").write_text(json.dumps({
        "machine_kind": "gpu-a10g-x1", "backbone": "tf_efficientnet_lite0", "image_size": 32, "precision": "bf16",
        "strategy": "ddp", "workers": 1, "images_per_s": 360.0, "peak_rss_mb": 1000.0, "peak_gpu_mb": 2000.0,
        "steps": 30, "measured_at": "2026-12-01T10:00:00+00:00", "mtft_ray_version": "0.1.0",
        "torch_version": "2.14.1"}))
    path = _sweep(tmp_path, "gpu", {"num_samples": 10}, train={"workers": 1, "use_gpu": True, "cpus_per_worker": 2})
    env = {**os.environ, "MTFT_RAY_CALIBRATIONS": str(cal)}
    r = mtft("sweep", str(path), "--dry-run", "--cluster", str(repo / "cluster/aws.yaml"), cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    # 3 tasks of 9 images x M (mean of 2, 4 = 3) x 1 epoch = 27 images at 360 img/s + 16 s overhead
    seconds = 27 / 360 + 16
    assert "trials on gpu_spot (g5.xlarge, gpu-a10g-x1)" in r.stdout
    assert "rate 360 img/s: measured on gpu-a10g-x1 2026-12-01" in r.stdout
    assert f"{10 * seconds / 3600:.3g} GPU-h" in r.stdout
    assert f"${10 * seconds / 3600 * 0.45:.4g} at $0.45/node-h" in r.stdout
    priced = mtft("sweep", str(path), "--dry-run", "--cluster", str(repo / "cluster/aws.yaml"), "--price-per-hour",
                  "1.01", "search.budget={dollars: 0.001}", cwd=tmp_path, env=env)
    assert priced.returncode == 2 and "budget.dollars 0.001 < one trial's ~0.004" in priced.stderr, priced.stderr


def test_a_segment_whose_tuner_saved_no_state_is_run_from_its_start_not_restored_from_the_last(tmp_path):
    """An extension killed before its Tuner wrote a state must not restore the previous (finished) segment."""
    from mtft_ray.sweep.tuner import _segment_has_state

    storage = open_storage(StorageConfig(path=str(tmp_path)))
    storage.write_bytes(b"{}", "experiment_state-2026-12-01_10-00-00.json")
    written = (tmp_path / "experiment_state-2026-12-01_10-00-00.json").stat().st_mtime
    assert _segment_has_state(storage, {"started": written - 30})  # the segment's own state
    assert not _segment_has_state(storage, {"started": written + 30})  # only an earlier segment's
    assert not _segment_has_state(open_storage(StorageConfig(path=str(tmp_path / "none"))), {"started": 0.0})


def test_a_hex_trial_id_that_looks_like_a_number_reads_back_as_text(tmp_path):
    """638254e7 is a valid float: trials.csv once read it back as 6.38e12 and a resumed sweep's
    first trials no longer matched their ids (seen in CI)."""
    from mtft_ray.config.schema import StorageConfig
    from mtft_ray.storage import open_storage
    from mtft_ray.sweep.tuner import read_trials_csv, trials_csv

    storage = open_storage(StorageConfig(path=str(tmp_path)))
    storage.write_bytes(trials_csv([{"trial_id": "638254e7", "acc_1shot": 0.5, "finetune.lr": 1e-4}]).encode(),
                        "trials.csv")
    assert read_trials_csv(storage) == [{"trial_id": "638254e7", "acc_1shot": 0.5, "finetune.lr": 1e-4}]
