"""Small file helpers: results are written whole or not at all, and a full disk says so.

Every artifact goes to a temporary name in its own folder, is flushed to disk, then renamed over
the final name, so a reader (``analyze``, a resume) sees the old file, the new one, or none; never
half of one. When the disk is full the writer raises one line naming the file and the size it
needed, and leaves no temporary behind.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write_json(d / "a.json", {"x": 1})
    >>> file_digest(d / "a.json")["bytes"]
    11
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from mtft_ray.errors import MtftError


def _atomic_write(path: str | Path, write: Callable[[IO[bytes]], None], needed: int | None = None) -> None:
    """Write ``path`` through ``write(f)`` on a temporary file in the same folder, fsync, then rename.

    Raises:
        MtftError: the disk is full (ENOSPC) or over quota (EDQUOT), naming the file and the size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as e:
        if _disk_full(e):
            size = f", about {needed / 1e6:,.1f} MB needed" if needed else ""
            raise MtftError(f"no space left on device writing {path}{size}") from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _disk_full(e: BaseException | None) -> bool:
    """Whether ENOSPC/EDQUOT is behind ``e`` (torch.save masks it with a RuntimeError of its own)."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see the module)."""
    _atomic_write(path, lambda f: f.write(data), needed=len(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically: readers never see half a file."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> dict:
    """``torch.save(obj, path)`` atomically; returns the file's :func:`file_digest`."""
    import torch  # this module is a leaf: torch only where tensors are saved

    needed = sum(t.numel() * t.element_size() for t in _tensors(obj))
    _atomic_write(path, lambda f: torch.save(obj, f), needed=needed or None)
    return file_digest(path)


def _tensors(obj: Any) -> list:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


def file_digest(path: str | Path) -> dict:
    """``{"bytes": size, "sha256": hex}`` of a file, read in 1 MiB blocks."""
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            n += len(block)
    return {"bytes": n, "sha256": h.hexdigest()}


def verify_digest(path: str | Path, expected: dict) -> str | None:
    """Why ``path`` does not match its recorded digest (missing, size, hash), or None when it does."""
    path = Path(path)
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != expected["bytes"]:
        return f"{path} has {size} bytes, {expected['bytes']} were written"
    if file_digest(path)["sha256"] != expected["sha256"]:
        return f"{path} does not match the sha256 recorded when it was written"
    return None
