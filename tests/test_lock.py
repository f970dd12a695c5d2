"""One writer per folder: two real processes, a SIGKILLed holder, S3 leases through moto's server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from moto_s3 import moto_s3

import mtft_ray.lock as lock_mod
from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.lock import LOCK_NAME, FolderLock
from mtft_ray.storage import open_storage

sys.path.insert(0, str(Path(__file__).parent / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config  # noqa: E402

HOLD = """
import sys, time
from mtft_ray.config.schema import StorageConfig
from mtft_ray.lock import FolderLock
from mtft_ray.storage import open_storage
with FolderLock(open_storage(StorageConfig(path=sys.argv[1])), "sweep"):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_is_taken_over(tmp_path):
    storage = open_storage(StorageConfig(path=str(tmp_path / "sweep")))
    holder = _holder(tmp_path / "sweep")
    try:
        with pytest.raises(MtftError) as e, FolderLock(storage, "sweep"):
            pass
        msg = str(e.value)
        assert f"{tmp_path / 'sweep'} is in use: a sweep (pid {holder.pid} on {socket.gethostname()}, started " in msg
        assert "delete that file if the process is gone" in msg and "\n" not in msg
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    record = json.loads((tmp_path / "sweep" / LOCK_NAME).read_text())
    assert record["pid"] == holder.pid  # a SIGKILL leaves the record: stale now
    with FolderLock(storage, "run"):
        assert json.loads((tmp_path / "sweep" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / "sweep" / LOCK_NAME).exists() and os.listdir(tmp_path / "sweep") == []


def test_two_runs_into_one_folder_at_once_the_second_exits_2(tmp_path):
    make_folder_tree(tmp_path / "data")
    # long enough that the second (about 10 s of imports) starts while the first still trains
    cfg = tiny_config(tmp_path, methods=["direct", "multitask"], eval={"shots": [1]}, finetune={"epochs": 30})
    env = {**os.environ, "MTFT_RAY_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen([sys.executable, "-m", "mtft_ray.cli.main", "run", str(cfg), "--out", "out",
                              "--no-progress"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.time() + 120
    while not (tmp_path / "out" / LOCK_NAME).exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.05)
    second = mtft("run", str(cfg), "--out", "out", "--no-progress", cwd=tmp_path)
    assert first.poll() is None, "the first run ended before the second tried: the test proves nothing"
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert f"out is in use: a run (pid {first.pid} on " in second.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text())["results"]  # the first run's, whole


def test_s3_leases_refuse_a_live_holder_and_one_racer_takes_over_a_stale_one(monkeypatch):
    with moto_s3("locks") as endpoint:
        storage = open_storage(StorageConfig(path="s3://locks/sweeps/q", endpoint_url=endpoint))
        client = boto3.client("s3", endpoint_url=endpoint)
        with FolderLock(storage, "sweep"):
            held = json.loads(client.get_object(Bucket="locks", Key=f"sweeps/q/{LOCK_NAME}")["Body"].read())
            assert held["holder"] == "sweep" and held["expires"] > time.time()
            with pytest.raises(MtftError, match=r"s3://locks/sweeps/q is in use: a sweep \(pid"):
                FolderLock(storage, "sweep").__enter__()
        assert "Contents" not in client.list_objects_v2(Bucket="locks", Prefix="sweeps/q/")  # released
        stale = {"holder": "sweep", "pid": 1, "host": "gone", "expires": time.time() - 1}
        client.put_object(Bucket="locks", Key=f"sweeps/q/{LOCK_NAME}", Body=json.dumps(stale).encode())
        monkeypatch.setattr(lock_mod, "LEASE_S", 1000.0)
        a, b = FolderLock(storage, "sweep"), FolderLock(storage, "sweep")
        real_put = a._s3().put_object
        # b reads the stale lease, then a takes it over before b's compare-and-swap: b must lose
        got = client.get_object(Bucket="locks", Key=f"sweeps/q/{LOCK_NAME}")
        a.__enter__()
        with pytest.raises(Exception):
            real_put(Bucket="locks", Key=f"sweeps/q/{LOCK_NAME}", Body=b"b", IfMatch=got["ETag"])
        with pytest.raises(MtftError, match="is in use"):
            b.__enter__()
        a.__exit__(None, None, None)
