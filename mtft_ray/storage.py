"""Run storage: a local folder or ``s3://bucket/prefix``, as a pyarrow filesystem plus a path.

Distributed runs keep their checkpoints (through Ray Train) and their results here. S3 and
S3-compatible services (MinIO, Ceph, moto) are reached through an endpoint override taken from
``storage.endpoint_url`` or ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``. Credentials are
never read from configs: the AWS SDK's default chain finds them (environment, profile, instance
role), and nothing here prints or stores them.

Example:
    >>> from mtft_ray.config.schema import StorageConfig
    >>> store = open_storage(StorageConfig(path="/tmp/mtft-runs"))
    >>> store.uri("demo", "result.json")
    '/tmp/mtft-runs/demo/result.json'
    >>> parse_storage_path("s3://bucket/runs/")
    ('s3', 'bucket/runs')
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow.fs as pafs

from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_bytes


def parse_storage_path(path: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``("s3", "bucket/prefix")``; a local path → ``("local", absolute path)``.

    Raises:
        MtftError: another scheme, or an S3 URI without a bucket.
    """
    if path.startswith("s3://"):
        rest = path[len("s3://"):].strip("/")
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise MtftError(f"storage path {path!r} names no bucket: use s3://bucket/prefix")
        return "s3", rest
    if path.startswith("file://"):
        path = path[len("file://"):]
    elif "://" in path:
        raise MtftError(f"storage path {path!r}: only local paths and s3://bucket/prefix are supported")
    return "local", str(Path(path).expanduser().resolve())


def endpoint_url(cfg: StorageConfig) -> str | None:
    """The S3 endpoint override: the config's, else ``$AWS_ENDPOINT_URL_S3``, else ``$AWS_ENDPOINT_URL``."""
    return cfg.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_filesystem(cfg: StorageConfig, *, quick: bool = False) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with the configured endpoint and region, credentials from the AWS chain.

    Args:
        quick: short timeouts and a single attempt (for probing reachability).
    """
    kwargs: dict = {}
    endpoint = endpoint_url(cfg)
    if endpoint:
        kwargs["endpoint_override"] = endpoint
    region = cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if quick:
        kwargs.update(connect_timeout=3, request_timeout=10,
                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    return pafs.S3FileSystem(**kwargs)


@dataclass(frozen=True)
class Storage:
    """A storage root: ``filesystem`` and ``root`` (a path on it, without scheme).

    Attributes:
        scheme: ``"s3"`` or ``"local"``.
        filesystem: the pyarrow filesystem (what ``RunConfig(storage_filesystem=...)`` takes).
        root: the root path on ``filesystem`` (``bucket/prefix`` for S3).
        endpoint: the S3 endpoint override in use, if any (for messages; never credentials).
    """

    scheme: str
    filesystem: pafs.FileSystem
    root: str
    endpoint: str | None = None

    def path(self, *parts: str) -> str:
        """A path on the filesystem under the root."""
        return str(PurePosixPath(self.root, *parts))

    def uri(self, *parts: str) -> str:
        """The user-facing address: ``s3://bucket/prefix/...`` or a local path."""
        p = self.path(*parts)
        return f"s3://{p}" if self.scheme == "s3" else p

    def where(self) -> str:
        return self.uri() + (f" (endpoint {self.endpoint})" if self.endpoint else "")

    def exists(self, *parts: str) -> bool:
        return self.filesystem.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(*parts)) as f:
            return f.read()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write one object whole or not at all: locally a temporary file renamed over the name
        (a full disk is one MtftError line), on S3 a single PUT (the object appears complete)."""
        path = self.path(*parts)
        if self.scheme == "local":
            atomic_write_bytes(path, data)
            return
        with self.filesystem.open_output_stream(path) as f:
            f.write(data)

    def delete(self, *parts: str) -> None:
        self.filesystem.delete_file(self.path(*parts))

    def upload_dir(self, local: str | Path, *parts: str, exclude: tuple[str, ...] = ()) -> list[str]:
        """Copy the files of a local folder (recursively) under ``parts``; returns the URIs written."""
        local = Path(local)
        written = []
        for f in sorted(local.rglob("*")):
            rel = f.relative_to(local)
            if not f.is_file() or rel.parts[0] in exclude:
                continue
            self.write_bytes(f.read_bytes(), *parts, *rel.parts)
            written.append(self.uri(*parts, *rel.parts))
        return written


def open_storage(cfg: StorageConfig, default: str | Path | None = None) -> Storage:
    """The configured storage (``cfg.path``, else ``default``), not yet probed.

    Raises:
        MtftError: no path configured and no default, or an unsupported scheme.
    """
    path = cfg.path or (str(default) if default is not None else None)
    if not path:
        raise MtftError("no storage path: set storage.path to a local folder or s3://bucket/prefix")
    scheme, root = parse_storage_path(path)
    if scheme == "s3":
        return Storage("s3", s3_filesystem(cfg), root, endpoint_url(cfg))
    return Storage("local", pafs.LocalFileSystem(), root)


def probe_storage(storage: Storage, cfg: StorageConfig | None = None) -> None:
    """Write and delete a small object under the root, so bad storage fails before any training.

    Raises:
        MtftError: one line naming the storage and the reason (unreachable endpoint, missing
            bucket, no credentials, no permission).
    """
    fs = s3_filesystem(cfg, quick=True) if storage.scheme == "s3" and cfg is not None else storage.filesystem
    probe = Storage(storage.scheme, fs, storage.root, storage.endpoint)
    name = f".mtft-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe.write_bytes(b"ok", name)
        if probe.read_bytes(name) != b"ok":
            raise OSError("the probe object read back differently")
        probe.delete(name)
    except OSError as e:
        reason = " ".join(str(e).split())
        for marker in ("Request ID", "(Request"):  # drop request ids and the like
            reason = reason.split(marker)[0].rstrip(" (;")
        raise MtftError(f"storage {storage.where()} is not usable (write+delete of a test object failed): "
                        f"{reason[:300]}") from None
