"""Load a configured source through the on-disk store cache.

Example:
    >>> from mtft_ray.config import load_config
    >>> store = load_store(load_config(None).data)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from mtft_ray.config.schema import DataConfig
from mtft_ray.data.sources import get_source
from mtft_ray.data.store import SampleStore


def cache_root(data: DataConfig | None = None) -> Path:
    """``data.cache_dir``, else ``$MTFT_RAY_CACHE``, else ``~/.cache/mtft-ray``."""
    if data is not None and data.cache_dir:
        return Path(data.cache_dir).expanduser()
    return Path(os.environ.get("MTFT_RAY_CACHE", "~/.cache/mtft-ray")).expanduser()


def load_store(data: DataConfig, seed: int = 0, progress: bool = False) -> SampleStore:
    """The source's store: read from the cache when its fingerprint matches, else built and cached."""
    source = get_source(data.source)
    options = data.source_options()
    fp = source.fingerprint(options, data.image_size, seed)
    path = cache_root(data) / "stores" / f"{source.name}-{data.image_size}px-{fp}.npz"
    if path.is_file():
        return SampleStore.load(path)
    store = source.build(options, data.image_size, seed, progress=progress)
    store.save(path)
    return store
