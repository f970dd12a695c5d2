"""Load a configured source: a prepared store as it is, any other source through the store cache.

A source is decoded once into a sharded store (:mod:`mtft_ray.data.sharded`) under the cache,
keyed by the source's fingerprint; every later run, trial and Ray Train worker on the machine
memory-maps that same copy. ``data.source: store`` opens a store made by ``mtft-ray data
prepare`` instead, local or in S3 (:mod:`mtft_ray.data.nodecache` keeps one copy per node).

Example:
    >>> from mtft_ray.config import load_config
    >>> store = load_store(load_config(None).data)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

from mtft_ray.config.schema import DataConfig
from mtft_ray.data.sharded import HEADER, open_store, write_store
from mtft_ray.data.sources import get_source
from mtft_ray.data.store import SampleStore


def cache_root(data: DataConfig | None = None) -> Path:
    """``data.cache_dir``, else ``$MTFT_RAY_CACHE`` (when not empty), else ``~/.cache/mtft-ray``."""
    if data is not None and data.cache_dir:
        return Path(data.cache_dir).expanduser()
    return Path(os.environ.get("MTFT_RAY_CACHE") or "~/.cache/mtft-ray").expanduser()  # set but empty: the default


def cached_store_path(data: DataConfig, seed: int = 0) -> Path:
    """Where the cache keeps the store of ``data`` (a directory; it may not exist yet)."""
    source = get_source(data.source)
    fp = source.fingerprint(data.source_options(), data.image_size, seed)
    return cache_root(data) / "stores" / f"{source.name}-{data.image_size}px-{fp}"


def load_store(data: DataConfig, seed: int = 0, progress: bool = False) -> SampleStore:
    """The source's store, memory-mapped: a prepared store (``data.source: store``) as it is;
    any other source read from the cache when its fingerprint matches, else built and cached."""
    source = get_source(data.source)
    options = data.source_options()
    if callable(getattr(source, "open", None)):
        return source.open(options, data, cache_root(data))
    path = cached_store_path(data, seed)
    if not (path / HEADER).is_file():
        store = source.build(options, data.image_size, seed, progress=progress)
        write_store(store, path, build_key=f"{source.name}:{data.image_size}:{path.name.rsplit('-', 1)[1]}")
    return open_store(path)
