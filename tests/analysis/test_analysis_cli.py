"""``mtft-ray analyze`` as a subprocess, on local folders and on S3 (moto's server on 127.0.0.1)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from moto_s3 import closed_port, moto_s3
from synthetic import Trial, make_sweep, trend_trials

from mtft_ray.analysis import analyze
from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.storage import open_storage


def mtft(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_happy_path(tmp_path):
    root = make_sweep(tmp_path / "sw", trend_trials(12))
    r = mtft("analyze", str(root), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("synthetic: 12 trials (12 finished); sweep ended; metric acc_1shot (max)")
    for needle in ("best:", "correlation:", "fit:", "next:", f"wrote 10 files to {tmp_path / 'out'}:",
                   str(tmp_path / "out" / "report.md")):
        assert needle in r.stdout, needle
    assert (tmp_path / "out" / "report.md").is_file()


@pytest.mark.parametrize("setup,needle", [
    (lambda p: p / "nope", "no sweep at .*nope: no such folder"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "no sweep.json and no trial folders"),
    (lambda p: make_sweep(p / "sw", []), "has no trials yet"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, setup, needle):
    r = mtft("analyze", str(setup(tmp_path)), cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    line, = r.stderr.strip().splitlines()
    assert line.startswith("mtft-ray: error: ") and re.search(needle, line), line


def test_cli_all_errored_writes_the_report_and_exits_1(tmp_path):
    root = make_sweep(tmp_path / "sw", [Trial({"tasks.M": 25}, status="errored"), Trial({"tasks.M": 50}, status="errored")])
    r = mtft("analyze", str(root), cwd=tmp_path)
    assert r.returncode == 1 and "no trial has finished" in r.stderr
    assert "2 trials (2 errored)" in r.stdout and (root / "analysis" / "report.md").is_file()


@pytest.fixture(scope="module")
def s3():
    with moto_s3("mtft-sweeps") as endpoint:
        yield endpoint


def upload(tmp_path: Path, endpoint: str, prefix: str) -> Path:
    root = make_sweep(tmp_path / "sw", trend_trials(8) + [Trial({"tasks.M": 25}, status="errored")])
    store = open_storage(StorageConfig(path=f"s3://mtft-sweeps/{prefix}", endpoint_url=endpoint))
    store.upload_dir(root)
    return root


def test_s3_sweep_in_process(s3, tmp_path):
    upload(tmp_path, s3, "sweeps/trend")
    a = analyze("s3://mtft-sweeps/sweeps/trend", tmp_path / "out", endpoint=s3)
    assert a.data.trials["status"].value_counts().to_dict() == {"finished": 8, "errored": 1}
    ckpt = a.data.finished()["checkpoint"]
    assert ckpt.str.match(r"s3://mtft-sweeps/sweeps/trend/trial_driver_abcde_\d{5}_.*/run/multitask\.pt").all()
    assert not a.data.problems and len(a.files) == 10
    assert "`s3://mtft-sweeps/sweeps/trend`" in (tmp_path / "out" / "report.md").read_text()
    assert pd.read_parquet(tmp_path / "out" / "trials.parquet")["started_at"].notna().all()  # file times kept


def test_s3_sweep_through_the_cli_with_the_endpoint_from_the_environment(s3, tmp_path):
    upload(tmp_path, s3, "sweeps/env")
    r = mtft("analyze", "s3://mtft-sweeps/sweeps/env", cwd=tmp_path, env={"AWS_ENDPOINT_URL": s3})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs" / "analysis" / "env" / "report.md").is_file()  # default out for s3://
    assert "s3://mtft-sweeps/sweeps/env/trial_driver_abcde_" in r.stdout


def test_s3_missing_prefix_bucket_and_endpoint(s3):
    with pytest.raises(MtftError, match=r"no sweep at s3://mtft-sweeps/nothing-here .*nothing is stored"):
        analyze("s3://mtft-sweeps/nothing-here", endpoint=s3)
    with pytest.raises(MtftError, match="no sweep at s3://no-such-bucket/x .*bucket 'no-such-bucket' does not exist"):
        analyze("s3://no-such-bucket/x", endpoint=s3)
    port = closed_port()
    t0 = time.perf_counter()
    with pytest.raises(MtftError, match=f"cannot read the sweep at s3://mtft-sweeps/x \\(endpoint http://127.0.0.1:{port}\\)"):
        analyze("s3://mtft-sweeps/x", endpoint=f"http://127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 20
