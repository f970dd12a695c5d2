"""Bad input gets one clear line and exit 2, and loses nothing (issue #16, items 7 and 8).

Each case fails (or is refused) before anything trains, so each takes seconds; the analysis
cases read sweep folders built by hand (tests/analysis/synthetic.py).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from test_cli import make_folder_tree, mtft, tiny_config

sys.path.insert(0, str(Path(__file__).parents[1] / "analysis"))
from synthetic import Trial, make_sweep


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The single ``mtft-ray: error:`` line of a refused command (exit 2), holding every needle."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-2000:])
    assert len(err.splitlines()) == 1 and err.startswith("mtft-ray: error:"), err[-2000:]
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture
def tree(tmp_path):
    return make_folder_tree(tmp_path / "data")


# --- config values that used to pass, escape or crash ------------------------------------------

@pytest.mark.parametrize("override,needles", [
    ("methods=[]", ["methods: name at least one method"]),  # was: exit 0 and an empty result.json
    ("methods=[direct,direct]", ["methods: names a method twice"]),
    ("run.threads=-1", ["run.threads", "got -1"]),  # was: RuntimeError traceback from torch
    ("run.threads=0", ["run.threads", "got 0"]),  # was: accepted
    ("tasks.M=1e10", ["tasks.M", "GB", "10^8"]),  # was: MemoryError traceback
    ("data.split.target_domains=-1", ["data.split.target_domains", "got -1"]),  # was: blamed val_domains
    ("data.split.val_domains=-1", ["data.split.val_domains", "got -1"]),
])
def test_bad_value_is_one_line_and_writes_nothing(tmp_path, tree, override, needles):
    out = tmp_path / "out"
    r = mtft("run", str(tiny_config(tmp_path)), override, "--out", str(out), "--no-progress", cwd=tmp_path)
    err = one_line_error(r, *needles)
    assert not out.exists()
    if "target_domains" in override:
        assert "val_domains" not in err


@pytest.mark.parametrize("name,runs", [("../../escape", True), ("a/b", False), ("..", False), ("has space", False)])
def test_experiment_name_must_be_a_plain_name(tmp_path, tree, name, runs):
    cwd = tmp_path / "work"
    cwd.mkdir()
    for args in (["--dry-run"], ["--no-progress"]) if runs else (["--dry-run"],):
        r = mtft("run", str(tiny_config(tmp_path)), f"name={name}", *args, cwd=cwd)  # was: runs/../../escape/
        one_line_error(r, "name:", "not a plain name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "tiny.yaml", "work"]
    assert list(cwd.iterdir()) == []


def test_huge_M_in_a_config_file_is_refused_before_allocating(tmp_path, tree):
    cfg = tiny_config(tmp_path, tasks={"M": 1.0e10})
    t0 = time.monotonic()
    one_line_error(mtft("run", str(cfg), "--out", str(tmp_path / "out"), cwd=tmp_path),
                   "tasks.M: M x m = 10000000000 x 9", "GB", "M <= 11111111")
    assert time.monotonic() - t0 < 60 and not (tmp_path / "out").exists()


def test_config_file_that_is_not_utf8_is_named(tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("name: café\n".encode("latin-1"))
    one_line_error(mtft("run", str(cfg), "--dry-run", cwd=tmp_path), str(cfg), "not UTF-8", "0xe9")


def test_override_that_is_not_yaml_is_one_line(tmp_path):
    one_line_error(mtft("run", "tasks.domains=[a,", "--dry-run", cwd=tmp_path), "override", "tasks.domains")


@pytest.mark.parametrize("dry", [True, False])
def test_out_naming_a_file_is_refused(tmp_path, tree, dry):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    for out in (taken, taken / "sub"):
        r = mtft("run", str(tiny_config(tmp_path)), "--out", str(out), "--dry-run" if dry else "--no-progress",
                 cwd=tmp_path)
        one_line_error(r, f"--out {out}", "is a file, not a folder")  # was: FileExistsError traceback
    assert taken.read_text() == "keep me"


# --- classes too small for an episode -----------------------------------------------------------

def _one_image_in_cls0(tree: Path) -> None:
    for domain in tree.iterdir():
        for f in sorted((domain / "cls0").iterdir())[1:]:
            f.unlink()


def test_classes_too_small_for_an_episode_are_a_warning_in_result_json(tmp_path, tree):
    """A class with one image used to vanish from every episode while the split still counted it."""
    _one_image_in_cls0(tree)
    out = tmp_path / "out"
    cfg = tiny_config(tmp_path, methods=["direct"], eval={"episodes": 10})
    r = mtft("run", str(cfg), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = json.loads((out / "result.json").read_text())["warnings"]
    short = {w.split(" split:")[0]: w for w in warnings if " split: " in w}
    assert set(short) == {"finetuning", "validation", "target"}, warnings
    assert "1 of 6 classes have too few samples" in short["target"]
    assert "1 from 5-shot episodes (fewer than 8 samples)" in short["target"]  # 5 shots + eval.n_query 3
    assert "1 from tasks (fewer than 3 samples)" in short["finetuning"]  # n_shot 1 + n_query 2
    assert all("in domain(s) dom" in w for w in short.values())
    assert sum(" split: " in line for line in r.stdout.splitlines() if line.startswith("WARNING:")) == 3


def test_classes_too_small_leaving_too_few_for_an_episode_is_an_error(tmp_path, tree):
    _one_image_in_cls0(tree)
    out = tmp_path / "out"
    r = mtft("run", str(tiny_config(tmp_path)), "eval.n_way=6", "--out", str(out), "--no-progress", cwd=tmp_path)
    one_line_error(r, "6-way", "only 5 of 6 classes")
    assert not (out / "result.json").exists()


# --- CONFIG and overrides after an option ---------------------------------------------------------

def test_overrides_after_an_option_are_accepted(tmp_path, tree):
    cfg = str(tiny_config(tmp_path))  # M=6, 2 tasks per step: 3 steps per epoch
    for args in ([cfg, "--no-progress", "tasks.M=10", "--dry-run"],  # was: unrecognized arguments
                 ["--workers", "0", cfg, "--dry-run", "tasks.M=10"],
                 ["tasks.M=10", "--no-progress", cfg, "--dry-run"]):
        r = mtft("run", *args, cwd=tmp_path)
        assert r.returncode == 0, (args, r.stderr[-2000:])
        assert "5 steps per epoch" in r.stdout, r.stdout
    one_line_error(mtft("run", cfg, "--dry-run", "other.yaml", cwd=tmp_path), "unexpected argument 'other.yaml'")
    bogus = mtft("run", cfg, "--bogus", "tasks.M=10", cwd=tmp_path)
    assert bogus.returncode == 2 and "unrecognized arguments: --bogus" in bogus.stderr


def _sweep_file(tmp_path: Path) -> Path:
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 4},
                                      finetune={"epochs": 1}, eval={"shots": [1], "episodes": 20}).read_text())
    path = tmp_path / "tiny-sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny-sweep", "base": base, "search": {
        "space": {"tasks.M": {"choice": [2, 4]}}, "algorithm": "random", "metric": "acc_1shot", "num_samples": 2}}))
    return path


def test_sweep_overrides_after_an_option_are_accepted(tmp_path, tree):
    r = mtft("sweep", str(_sweep_file(tmp_path)), "--dry-run", "search.num_samples=3", "--out", str(tmp_path / "sw"),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "trials:      3," in r.stdout and not (tmp_path / "sw").exists()


# --- an output folder the sweep cannot write: refused before Ray starts ---------------------------

@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot create files in (root ignores mode bits: then read-only /sys)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    try:
        tempfile.TemporaryFile(dir="/sys").close()
    except OSError:
        yield Path("/sys")
        return
    pytest.skip("no unwritable folder: running as root and /sys is writable")


def test_sweep_into_an_unwritable_folder_fails_before_ray(tmp_path, tree, unwritable):
    out = unwritable / "mtft-bad-input-sweep"
    r = mtft("sweep", str(_sweep_file(tmp_path)), "--out", str(out), cwd=tmp_path)
    one_line_error(r, f"sweep folder {out} cannot be written")  # was: PermissionError traceback after Ray started
    assert "trial(s) at a time" not in r.stdout and not out.exists()


def test_sweep_into_a_file_fails_before_ray(tmp_path, tree):
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    r = mtft("sweep", str(_sweep_file(tmp_path)), "--out", str(taken), cwd=tmp_path)
    one_line_error(r, f"sweep folder {taken} cannot be written", "is a file, not a folder")
    assert "trial(s) at a time" not in r.stdout and taken.read_text() == "keep me"


def test_the_sweep_driver_writes_its_pid_host_and_heartbeat(tmp_path, monkeypatch):
    from mtft_ray.config.schema import StorageConfig
    from mtft_ray.storage import open_storage
    from mtft_ray.sweep import tuner

    monkeypatch.setattr(tuner, "HEARTBEAT_S", 0.05)
    stop = tuner._heartbeat(open_storage(StorageConfig(path=str(tmp_path / "sw"))))
    first = json.loads((tmp_path / "sw" / "driver.json").read_text())
    time.sleep(0.5)
    stop.set()
    later = json.loads((tmp_path / "sw" / "driver.json").read_text())
    assert (first["pid"], first["host"]) == (os.getpid(), socket.gethostname())
    assert later["started"] == first["started"] and later["heartbeat"] > first["heartbeat"]


# --- analysis: a dead sweep, a corrupt trial ------------------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def _driver(root: Path, pid: int, host: str, age_s: float) -> None:
    now = time.time()
    (root / "driver.json").write_text(json.dumps({"pid": pid, "host": host, "started": now - age_s - 60,
                                                  "heartbeat": now - age_s}))


RUNNING = [Trial({"tasks.M": 25}, acc=0.7), Trial({"tasks.M": 50}, status="stopped", epochs=1),
           Trial({"tasks.M": 100}, status="incomplete")]


def test_analyze_calls_a_sweep_with_a_dead_driver_interrupted(tmp_path):
    root = make_sweep(tmp_path / "sw", RUNNING, ended=False)  # no trials.csv: it looked "running"
    pid = _dead_pid()
    _driver(root, pid, socket.gethostname(), age_s=5)
    r = mtft("analyze", str(root), "--out", str(tmp_path / "an"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 trials (1 finished, 2 interrupted)" in r.stdout and "running" not in r.stdout.split("\n")[0]
    md = (tmp_path / "an" / "report.md").read_text()
    assert f"interrupted (its driver (pid {pid} on {socket.gethostname()}) is gone; rerun" in md
    assert "still running" not in md


def test_sweep_liveness_from_driver_json(tmp_path):
    from mtft_ray.analysis.fetch import open_sweep
    from mtft_ray.analysis.load import load_sweep_dir

    def statuses(pid: int, host: str, age_s: float):
        root = make_sweep(tmp_path / f"sw-{pid}-{host}-{age_s}", RUNNING, ended=False)
        _driver(root, pid, host, age_s)
        with open_sweep(str(root)) as loc:
            data = load_sweep_dir(loc)
        return data.interrupted, sorted(data.trials["status"])

    assert statuses(os.getpid(), socket.gethostname(), 5) == (None, ["finished", "running", "running"])
    assert statuses(12345, "another-host", 5) == (None, ["finished", "running", "running"])  # a fresh heartbeat
    why, status = statuses(12345, "another-host", 3600)
    assert "last wrote a heartbeat 60 min ago" in why and status == ["finished", "interrupted", "interrupted"]


def test_analyze_reports_a_corrupt_trial_and_keeps_the_best_honest(tmp_path):
    """The best trial's result.json cut off mid-line used to make it "stopped early" silently."""
    trials = [Trial({"tasks.M": 25}, acc=0.70), Trial({"tasks.M": 50}, acc=0.72),
              Trial({"tasks.M": 100}, acc=0.90, status="truncated")]
    root = make_sweep(tmp_path / "sw", trials)
    r = mtft("analyze", str(root), "--out", str(tmp_path / "an"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 trials (2 finished, 1 corrupt)" in r.stdout and "stopped early" not in r.stdout
    assert "best:        abcde_00001" in r.stdout
    csv = (tmp_path / "an" / "trials.csv").read_text()
    bad = next(d for d in root.iterdir() if "abcde_00002" in d.name) / "result.json"
    assert f"corrupt: {bad}: line 3 is truncated or invalid" in csv
    md = (tmp_path / "an" / "report.md").read_text()
    best = md.split("## Best configuration")[1].split("## ")[0]
    assert "1 corrupt trial(s)** are left out" in best and str(bad) in best
