"""Run storage: path parsing, local folders, and S3 through moto's server on 127.0.0.1."""

from __future__ import annotations

import time

import pytest

from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.storage import endpoint_url, open_storage, parse_storage_path, probe_storage
from moto_s3 import DUMMY_ENV, closed_port, list_keys, moto_s3


@pytest.mark.parametrize("path,expected", [
    ("s3://bucket/runs/exp1", ("s3", "bucket/runs/exp1")),
    ("s3://bucket/", ("s3", "bucket")),
    ("s3://bucket", ("s3", "bucket")),
    ("/tmp/x/../runs", ("local", "/tmp/runs")),
    ("file:///tmp/runs", ("local", "/tmp/runs")),
])
def test_parse_storage_path(path, expected):
    assert parse_storage_path(path) == expected


@pytest.mark.parametrize("path,needle", [("s3://", "names no bucket"), ("gs://b/x", "only local paths"),
                                         ("hdfs://nn/x", "only local paths")])
def test_parse_storage_path_rejects(path, needle):
    with pytest.raises(MtftError, match=needle):
        parse_storage_path(path)


def test_endpoint_from_config_then_environment(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert endpoint_url(StorageConfig()) == "http://127.0.0.1:9"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")
    assert endpoint_url(StorageConfig()) == "http://127.0.0.1:10"
    assert endpoint_url(StorageConfig(endpoint_url="http://127.0.0.1:11")) == "http://127.0.0.1:11"


def test_local_storage_write_read_upload(tmp_path):
    st = open_storage(StorageConfig(path=str(tmp_path / "store")))
    probe_storage(st)
    assert st.uri("a", "b.txt") == str(tmp_path / "store" / "a" / "b.txt")
    st.write_bytes(b"hello", "a", "b.txt")
    assert st.exists("a", "b.txt") and st.read_bytes("a", "b.txt") == b"hello"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "r.json").write_text("{}")
    (src / "sub" / "x.bin").write_bytes(b"x")
    (src / "train").mkdir()
    (src / "train" / "skip.pt").write_bytes(b"s")
    written = st.upload_dir(src, "run", exclude=("train",))
    assert sorted(written) == sorted([st.uri("run", "r.json"), st.uri("run", "sub", "x.bin")])
    assert not st.exists("run", "train", "skip.pt")
    assert open_storage(StorageConfig(), default=tmp_path / "d").root == str(tmp_path / "d")
    with pytest.raises(MtftError, match="no storage path"):
        open_storage(StorageConfig())


def test_local_storage_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(MtftError, match="is not usable"):
        probe_storage(open_storage(StorageConfig(path=str(blocker / "runs"))))


@pytest.fixture(scope="module")
def s3():
    with moto_s3("mtft-storage") as endpoint:
        yield endpoint


def test_s3_probe_write_read_and_upload(s3, tmp_path):
    cfg = StorageConfig(path="s3://mtft-storage/prefix", endpoint_url=s3)
    st = open_storage(cfg)
    assert (st.scheme, st.root, st.uri("x")) == ("s3", "mtft-storage/prefix", "s3://mtft-storage/prefix/x")
    probe_storage(st, cfg)
    assert not [k for k in list_keys(s3, "mtft-storage") if "probe" in k]  # the probe object is deleted again
    (tmp_path / "result.json").write_text('{"ok": 1}')
    assert st.upload_dir(tmp_path, "run1") == ["s3://mtft-storage/prefix/run1/result.json"]
    assert "prefix/run1/result.json" in list_keys(s3, "mtft-storage")
    assert st.read_bytes("run1", "result.json") == b'{"ok": 1}'


def test_s3_endpoint_from_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    cfg = StorageConfig(path="s3://mtft-storage/env")
    probe_storage(open_storage(cfg), cfg)


def test_unreachable_s3_endpoint_fails_fast_and_clearly(s3):
    port = closed_port()
    cfg = StorageConfig(path="s3://mtft-storage/runs", endpoint_url=f"http://127.0.0.1:{port}")
    t0 = time.perf_counter()
    with pytest.raises(MtftError) as e:
        probe_storage(open_storage(cfg), cfg)
    assert time.perf_counter() - t0 < 20
    msg = str(e.value)
    assert "s3://mtft-storage/runs" in msg and f"127.0.0.1:{port}" in msg and "not usable" in msg
    assert "\n" not in msg
    assert not any(v in msg for v in DUMMY_ENV.values() if v != "us-east-1")  # never credentials


def test_missing_bucket_is_named(s3):
    cfg = StorageConfig(path="s3://no-such-bucket/runs", endpoint_url=s3)
    with pytest.raises(MtftError, match="no-such-bucket.*(NO_SUCH_BUCKET|does not exist)"):
        probe_storage(open_storage(cfg), cfg)
