"""What a prepared store holds (``mtft-ray data info``), read from its header and index only.

Example:
    >>> info = store_info("runs/stores/glyphs-64")  # doctest: +SKIP
    >>> info["samples"], info["shape"], info["domains"]["greek"]["classes"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from mtft_ray.data.sharded import HEADER, INDEX, read_header
from mtft_ray.errors import MtftError


def _fetch_meta(uri: str, endpoint_url: str | None, region: str | None, into: Path) -> Path:
    """The header and index of an S3 store (not its shards), into a temporary folder."""
    from mtft_ray.data.nodecache import s3_client, get_to_file, split_uri

    bucket, prefix = split_uri(uri)
    s3 = s3_client(endpoint_url, region)
    for name in (HEADER, INDEX):
        get_to_file(s3, bucket, f"{prefix}/{name}" if prefix else name, into / name, uri)
    return into


def store_info(uri: str, *, endpoint_url: str | None = None, region: str | None = None) -> dict:
    """Counts per domain and class, sample shape, bytes, fingerprint and suggested split of a store."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = _fetch_meta(uri, endpoint_url, region, Path(tmp)) if uri.startswith("s3://") else Path(uri)
        if not path.is_dir():
            raise MtftError(f"store not found: {uri}")
        header = read_header(path)
        try:
            table = pq.read_table(path / INDEX, columns=["label", "domain"])
        except (OSError, ValueError) as e:
            raise MtftError(f"unreadable store index {uri}/{INDEX}: {e}") from None
        index_bytes = (path / INDEX).stat().st_size
    labels, domains = np.asarray(table["label"]), np.asarray(table["domain"])
    per_class = np.bincount(labels, minlength=len(header["class_names"]))
    class_domain = np.asarray(header["class_domain"])
    by_domain = {}
    for d, name in enumerate(header["domain_names"]):
        ids = np.flatnonzero(class_domain == d)
        counts = per_class[ids]
        by_domain[name] = {"classes": int(len(ids)), "samples": int((domains == d).sum()),
                           "min_per_class": int(counts.min()) if len(ids) else 0,
                           "max_per_class": int(counts.max()) if len(ids) else 0}
    meta = header.get("meta", {})
    return {"uri": uri, "schema": header["schema"], "fingerprint": header["fingerprint"],
            "source": meta.get("source"), "samples": header["num_samples"], "shape": header["shape"],
            "dtype": header["dtype"], "classes": len(header["class_names"]), "domains": by_domain,
            "shards": len(header["shards"]),
            "bytes": int(sum(e["bytes"] for e in header["shards"]) + index_bytes),
            "split": meta.get("split"), "class_counts": dict(zip(header["class_names"], per_class.tolist()))}


def format_info(info: dict) -> str:
    """``store_info`` as a few readable lines plus one line per domain."""
    lines = [f"store {info['uri']}  ({info['source']}, schema {info['schema']}, fingerprint {info['fingerprint']})",
             f"  {info['samples']:,} samples of {info['dtype']} {tuple(info['shape'])} in {info['shards']} shard(s), "
             f"{info['bytes'] / 1e6:,.1f} MB; {info['classes']:,} classes in {len(info['domains'])} domains",
             "  split: " + (json.dumps(info["split"]) if info["split"] else
                            "none recorded (choose data.split in the experiment)"),
             f"  {'domain':<28} {'classes':>8} {'samples':>9} {'per class':>11}"]
    for name, d in info["domains"].items():
        lines.append(f"  {name:<28} {d['classes']:>8,} {d['samples']:>9,} {d['min_per_class']:>5}-{d['max_per_class']:<5}")
    return "\n".join(lines)


def memory_line(store, processes: int) -> str:
    """What a store costs in memory when ``processes`` trials and workers on a node read it (the
    ``memory:`` line of a sweep's ``--dry-run``)."""
    from mtft_ray.data.sharded import RELEASE_BYTES, ShardedArray

    shape = "x".join(str(s) for s in store.image_shape)
    size = store.num_samples * int(np.prod(store.image_shape)) * store.images.dtype.itemsize
    what = f"store {size / 1e9:,.2f} GB ({store.num_samples:,} x {shape} {store.images.dtype})"
    if isinstance(store.images, ShardedArray):
        return (f"{what}, memory-mapped: one copy per node in the page cache for all {processes} processes "
                f"(trials and workers); each maps at most ~{RELEASE_BYTES >> 20} MB of it at a time, not "
                f"{processes} x {size / 1e9:,.2f} GB as arrays of their own")
    return f"{what} in memory, in each of {processes} processes: {processes * size / 1e9:,.2f} GB"
