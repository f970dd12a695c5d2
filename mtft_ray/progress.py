"""Progress bars that appear only on a terminal (never in logs, pipes or captured stderr)."""

from __future__ import annotations

from typing import Iterable

from tqdm import tqdm


def progress(iterable: Iterable | None = None, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar; disabled when ``enabled`` is false or stderr is not a TTY."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
