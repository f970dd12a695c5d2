"""Artifacts are written whole or not at all; a full disk is one line that loses no result.

The full-disk cases mount a real 3 MB tmpfs (root, as on the CI machine); they are skipped with
the reason where mounting is not allowed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_torch_save, atomic_write_bytes, file_digest, verify_digest
from mtft_ray.storage import open_storage

sys.path.insert(0, str(Path(__file__).parent / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config  # noqa: E402


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_is_one_line_and_keeps_the_old_file(small_disk):
    target = small_disk / "weights.bin"
    atomic_write_bytes(target, b"old")
    with pytest.raises(MtftError, match=r"^no space left on device writing .*/disk/weights.bin, about 4.0 MB needed$"):
        atomic_write_bytes(target, b"x" * 4_000_000)
    assert target.read_bytes() == b"old" and [p.name for p in small_disk.iterdir()] == ["weights.bin"]


def test_torch_checkpoints_on_a_full_disk_name_their_size_and_leave_nothing(small_disk):
    state = {"w": torch.zeros(1_000_000)}  # 4 MB of float32
    with pytest.raises(MtftError, match=r"writing .*/model.pt, about 4.0 MB needed"):
        atomic_torch_save(state, small_disk / "model.pt")
    assert list(small_disk.iterdir()) == []


def test_storage_writes_are_atomic_locally(small_disk):
    storage = open_storage(StorageConfig(path=str(small_disk)))
    storage.write_bytes(b"a,b\n1,2\n", "trials.csv")
    with pytest.raises(MtftError, match="no space left on device writing .*trials.csv"):
        storage.write_bytes(b"x" * 4_000_000, "trials.csv")
    assert (small_disk / "trials.csv").read_bytes() == b"a,b\n1,2\n"  # never a 0-byte trials.csv


def test_a_digest_catches_truncation_and_changes(tmp_path):
    path = tmp_path / "m.pt"
    digest = atomic_torch_save({"w": torch.arange(10.0)}, path)
    assert digest == file_digest(path) and verify_digest(path, digest) is None
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    assert "bytes" in verify_digest(path, digest) and "written" in verify_digest(path, digest)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert "sha256" in verify_digest(path, digest)
    path.unlink()
    assert "missing" in verify_digest(path, digest)


def test_a_run_on_a_full_disk_exits_2_in_one_line_and_keeps_its_accuracies(tmp_path, small_disk):
    make_folder_tree(tmp_path / "data")
    cfg = tiny_config(tmp_path, methods=["direct", "standard"], eval={"shots": [1]})
    out = small_disk / "run"
    done = mtft("run", str(cfg), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"no space left on device writing {out}/standard.pt, about" in line and "MB needed" in line
    assert f"accuracies computed so far are in {out}/scores.json: direct 1-shot" in line and "standard 1-shot" in line
    scores = json.loads((out / "scores.json").read_text())
    assert scores["complete"] is False and [r["method"] for r in scores["results"]] == ["direct", "standard"]
    assert not (out / "result.json").exists() and not (out / "standard.pt").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind
