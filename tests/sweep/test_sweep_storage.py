"""Sweeps beyond the local folder: stored in S3 and restored from there, per-epoch reports that an
ASHA scheduler acts on, the Optuna study in SQLite, and data errors caught before any trial."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
sys.path.insert(0, str(Path(__file__).parents[1]))
from moto_s3 import list_keys, moto_s3
from test_cli import make_folder_tree, mtft, tiny_config

pytestmark = pytest.mark.slow


def write_sweep(tmp_path: Path, name: str, space: dict, *, finetune: dict | None = None, **search) -> Path:
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 4},
                                      finetune={"epochs": 1, "tasks_per_step": 2, "val_episodes": 5, **(finetune or {})},
                                      eval={"shots": [1], "episodes": 20}).read_text())
    extra = {k: search.pop(k) for k in ("scheduler",) if k in search}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": base, **extra, "search": {
        "space": space, "algorithm": "grid", "num_samples": 1, **search}}))
    return path


@pytest.fixture
def tree(tmp_path):
    return make_folder_tree(tmp_path / "data")


def test_sweep_stored_in_s3_and_restored_from_there(tmp_path, tree):
    path = write_sweep(tmp_path, "s3-sweep", {"tasks.M": {"choice": [2, 4]}})
    with moto_s3("sweeps") as endpoint:
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint)
        env = {"AWS_ENDPOINT_URL": endpoint}
        r = mtft("sweep", str(path), "--out", "s3://sweeps/team/s3-sweep", cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        keys = list_keys(endpoint, "sweeps", "team/s3-sweep/")
        assert {"team/s3-sweep/sweep.json", "team/s3-sweep/trials.csv"} <= set(keys)
        results = sorted(k for k in keys if k.endswith("/run/result.json"))
        assert len(results) == 2 and sum(k.endswith("/run/multitask.pt") for k in keys) == 2
        assert not list(tmp_path.glob("runs")), "nothing of an S3 sweep is kept in the working folder"

        rows = list(csv.DictReader(io.StringIO(s3.get_object(Bucket="sweeps", Key="team/s3-sweep/trials.csv")
                                               ["Body"].read().decode())))
        assert [x["status"] for x in rows] == ["TERMINATED", "TERMINATED"]
        assert all(x["checkpoint"].startswith("s3://sweeps/team/s3-sweep/") for x in rows)
        stamps = {k: s3.head_object(Bucket="sweeps", Key=k)["LastModified"] for k in results}

        # the same command restores the sweep from S3: nothing is trained again
        again = mtft("sweep", str(path), "--out", "s3://sweeps/team/s3-sweep", cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "] trial " not in again.stdout  # no trial ran
        rows2 = list(csv.DictReader(io.StringIO(s3.get_object(Bucket="sweeps", Key="team/s3-sweep/trials.csv")
                                                ["Body"].read().decode())))
        assert [(x["trial_id"], x["acc_1shot"]) for x in rows2] == [(x["trial_id"], x["acc_1shot"]) for x in rows]
        assert {k: s3.head_object(Bucket="sweeps", Key=k)["LastModified"] for k in results} == stamps

        # the analysis reads the sweep straight from S3 and names checkpoints by their S3 address
        a = mtft("analyze", "s3://sweeps/team/s3-sweep", "--out", str(tmp_path / "analysis"), cwd=tmp_path, env=env)
        assert a.returncode == 0, a.stderr[-2000:]
        assert "2 trials (2 finished)" in a.stdout and "checkpoint:  s3://sweeps/team/s3-sweep/" in a.stdout
        assert (tmp_path / "analysis" / "report.md").is_file()

        # storage.path in the sweep file places the sweep at <path>/<name>; a different sweep there is refused
        moved = mtft("sweep", str(path), "storage.path=s3://sweeps/team", "search.num_samples=2", cwd=tmp_path,
                     env=env)
        assert moved.returncode == 2 and "s3://sweeps/team/s3-sweep holds a different sweep" in moved.stderr

    # the endpoint is gone: a clear error before Ray starts
    gone = mtft("sweep", str(path), "--out", "s3://sweeps/other", cwd=tmp_path, env=env, timeout=120)
    assert gone.returncode == 2 and "storage s3://sweeps/other" in gone.stderr and "not usable" in gone.stderr


def test_asha_stops_a_trial_on_its_per_epoch_val_acc(tmp_path, tree):
    """The first trial (lr 1e-9: the pretrained features, which suit this data) sets the bar at
    epoch 1; lr 0.5 wrecks the features in its first epoch, so ASHA (rf 2) stops it there."""
    keep, wreck = 1e-9, 0.5
    path = write_sweep(tmp_path, "asha", {"finetune.lr": {"choice": [keep, wreck]}}, finetune={"epochs": 3},
                       scheduler={"asha": {"grace_period": 1, "max_t": 10, "reduction_factor": 2}})
    out = tmp_path / "sw"
    r = mtft("sweep", str(path), "resources={cpu: 2}", "--out", str(out), cwd=tmp_path)  # one trial at a time
    assert r.returncode == 0, r.stderr[-3000:]
    reports = {}
    for trial in out.glob("*/result.json"):
        lines = [json.loads(x) for x in trial.read_text().splitlines() if x.strip()]
        reports[lines[0]["config"]["finetune.lr"]] = lines
    assert sorted(reports, key=lambda lr: reports[lr][0]["timestamp"]) == [keep, wreck]  # the grid's order
    kept, stopped = reports[keep], reports[wreck]
    assert [x["epoch"] for x in kept] == [1, 2, 3, 3] and "acc_1shot" in kept[-1]  # 3 epochs, then the result
    assert all("val_acc" in x and "acc_1shot" not in x for x in kept[:3])
    assert stopped[0]["val_acc"] < kept[0]["val_acc"]
    assert len(stopped) == 1  # stopped after its first epoch
    with open(out / "trials.csv") as f:
        rows = {float(x["finetune.lr"]): x for x in csv.DictReader(f)}
    assert rows[wreck]["status"] == "STOPPED" and rows[keep]["status"] == "TERMINATED"
    assert "stopped early" in r.stdout and "1 stopped early" in r.stdout

    # the analysis reads the early stop as such, and the best trial as the kept one
    a = mtft("analyze", str(out), "--out", str(tmp_path / "analysis"), cwd=tmp_path, timeout=120)
    assert a.returncode == 0, a.stderr[-2000:]
    with open(tmp_path / "analysis" / "trials.csv") as f:
        status = {float(x["finetune.lr"]): x["status"] for x in csv.DictReader(f)}
    assert status == {keep: "finished", wreck: "stopped early"}


def test_data_errors_stop_the_sweep_before_any_trial(tmp_path, tree):
    """6 classes of 12 images per domain: 7-way tasks, 9-way evaluation, or 6+7 samples per class
    (each key fits alone, not together) cannot be drawn; no trial starts."""
    for space, needle in [({"tasks.n_way": {"choice": [3, 7]}}, "tasks.n_way=7"),
                          ({"eval.n_way": {"int": [2, 9]}}, "eval.n_way=9"),
                          ({"tasks.n_shot": {"int": [1, 6]}, "tasks.n_query": {"int": [2, 7]}},
                           "tasks.n_query=7, tasks.n_shot=6")]:
        path = write_sweep(tmp_path, "bad", space, algorithm="random")
        out = tmp_path / "bad-out"
        r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path, timeout=120)
        assert r.returncode == 2 and needle in r.stderr and "classes" in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1
        assert not out.exists()  # nothing written, so the fixed sweep can use the folder
        dry = mtft("sweep", str(path), "--dry-run", cwd=tmp_path, timeout=120)
        assert dry.returncode == 2 and needle in dry.stderr
    no_val = write_sweep(tmp_path, "noval", {"tasks.M": {"choice": [2]}},
                         scheduler={"asha": {"grace_period": 1, "max_t": 2}})
    raw = yaml.safe_load(no_val.read_text())
    raw["base"]["data"]["split"]["val_domains"] = 0
    no_val.write_text(yaml.safe_dump(raw))
    r = mtft("sweep", str(no_val), "--dry-run", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "asha watches val_acc" in r.stderr and "no validation classes" in r.stderr


def test_a_backbone_that_cannot_be_built_stops_the_sweep_before_any_trial(tmp_path, tree):
    """A misspelt timm model, or packaged weights that no package ships, fail in the dry run and the
    real run alike, naming the value; hub weights are fetched on use and pass the check."""
    for space, needle in [({"backbone.name": {"choice": ["tf_efficientnet_lite0", "resnet_18"]}},
                           "backbone.name='resnet_18': unknown timm model 'resnet_18'; did you mean resnet18"),
                          ({"backbone.name": {"choice": ["resnet18"]}},
                           "resnet18: no packaged weights for this model")]:
        path = write_sweep(tmp_path, "bad-backbone", space, algorithm="grid")
        for extra in (["--dry-run"], ["--out", str(tmp_path / "bb-out")]):
            r = mtft("sweep", str(path), *extra, cwd=tmp_path, timeout=120)
            assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
            assert not (tmp_path / "bb-out").exists()
    hub = write_sweep(tmp_path, "hub", {"backbone.name": {"choice": ["resnet18"]}}, algorithm="grid")
    r = mtft("sweep", str(hub), "backbone.weights=hub", "--dry-run", cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "every episode shape of the space fits the data" in r.stdout, r.stderr[-2000:]
