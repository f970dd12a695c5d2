"""One writer per sweep folder and per run folder.

A writer holds ``.mtft-lock`` in the folder while it works: a small JSON record of who holds it
(what, PID, host, start time, command). A second writer exits with one line naming the holder.

* **Local folders**: the record is created with ``O_CREAT | O_EXCL`` (only one process can
  create it). A record left by a process that is gone (same host, PID not alive) is stale: it is
  taken over by renaming it aside first, which only one of several racing processes can do.
* **S3 folders**: the record is a lease object written with a conditional put
  (``If-None-Match: *``: only one writer can create it). The holder renews it every
  ``LEASE_S / 4`` seconds; a lease past its expiry is stale and is taken over with ``If-Match``
  on its ETag (a compare-and-swap: one of several racing writers wins).

Example:
    >>> with FolderLock(open_storage(StorageConfig(path="runs/sweeps/q")), "sweep"):  # doctest: +SKIP
    ...     run_the_sweep()
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time

from mtft_ray.errors import MtftError
from mtft_ray.storage import Storage

LOCK_NAME = ".mtft-lock"
LEASE_S = 120.0  # an S3 lease not renewed for this long is stale


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class FolderLock:
    """Hold ``storage``'s folder for one writer (a context manager; see the module).

    Args:
        storage: the folder (local or S3).
        what: who holds it, for the message a second writer gets (``sweep``, ``run``).
    """

    def __init__(self, storage: Storage, what: str) -> None:
        self.storage, self.what = storage, what
        self._etag: str | None = None
        self._created = False
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _record(self) -> dict:
        now = time.time()
        return {"holder": self.what, "pid": os.getpid(), "host": socket.gethostname(), "started": now,
                "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                "command": " ".join(sys.argv)[:500], "expires": now + LEASE_S}

    def _refuse(self, held: dict) -> MtftError:
        where = self.storage.uri()
        return MtftError(
            f"{where} is in use: a {held.get('holder', '?')} (pid {held.get('pid', '?')} on {held.get('host', '?')}, "
            f"started {held.get('started_utc', '?')}, command {held.get('command', '?')!r}) holds "
            f"{self.storage.uri(LOCK_NAME)}; wait for it to end, use another folder, or delete that file if the "
            f"process is gone")

    # --- local -----------------------------------------------------------------------------------

    def _acquire_local(self) -> None:
        path = self.storage.path(LOCK_NAME)
        self._created = not os.path.isdir(os.path.dirname(path))  # removed again if left empty
        os.makedirs(os.path.dirname(path), exist_ok=True)
        for _ in range(50):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read_local(path)
                if held is None:  # being written or taken over right now: look again
                    time.sleep(0.05)
                    continue
                if held.get("host") != socket.gethostname() or _pid_alive(int(held.get("pid", 0))):
                    raise self._refuse(held) from None
                aside = f"{path}.stale.{os.getpid()}"
                try:
                    os.rename(path, aside)  # one racer wins; the others see it gone and retry
                except FileNotFoundError:
                    continue
                os.unlink(aside)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            return
        raise MtftError(f"could not take {path}: other writers keep racing for it")

    @staticmethod
    def _read_local(path: str) -> dict | None:
        try:
            with open(path) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _release_local(self) -> None:
        path = self.storage.path(LOCK_NAME)
        held = self._read_local(path)
        if held and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
            os.unlink(path)
            if self._created:  # a writer that failed before writing anything leaves no folder behind
                try:
                    os.rmdir(os.path.dirname(path))
                except OSError:
                    pass

    # --- S3 --------------------------------------------------------------------------------------

    def _s3(self):
        import boto3  # only for S3 folders

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        return boto3.client("s3", endpoint_url=self.storage.endpoint, region_name=region)

    def _bucket_key(self) -> tuple[str, str]:
        bucket, _, key = self.storage.path(LOCK_NAME).partition("/")
        return bucket, key

    def _acquire_s3(self) -> None:
        from botocore.exceptions import ClientError

        client, (bucket, key) = self._s3(), self._bucket_key()
        body = json.dumps(self._record()).encode()
        try:
            self._etag = client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")["ETag"]
            return
        except ClientError as e:
            if e.response["Error"]["Code"] not in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                raise
        got = client.get_object(Bucket=bucket, Key=key)
        held = json.loads(got["Body"].read())
        if held.get("expires", 0) > time.time():
            raise self._refuse(held)
        try:  # a stale lease: compare-and-swap on its ETag, so one racer wins
            self._etag = client.put_object(Bucket=bucket, Key=key, Body=body, IfMatch=got["ETag"])["ETag"]
        except ClientError as e:
            raise self._refuse(held) from e

    def _renew(self) -> None:
        client, (bucket, key) = self._s3(), self._bucket_key()
        while not self._stop.wait(LEASE_S / 4):
            try:
                self._etag = client.put_object(Bucket=bucket, Key=key, Body=json.dumps(self._record()).encode(),
                                               IfMatch=self._etag)["ETag"]
            except Exception as e:  # noqa: BLE001 - a lost lease is reported, the work goes on
                print(f"mtft-ray: warning: could not renew the lock {self.storage.uri(LOCK_NAME)}: {e}",
                      file=sys.stderr)

    # --- both ------------------------------------------------------------------------------------

    def __enter__(self) -> FolderLock:
        if self.storage.scheme == "s3":
            self._acquire_s3()
            self._renewer = threading.Thread(target=self._renew, name="mtft-lock-renew", daemon=True)
            self._renewer.start()
        else:
            try:
                self._acquire_local()
            except OSError as e:
                if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
                    raise MtftError(f"cannot write to {self.storage.uri()}: {e.strerror}") from None
                raise
        return self

    def __exit__(self, *exc) -> None:
        if self.storage.scheme == "s3":
            self._stop.set()
            bucket, key = self._bucket_key()
            try:
                self._s3().delete_object(Bucket=bucket, Key=key)
            except Exception:  # noqa: BLE001 - an unreleased lease expires by itself
                pass
        else:
            self._release_local()
