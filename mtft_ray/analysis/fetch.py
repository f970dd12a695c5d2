"""Where a sweep lives: a local folder, or ``s3://bucket/prefix`` copied (small files only) to a temp folder.

Only the files the analysis reads are downloaded (``sweep.json``, ``trials.csv``, Tune's
``experiment_state-*.json``, each trial's ``params.json``, ``result.json``, ``error.txt`` and
``run/result.json`` / ``run/config.yaml``); checkpoints never are, but their keys are listed so
the analysis can name the checkpoint a trial left. The endpoint is ``--endpoint-url``, else
``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``; credentials come from the AWS default chain.

Example:
    >>> with open_sweep("/tmp/no-such-sweep") as loc:   # doctest: +SKIP
    ...     loc.local, loc.uri
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.storage import endpoint_url, parse_storage_path, s3_filesystem

WANTED = ("sweep.json", "screen.json", "trials.csv", "experiment_state-*.json", "params.json", "result.json", "error.txt",
          "config.yaml", "driver.json")  # file names the analysis reads; everything else stays remote
MAX_DEPTH = 3  # sweep/trial/run/file


@dataclass(frozen=True)
class Location:
    """A sweep as a local folder.

    Attributes:
        uri: the address the user gave (local path or ``s3://bucket/prefix``), for reports.
        local: the folder to read.
        remote_files: for S3, every file under the prefix relative to it (checkpoints included);
            ``None`` for a local folder (look on disk).
    """

    uri: str
    local: Path
    remote_files: frozenset[str] | None = None

    @property
    def name(self) -> str:
        return PurePosixPath(self.uri.rstrip("/")).name or "sweep"

    def has_file(self, rel: str) -> bool:
        return rel in self.remote_files if self.remote_files is not None else (self.local / rel).is_file()

    def address(self, rel: str) -> str:
        """The user-facing address of a file of the sweep."""
        return f"{self.uri.rstrip('/')}/{rel}" if self.remote_files is not None else str(self.local / rel)


def _wanted(rel: str) -> bool:
    parts = rel.split("/")
    if len(parts) > MAX_DEPTH or parts[0] == "analysis":
        return False
    return any(fnmatch.fnmatch(parts[-1], pat) for pat in WANTED)


def _one_line(e: Exception) -> str:
    reason = " ".join(str(e).split())
    for marker in ("Request ID", "(Request"):
        reason = reason.split(marker)[0].rstrip(" (;")
    return reason[:300]


def _download(fs: pafs.FileSystem, root: str, infos: list[pafs.FileInfo], dest: Path) -> None:
    def get(info: pafs.FileInfo) -> None:
        target = dest / info.path[len(root):].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as src:
            target.write_bytes(src.read())
        if info.mtime is not None:  # the trial timeline reads file times
            stamp = info.mtime.timestamp()
            os.utime(target, (stamp, stamp))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, infos))


def fetch_s3(uri: str, dest: Path, endpoint: str | None = None) -> Location:
    """Copy the small files of the sweep at ``uri`` into ``dest``.

    Raises:
        MtftError: unreachable endpoint, missing bucket, no credentials, or nothing under the prefix.
    """
    _, root = parse_storage_path(uri)
    cfg = StorageConfig(path=uri, endpoint_url=endpoint)
    where = uri + (f" (endpoint {endpoint_url(cfg)})" if endpoint_url(cfg) else "")
    try:
        quick = s3_filesystem(cfg, quick=True)
        bucket = root.split("/", 1)[0]
        if quick.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise MtftError(f"no sweep at {where}: bucket {bucket!r} does not exist")
        infos = quick.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        files = [i for i in infos if i.type == pafs.FileType.File]
        rels = frozenset(i.path[len(root):].lstrip("/") for i in files)
        if not rels:
            raise MtftError(f"no sweep at {where}: nothing is stored under that prefix")
        _download(s3_filesystem(cfg), root, [i for i in files if _wanted(i.path[len(root):].lstrip("/"))], dest)
    except OSError as e:
        raise MtftError(f"cannot read the sweep at {where}: {_one_line(e)}") from None
    return Location(uri.rstrip("/"), dest, rels)


@contextlib.contextmanager
def open_sweep(path: str, endpoint: str | None = None) -> Iterator[Location]:
    """The sweep at ``path`` as a local folder; an S3 copy is removed on exit.

    Raises:
        MtftError: a local path that is not a folder, or an S3 sweep that cannot be read.
    """
    scheme, root = parse_storage_path(path)
    if scheme == "local":
        local = Path(root)
        if not local.is_dir():
            raise MtftError(f"no sweep at {path}: {'not a folder' if local.exists() else 'no such folder'}")
        yield Location(str(local), local)
        return
    tmp = Path(tempfile.mkdtemp(prefix="mtft-analyze-"))
    try:
        yield fetch_s3(path, tmp, endpoint)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
