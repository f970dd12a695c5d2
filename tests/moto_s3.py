"""A real S3 protocol endpoint for tests: moto's server on 127.0.0.1, with dummy credentials."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def recording(endpoint: str) -> Iterator[Callable[[], list[dict]]]:
    """Record every request the moto server at ``endpoint`` receives (moto's own recorder); yield a
    function that returns them (``{"method", "url", ...}`` each). The server writes the recording to
    ``$MOTO_RECORDER_FILEPATH``, read when moto is first imported (tests/conftest.py sets it)."""
    import requests

    requests.post(f"{endpoint}/moto-api/recorder/reset-recording", timeout=10)
    requests.post(f"{endpoint}/moto-api/recorder/start-recording", timeout=10)

    def requests_so_far() -> list[dict]:
        text = requests.get(f"{endpoint}/moto-api/recorder/download-recording", timeout=10).text
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    try:
        yield requests_so_far
    finally:
        requests.post(f"{endpoint}/moto-api/recorder/stop-recording", timeout=10)
