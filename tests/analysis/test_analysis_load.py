"""Reading sweep folders: one row per trial, statuses, partial writes, Tune's state, bad input."""

from __future__ import annotations

import json

import pytest
from synthetic import Trial, make_sweep

from mtft_ray.analysis.fetch import open_sweep
from mtft_ray.analysis.load import load_sweep_dir
from mtft_ray.errors import MtftError


def load(path):
    with open_sweep(str(path)) as loc:
        return load_sweep_dir(loc)


def by_id(data):
    return data.trials.set_index("trial_id")


MIXED = [Trial({"tasks.M": 25}, acc=0.71), Trial({"tasks.M": 50}, status="errored"),
         Trial({"tasks.M": 100}, status="stopped", epochs=1), Trial({"tasks.M": 200}, status="incomplete"),
         Trial({"tasks.M": 400}, acc=0.8, status="truncated")]


def test_row_per_trial_with_config_sizes_selection_accuracy_and_checkpoint(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25, "selection.strategy": "selected"}, acc=0.75, M=25),
                                         Trial({"tasks.M": 100, "selection.strategy": "all"}, acc=0.8,
                                               diversity=None, consistency=None)])
    data = load(root)
    t = by_id(data)
    assert (data.name, data.metric, data.mode, data.ended) == ("synthetic", "acc_1shot", "max", True)
    assert data.params == ["tasks.M", "selection.strategy"] and not data.problems
    a, b = t.loc["abcde_00000"], t.loc["abcde_00001"]
    assert a["status"] == b["status"] == "finished"
    assert (a["M"], a["m"], a["Mm"], a["tasks.n_way"], a["finetune.lr"], a["backbone.name"]) == \
        (25, 25, 625, 5, 1e-4, "tf_efficientnet_lite0")
    assert (a["acc_1shot"], a["ci95_1shot"], a["k"], a["diversity"], a["consistency"]) == (0.75, 0.01, 6, -5.0, 0.93)
    assert a["subset"] == "a; b; c; d; e; f" and b["subset"] == "all 24 source domains" and b["k"] == 24
    assert b["diversity"] != b["diversity"]  # NaN: strategy 'all' has no selection
    assert a["checkpoint"] == str(root / a["trial_dir"] / "run" / "multitask.pt")  # the synced copy, not /tmp/ray
    assert a["val_acc"] == pytest.approx(0.9) and a["reports"] == 3  # two epoch reports + the final one
    assert a["ended_at"] > a["started_at"]


def test_statuses_of_a_sweep_that_ended(tmp_path):
    data = load(make_sweep(tmp_path / "sw", MIXED))
    status = by_id(data)["status"].to_dict()
    assert status == {"abcde_00000": "finished", "abcde_00001": "errored", "abcde_00002": "stopped early",
                      "abcde_00003": "incomplete", "abcde_00004": "corrupt"}
    assert "exceeds the classes" in by_id(data).loc["abcde_00001", "note"]
    assert any("abcde_00004: result.json line 3 is truncated" in p for p in data.problems)
    assert len(data.finished()) == 1


def test_statuses_of_a_running_sweep(tmp_path):
    data = load(make_sweep(tmp_path / "sw", MIXED, ended=False))
    status = by_id(data)["status"].to_dict()
    assert status["abcde_00002"] == status["abcde_00003"] == status["abcde_00004"] == "running"
    assert status["abcde_00001"] == "errored" and not data.ended
    assert by_id(data).loc["abcde_00002", "note"] == "1 report(s) so far"


def test_tune_state_gives_running_and_pending(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25}), Trial({"tasks.M": 50}, status="incomplete")])
    logdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    entries = [[json.dumps({"trial_id": f"abcde_{i:05d}", "status": s, "relative_logdir": d, "config": {"tasks.M": m}}),
                json.dumps({"start_time": 1_790_000_000.0 + i})]
               for i, (s, d, m) in enumerate([("TERMINATED", logdirs[0], 25), ("RUNNING", logdirs[1], 50),
                                             ("PENDING", "trial_driver_abcde_00002_2_tasks_M=100_x", 100)])]
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": entries}))
    (root / "trials.csv").unlink()
    t = by_id(load(root))
    assert t["status"].to_dict() == {"abcde_00000": "finished", "abcde_00001": "running", "abcde_00002": "pending"}
    assert t.loc["abcde_00002", "tasks.M"] == 100


def test_unreadable_tune_state_is_noted_not_fatal(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25})])
    (root / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{not json')
    data = load(root)
    assert by_id(data).loc["abcde_00000", "status"] == "finished"
    assert any("could not be read" in p for p in data.problems)


def test_trials_csv_row_without_a_folder_is_kept(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25})])
    (root / "trials.csv").write_text("trial_id,status,tasks.M,M,m,Mm,acc_1shot,ci95_1shot\n"
                                     "abcde_00000,TERMINATED,25,25,25,625,0.8,0.01\n"
                                     "abcde_00009,TERMINATED,50,50,25,1250,0.85,0.01\n"
                                     "abcde_00010,ERROR,60,,,,,\n"
                                     "abcde_00011,STOPPED,70,,,,,\n")
    t = by_id(load(root))
    assert t.loc["abcde_00009", "status"] == "finished" and t.loc["abcde_00009", "acc_1shot"] == 0.85
    assert t.loc["abcde_00010", "status"] == "errored" and t.loc["abcde_00011", "status"] == "stopped early"
    assert len(t) == 4 and t.loc["abcde_00011", "tasks.M"] == 70


@pytest.mark.parametrize("make,needle", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: (p / "file.txt").write_text("x") and p / "file.txt", "not a folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no sweep.json and no trial folders"),
])
def test_a_path_with_no_sweep(tmp_path, make, needle):
    with pytest.raises(MtftError, match=needle):
        load(make(tmp_path))


def test_invalid_sweep_json_with_trials_is_noted(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25})])
    (root / "sweep.json").write_text('{"hash": "0123')
    data = load(root)
    assert any("sweep.json is not valid JSON" in p for p in data.problems)
    assert data.metric == "acc_1shot" and by_id(data).loc["abcde_00000", "status"] == "finished"


def test_a_retried_trial_that_finished_is_finished(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25})])
    trial = next(p for p in root.iterdir() if p.is_dir())
    (trial / "error.txt").write_text("Failure # 1 (the first attempt; max_failures retried it)\n")
    assert by_id(load(root)).loc["abcde_00000", "status"] == "finished"


def test_a_damaged_checkpoint_is_not_offered(tmp_path):
    """result.json records each checkpoint's size and sha256; one that no longer matches (a full
    disk truncated it, someone overwrote it) is named and never offered as the best trial's."""
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25}, acc=0.9), Trial({"tasks.M": 50}, acc=0.7)])
    best = next(root.glob("*abcde_00000*")) / "run" / "multitask.pt"
    best.write_bytes(best.read_bytes()[:5])  # truncated
    data = load(root)
    t = by_id(data)
    assert t.loc["abcde_00000", "checkpoint"] != t.loc["abcde_00000", "checkpoint"]  # NaN: none
    assert t.loc["abcde_00001", "checkpoint"].endswith("multitask.pt")
    (problem,) = [p for p in data.problems if "abcde_00000" in p]
    assert "its checkpoint is damaged" in problem and "has 5 bytes, 23 were written" in problem
