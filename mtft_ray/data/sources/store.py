"""The ``store`` source: a store made by ``mtft-ray data prepare``, local or in S3.

Nothing is decoded: the store's shards are memory-mapped where they lie (a local store) or from
this node's copy (an ``s3://`` store, fetched once per node by :mod:`mtft_ray.data.nodecache`).
``data.image_size`` must be the size the store was prepared at (``mtft-ray data info`` says).

Example:
    data:
      source: store
      options: {uri: s3://my-bucket/stores/domainnet-224}
      image_size: 224
      split: {by: domain, target_domains: [sketch], val_domains: [quickdraw]}
"""

from __future__ import annotations

from pathlib import Path

from mtft_ray.config.sources import StoreOptions
from mtft_ray.data.sharded import open_store, read_header
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError


def store_path(options: StoreOptions, cache: Path) -> Path:
    """The local folder holding the store: the URI itself, or this node's copy of an S3 store."""
    if options.uri.startswith("s3://"):
        from mtft_ray.data.nodecache import node_copy

        return node_copy(options.uri, cache, endpoint_url=options.endpoint_url, region=options.region)
    path = Path(options.uri.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise MtftError(f"store not found: {path} (data.options.uri; make one with `mtft-ray data prepare`)")
    return path


class _Store:
    name = "store"
    Options = StoreOptions

    def fingerprint(self, options: StoreOptions, image_size: int, seed: int) -> str:
        if options.uri.startswith("s3://"):
            return "s3:" + options.uri  # the header's fingerprint, once the node copy is made
        return read_header(store_path(options, Path("."))).get("fingerprint", "")

    def build(self, options: StoreOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        raise MtftError("a prepared store is opened, not built: use mtft_ray.data.load.load_store")

    def open(self, options: StoreOptions, data, cache: Path) -> SampleStore:
        path = store_path(options, cache)
        store = open_store(path)
        size = store.image_shape[0] if not store.is_text else None
        if size is not None and size != data.image_size:
            raise MtftError(f"store {options.uri} holds {size} px images but data.image_size is {data.image_size}: "
                            f"set data.image_size: {size}, or prepare the store again at {data.image_size} px")
        return store


SOURCE = register(_Store())
