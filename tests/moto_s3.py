"""A real S3 protocol endpoint for tests: moto's server on 127.0.0.1, with dummy credentials."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import pytest

DUMMY_ENV = {"AWS_ACCESS_KEY_ID": "mtft-test-key", "AWS_SECRET_ACCESS_KEY": "mtft-test-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}


@contextlib.contextmanager
def moto_s3(bucket: str = "mtft-runs") -> Iterator[str]:
    """Start moto's S3 server with ``bucket`` and dummy credentials in the environment; yield its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for k, v in DUMMY_ENV.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            mp.delenv(k, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            yield endpoint
        finally:
            server.stop()


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
