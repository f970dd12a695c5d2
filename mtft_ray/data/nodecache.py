"""One copy of an ``s3://`` store per node: downloaded once under a file lock, then memory-mapped.

The first process on a node that opens an S3 store (a trial driver, a Ray Train worker) takes the
lock of that store's cache folder and downloads the header, the index and every shard into a
temporary folder beside it, one GET per object, checking each size against the header; only
then is the folder renamed into place. Every other process on the node waits on the lock and
then memory-maps the same files, so the page cache holds one copy however many trials and
workers read it. A download that fails midway (an object gone, the endpoint unreachable)
removes its temporary folder: nothing half-written is ever left where a later run would trust it.

A cached copy is used while the remote header is unchanged (one HEAD request: its size and
modification time), so a store prepared again under the same URI is fetched again.

Example:
    >>> path = node_copy("s3://bucket/stores/domainnet-224", Path("/tmp/cache"))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from mtft_ray.config.schema import StorageConfig
from mtft_ray.data.sharded import HEADER, INDEX
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_json
from mtft_ray.storage import endpoint_url as storage_endpoint

ORIGIN = ".origin.json"  # what the copy was made from: the URI and the remote header's size and time


def s3_client(endpoint_url: str | None, region: str | None):
    """A boto3 S3 client for the endpoint (else the AWS environment's); one per process and
    endpoint, reused (making one costs tens of milliseconds: too much per file read)."""
    endpoint = storage_endpoint(StorageConfig(endpoint_url=endpoint_url))  # the config's, else the AWS environment's
    return _cached_client(endpoint, region or None, os.getpid())


@functools.lru_cache(maxsize=8)
def _cached_client(endpoint: str | None, region: str | None, pid: int):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name=region or None,
                        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10))


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    rest = uri[len("s3://"):].strip("/")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise MtftError(f"store uri {uri!r} names no bucket: use s3://bucket/prefix")
    return bucket, prefix


def s3_reason(e: Exception) -> str:
    code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
    return {"NoSuchKey": "the object does not exist", "404": "the object does not exist",
            "NoSuchBucket": "the bucket does not exist", "AccessDenied": "access denied"}.get(code or "", " ".join(str(e).split())[:200])


def node_copy(uri: str, cache: Path, *, endpoint_url: str | None = None, region: str | None = None,
              timeout_s: float = 3600) -> Path:
    """The node-local copy of the S3 store at ``uri``, downloading it first if this node has none
    (or has an older one). Safe to call from many processes at once: one downloads, the others wait.

    Raises:
        MtftError: one line naming the object that could not be fetched (missing, wrong size,
            endpoint unreachable); the partial download is removed.
    """
    from filelock import FileLock, Timeout

    bucket, prefix = split_uri(uri)
    s3 = s3_client(endpoint_url, region)
    key = lambda name: f"{prefix}/{name}" if prefix else name  # noqa: E731
    try:
        head = s3.head_object(Bucket=bucket, Key=key(HEADER))
    except Exception as e:  # botocore's ClientError / EndpointConnectionError / NoCredentialsError
        raise MtftError(f"cannot open store {uri}: s3://{bucket}/{key(HEADER)}: {s3_reason(e)}") from None
    origin = {"uri": uri, "size": head["ContentLength"], "etag": head.get("ETag", "").strip('"')}
    root = cache / "stores" / "s3"
    root.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    final = root / name
    try:
        with FileLock(str(root / f"{name}.lock"), timeout=timeout_s):
            if _is_current(final, origin):
                return final
            partial = root / f".{name}.partial{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                _download(s3, bucket, key, uri, partial)
                atomic_write_json(partial / ORIGIN, origin)
                if final.exists():  # an older copy: set aside (processes that mapped it keep their pages)
                    stale = root / f".{name}.stale{os.getpid()}-{time.time_ns()}"
                    os.rename(final, stale)
                    shutil.rmtree(stale, ignore_errors=True)
                os.rename(partial, final)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
    except Timeout:
        raise MtftError(f"waited {timeout_s:.0f} s for another process to download {uri} into {final}; "
                        f"remove {root / (name + '.lock')} if no process holds it") from None
    return final


def _is_current(path: Path, origin: dict) -> bool:
    try:
        return (path / HEADER).is_file() and json.loads((path / ORIGIN).read_text()) == origin
    except (OSError, ValueError):
        return False


def get_to_file(s3, bucket: str, key: str, target: Path, uri: str, expect: int | None = None) -> None:
    """One GET of ``key`` streamed to ``target``; its size checked when ``expect`` is given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        with open(target, "wb") as f:
            for chunk in body.iter_chunks(8 << 20):
                f.write(chunk)
    except Exception as e:
        raise MtftError(f"downloading store {uri} failed at s3://{bucket}/{key}: {s3_reason(e)} "
                        f"(nothing was kept; run again once the store is complete)") from None
    if expect is not None and target.stat().st_size != expect:
        raise MtftError(f"downloading store {uri}: s3://{bucket}/{key} has {target.stat().st_size} bytes, its "
                        f"header says {expect} (nothing was kept; prepare the store again)")


def _download(s3, bucket: str, key, uri: str, partial: Path) -> None:
    from mtft_ray.data.sharded import read_header

    get_to_file(s3, bucket, key(HEADER), partial / HEADER, uri)
    try:
        header = read_header(partial)
    except MtftError as e:
        raise MtftError(f"store {uri}: {str(e).replace(str(partial), f's3://{bucket}/{key(HEADER)}')}") from None
    get_to_file(s3, bucket, key(INDEX), partial / INDEX, uri)
    for entry in header["shards"]:
        get_to_file(s3, bucket, key(entry["file"]), partial / entry["file"], uri, expect=entry["bytes"])
