"""A real tiny sweep through the CLI (Ray Tune + Optuna, trials in process), its resume and refusals."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config

pytestmark = pytest.mark.slow


def sweep_file(tmp_path: Path, num_samples: int = 2) -> Path:
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 4},
                                      finetune={"epochs": 1, "tasks_per_step": 2, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}).read_text())
    path = tmp_path / "tiny-sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-sweep", "base": base,
        "search": {"space": {"tasks.M": {"choice": [2, 4]}, "finetune.lr": {"float": [1e-5, 1e-3], "log": True}},
                   "algorithm": "optuna", "metric": "acc_1shot", "num_samples": num_samples,
                   "study_storage": "optuna.db"},  # SQLite in the sweep folder, for optuna-dashboard
    }))
    return path


def read_rows(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def tree(tmp_path):
    return make_folder_tree(tmp_path / "data")


def test_sweep_end_to_end_resume_and_conflict(tmp_path, tree):
    path, out = sweep_file(tmp_path), tmp_path / "sw"
    dry = mtft("sweep", str(path), "--dry-run", "--out", str(out), cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "trials:      2, 2 at a time" in dry.stdout  # run.threads=1: 1 CPU per trial and not out.exists()

    r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 2 and {x["status"] for x in rows} == {"TERMINATED"}
    for row in rows:
        assert int(row["tasks.M"]) in (2, 4) and int(row["M"]) == int(row["tasks.M"]) and int(row["m"]) == 9
        assert 1e-5 <= float(row["finetune.lr"]) <= 1e-3
        assert 0 <= float(row["acc_1shot"]) <= 1 and float(row["ci95_1shot"]) >= 0
        assert Path(row["checkpoint"]).is_file() and len(row["config_hash"]) == 12
        assert Path(row["checkpoint"]).is_relative_to(out)  # in the sweep folder, not Ray's session folder
    assert len({x["trial_id"] for x in rows}) == 2
    assert "acc_1shot" in r.stdout and "2 trials (0 failed, 0 stopped early, 0 incomplete)" in r.stdout
    import optuna

    study = optuna.load_study(study_name="tiny-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sorted(t.value for t in study.trials) == sorted(float(x["acc_1shot"]) for x in rows)
    progress = [x for x in r.stdout.splitlines() if "] trial " in x]  # one line per finished trial
    assert len(progress) == 2 and all(" done:" in x and "tasks.M=" in x and "acc_1shot" in x for x in progress)

    # the same command again: the finished sweep is restored, not rerun
    again = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    rows2 = read_rows(out)
    assert [(x["trial_id"], x["acc_1shot"]) for x in rows2] == [(x["trial_id"], x["acc_1shot"]) for x in rows]

    # a different sweep in the same folder is refused, unless --resume
    other = mtft("sweep", str(path), "seed=3", "--out", str(out), cwd=tmp_path)
    assert other.returncode == 2 and "holds a different sweep" in other.stderr and "--resume" in other.stderr
    assert read_rows(out) == rows2


def test_interrupted_sweep_resumes_and_counts_every_trial_once(tmp_path, tree):
    """Ctrl-C (SIGINT) after the first trial finished; the same command again finishes the sweep."""
    import os
    import signal
    import subprocess
    import time

    path, out = sweep_file(tmp_path, num_samples=3), tmp_path / "sw"
    overrides = ["resources={cpu: 2}"]  # one trial at a time, so the interrupt lands between trials
    env = {**os.environ, "MTFT_RAY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mtft_ray.cli.main", "sweep", str(path), *overrides, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not list(out.glob("*/run/result.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert list(out.glob("*/run/result.json")), "no trial finished before the interrupt"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/run/result.json")}
    assert 1 <= len(finished) < 3, "the interrupt did not cut the sweep short"
    assert proc.returncode == 130 and "rerun the same command" in err, err[-2000:]
    assert {x["status"] for x in read_rows(out)} <= {"TERMINATED", "INCOMPLETE"}

    r = mtft("sweep", str(path), *overrides, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 3 and {x["status"] for x in rows} == {"TERMINATED"}
    assert len({x["trial_id"] for x in rows}) == 3
    assert len(list(out.glob("*/run/result.json"))) == 3
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # finished trials were not run again
    import optuna

    study = optuna.load_study(study_name="tiny-sweep", storage=f"sqlite:///{out / 'optuna.db'}")
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 3  # the resumed searcher kept its study


def test_a_second_sweep_is_refused_and_a_sigkill_right_after_trials_finished_reruns_none_of_them(tmp_path, tree):
    """A second sweep into the folder exits 2 naming the first. SIGKILL (no chance to save Tune's
    state) as soon as a trial's result.json is written: the stale lock is taken over, and Tune's
    restored state may call the trial pending, but its complete result for the same config is kept."""
    import os
    import signal
    import subprocess
    import time

    path, out = sweep_file(tmp_path, num_samples=3), tmp_path / "sw"
    overrides = ["resources={cpu: 2}"]
    env = {**os.environ, "MTFT_RAY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "mtft_ray.cli.main", "sweep", str(path), *overrides, "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        while not (out / ".mtft-lock").exists() and proc.poll() is None:
            time.sleep(0.1)
        second = mtft("sweep", str(path), *overrides, "--out", str(out), cwd=tmp_path)  # two sweeps, one folder
        assert second.returncode == 2 and f"is in use: a sweep (pid {proc.pid} on " in second.stderr, second.stderr
        assert proc.poll() is None, "the first sweep ended before the second tried: the test proves nothing"
        deadline = time.time() + 240
        while not list(out.glob("*/run/result.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list(out.glob("*/run/result.json")), "no trial finished before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        proc.communicate(timeout=60)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/run/result.json")}
    assert not (out / "trials.csv").exists()

    r = mtft("sweep", str(path), *overrides, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 3 and {x["status"] for x in rows} == {"TERMINATED"}
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # kept, not recomputed
    assert len(list(out.glob("*/run/result.json"))) == 3


def test_trials_train_on_ray_train_workers_without_deadlock(tmp_path, tree):
    """workers: 2 on 2 CPUs: the driver holds only TRAIN_DRIVER, its TorchTrainer gets both CPUs."""
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 2}, train={"workers": 2},
                                      finetune={"epochs": 1, "tasks_per_step": 1, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}).read_text())
    path, out = tmp_path / "w2.yaml", tmp_path / "sw"
    path.write_text(yaml.safe_dump({"name": "w2", "base": base, "search": {
        "space": {"tasks.M": {"choice": [2]}}, "algorithm": "grid", "num_samples": 1}}))
    dry = mtft("sweep", str(path), "--dry-run", "--out", str(out), cwd=tmp_path)
    assert "each holds {'TRAIN_DRIVER': 1.0, 'CPU': 2.0}" in dry.stdout, dry.stdout
    r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_rows(out)
    assert [x["status"] for x in rows] == ["TERMINATED"] and 0 <= float(rows[0]["acc_1shot"]) <= 1
    assert len(list(out.glob("*/run/multitask_run.json"))) == 1  # trained by finetune_distributed
    # the workers' per-epoch report reached Tune (TuneReportCallback) before the trial's result
    reports = [json.loads(x) for x in next(out.glob("*/result.json")).read_text().splitlines() if x.strip()]
    assert [("val_acc" in x, "acc_1shot" in x) for x in reports] == [(True, False), (True, True)]
    assert reports[0]["world_size"] == 2 and reports[0]["epoch"] == 1


def test_optuna_searches_source_domain_subsets_through_include_flags(tmp_path):
    """tasks.domains: {subset: [...]}: every trial finetunes on a non-empty subset of the source domains
    (its manifest says so), the flags are Optuna's parameters, and the analysis reads them per domain.
    A validation domain in the subset is refused before any trial."""
    make_folder_tree(tmp_path / "data", domains=5)
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 3},
                                      finetune={"epochs": 1, "tasks_per_step": 3, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}).read_text())
    base["data"]["split"] = {"target_domains": ["dom4"], "val_domains": ["dom3"]}
    path, out = tmp_path / "subsets.yaml", tmp_path / "sw"

    def write(items: list[str]) -> None:
        path.write_text(yaml.safe_dump({"name": "subsets", "base": base, "search": {
            "space": {"tasks.domains": {"subset": items}}, "algorithm": "optuna", "num_samples": 4,
            "study_storage": "optuna.db"}}))

    write(["dom0", "dom1", "dom3"])
    bad = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
    assert bad.returncode == 2 and not out.exists(), bad.stderr
    assert "with tasks.domains=['dom0', 'dom1', 'dom3']: tasks.domains: 'dom3' (held out: a target or validation domain) is not " \
           "a source domain; source domains: dom0, dom1, dom2" in bad.stderr, bad.stderr

    write(["dom0", "dom1", "dom2"])
    r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_rows(out)
    assert len(rows) == 4 and {x["status"] for x in rows} == {"TERMINATED"}
    for row in rows:
        subset = row["tasks.domains"].split("+")
        assert subset and set(subset) <= {"dom0", "dom1", "dom2"}
        manifest = json.loads(next(out.glob(f"*{row['trial_id']}*/run/manifest.json")).read_text())
        assert {t["domain"] for t in manifest["tasks"]} <= set(subset) and len(manifest["tasks"]) == 3
    import optuna

    study = optuna.load_study(study_name="subsets", storage=f"sqlite:///{out / 'optuna.db'}")
    assert {p for t in study.trials for p in t.params} <= {"tasks.domains[dom0]", "tasks.domains[dom1]",
                                                           "tasks.domains[dom2]"}
    a = mtft("analyze", str(out), cwd=tmp_path)
    assert a.returncode == 0, a.stderr[-2000:]
    report = (out / "analysis" / "report.md").read_text()
    assert "### `tasks.domains`: with and without each item" in report
    with open(out / "analysis" / "trials.csv") as f:
        table = list(csv.DictReader(f))
    assert all(x["tasks.domains[dom1]"] == str("dom1" in x["tasks.domains"].split("+")) for x in table)
