"""``mtft-ray data prepare``: build a sharded store with Ray Data, locally or into S3, resumably.

A source whose samples are image files or rows of published archives
(:class:`~mtft_ray.data.sources.registry.FileSource`: ``folder``, ``domainnet``,
``miniimagenet``, ``tieredimagenet``, ``metadataset``) is listed once in the driver; the listing
is cut into fixed shards (``rows`` samples each, in the store's order) and Ray Data maps one task
per shard across the cluster: read each file (local disk or ``s3://``), decode, resize,
centre-crop, write the shard. Every other source (glyphs, text, wordnet) is built in the driver
and written shard by shard the same way.

A shard is written whole or not at all (a local temporary file renamed into place; one S3 PUT),
so a prepare that was killed and is run again keeps every finished shard (a file of the size the
layout implies) and redoes only the rest. The index is written next and the header last: a
store without its header is unfinished and nothing opens it.

Example:
    mtft-ray data prepare sweeps/paper-mxm.yaml --out s3://bucket/stores/miniimagenet-224
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtft_ray.config.schema import DataConfig
from mtft_ray.data.sharded import (HEADER, INDEX, SHARD_BYTES, SHARD_DIR, RowSpec, make_header, rows_per_shard,
                                   shard_name, store_fingerprint, write_index)
from mtft_ray.data.sources import get_source, is_file_source
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError


@dataclass
class Target:
    """Where a store is written: a local folder or ``s3://bucket/prefix``."""

    uri: str
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def _s3(self):
        from mtft_ray.data.nodecache import s3_client, split_uri

        bucket, prefix = split_uri(self.uri)
        return s3_client(self.endpoint_url, self.region), bucket, prefix

    def _key(self, prefix: str, name: str) -> str:
        return f"{prefix}/{name}" if prefix else name

    def sizes(self, folder: str) -> dict[str, int]:
        """Bytes of every file under ``folder`` of the target, by name relative to the target
        (one listing: one LIST request per 1,000 objects on S3, not a HEAD per shard)."""
        if not self.is_s3:
            root = Path(self.uri)
            return {str(p.relative_to(root)): p.stat().st_size for p in (root / folder).glob("*") if p.is_file()}
        s3, bucket, prefix = self._s3()
        start = self._key(prefix, folder) + "/"
        try:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start)
            return {f"{folder}/{o['Key'][len(start):]}": o["Size"] for page in pages for o in page.get("Contents", [])}
        except Exception as e:
            raise MtftError(f"store target {self.uri} is not reachable: {' '.join(str(e).split())[:200]}") from None

    def write(self, name: str, data: bytes) -> None:
        """Write ``name`` whole or not at all."""
        if not self.is_s3:
            from mtft_ray.io import atomic_write_bytes

            atomic_write_bytes(Path(self.uri) / name, data)
            return
        s3, bucket, prefix = self._s3()
        try:
            s3.put_object(Bucket=bucket, Key=self._key(prefix, name), Body=data)
        except Exception as e:
            raise MtftError(f"writing {self.uri}/{name} failed: {' '.join(str(e).split())[:200]}") from None


def _npy_bytes(rows: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(rows), allow_pickle=False)
    return buf.getvalue()


def _npy_size(n: int, shape: tuple[int, ...], dtype) -> int:
    """Bytes of the ``.npy`` file ``np.save`` writes for ``n`` rows of ``shape``: how a finished
    shard is recognised."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                               "fortran_order": False, "shape": (n, *shape)})
    return len(buf.getvalue()) + n * int(np.prod(shape)) * np.dtype(dtype).itemsize


def _relative(file: str, root: str | None) -> str:
    """``file`` relative to the source's root (as a built store records it), when it lies under it."""
    if root and not file.startswith("s3://"):
        root = str(Path(root).expanduser())
        if file.startswith(root.rstrip("/") + "/"):
            return file[len(root.rstrip("/")) + 1:]
    return file


def _shard_task(item: dict, data: DataConfig, target: Target) -> dict:
    """Decode one shard's files and write the shard (runs in a Ray Data task)."""
    source = get_source(data.source)
    options = data.source_options()
    t0 = time.perf_counter()
    rows = np.stack([source.decode(f, data.image_size, options) for f in item["files"]])
    want = (len(item["files"]), data.image_size, data.image_size, 3)
    if rows.shape != want or rows.dtype != np.uint8:
        raise MtftError(f"data source {source.name!r} decoded {item['files'][0]} ... as {rows.dtype} "
                        f"{rows.shape[1:]}, not uint8 {want[1:]}")
    target.write(item["name"], _npy_bytes(rows))
    return {"k": item["k"], "rows": len(rows), "seconds": time.perf_counter() - t0}


def _ray_map(items: list[dict], data: DataConfig, target: Target, parallelism: int | None) -> list[dict]:
    """Run :func:`_shard_task` over ``items`` as a Ray Data map, one task per shard."""
    import ray

    from mtft_ray.ray_cluster import ensure_ray

    ensure_ray()
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map(_shard_task, fn_kwargs={"data": data, "target": target}, num_cpus=1,
                concurrency=parallelism or None)
    try:
        return ds.take_all()
    except Exception as e:  # a task's MtftError arrives wrapped in Ray's exception types
        text = str(e)
        for line in reversed(text.splitlines()):
            if "MtftError:" in line:
                raise MtftError(line.split("MtftError:", 1)[1].strip()) from None
        raise


def prepare(data: DataConfig, out: str, *, seed: int = 0, parallelism: int | None = None,
            shard_bytes: int = SHARD_BYTES, endpoint_url: str | None = None, region: str | None = None,
            progress: bool = True) -> dict:
    """Build the store of ``data`` at ``out`` (a folder or ``s3://`` URI); a summary dict.

    Args:
        parallelism: most shard tasks at once (default: as many as the cluster's CPUs allow).
        shard_bytes: target bytes per shard.

    Returns:
        ``samples``, ``shards``, ``written`` and ``kept`` (shards already finished by an earlier
        run), ``seconds``, ``samples_per_s`` (over the shards written), ``fingerprint``, ``uri``.
    """
    if data.source == "store":
        raise MtftError("data.source is already 'store': prepare the source it was made from")
    source = get_source(data.source)
    options = data.source_options()
    target = Target(out, endpoint_url, region)
    if not target.is_s3:
        Path(out).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    key = f"{source.name}:{data.image_size}:{source.fingerprint(options, data.image_size, seed)}"
    if is_file_source(source):
        listing = source.list_files(options)
        if not listing:
            raise MtftError(f"data source {source.name!r} lists no files")
        # a FileSource decodes to (image_size, image_size, 3) uint8: no file is read in the driver
        shape, dtype = (data.image_size, data.image_size, 3), np.dtype(np.uint8)
        index_store = build_store(np.zeros((len(listing), 1, 1), np.uint8), [(d, c) for d, c, _ in listing],
                                  {"source": source.name, "image_size": data.image_size},
                                  files=[_relative(f, getattr(options, "root", None)) for _, _, f in listing])
        store = None
    else:
        store = source.build(options, data.image_size, seed, progress=progress)
        index_store, shape, dtype = store, store.image_shape, store.images.dtype
    rows = rows_per_shard(int(np.prod(shape)) * np.dtype(dtype).itemsize, shard_bytes)
    n = index_store.num_samples
    plan = [(k, s, min(s + rows, n)) for k, s in enumerate(range(0, n, rows))]
    sizes = {k: _npy_size(e - s, shape, dtype) for k, s, e in plan}
    found = target.sizes(SHARD_DIR)
    done = {k for k, _, _ in plan if found.get(shard_name(k)) == sizes[k]}
    todo = [(k, s, e) for k, s, e in plan if k not in done]
    t_build = time.perf_counter()
    if store is None:
        items = [{"k": k, "name": shard_name(k), "files": [f for _, _, f in listing[s:e]]} for k, s, e in todo]
        if items:
            _ray_map(items, data, target, parallelism)
    else:
        for k, s, e in todo:
            target.write(shard_name(k), _npy_bytes(np.asarray(store.images[s:e])))
    seconds_written = time.perf_counter() - t_build
    shards, found = [], target.sizes(SHARD_DIR)
    for k, s, e in plan:
        size = found.get(shard_name(k))
        if size != sizes[k]:
            raise MtftError(f"shard {target.uri}/{shard_name(k)} has {size} bytes after writing, expected {sizes[k]}")
        shards.append({"file": shard_name(k), "rows": e - s, "bytes": size})
    meta = dict(index_store.meta if store is not None else {"source": source.name})
    if store is None and callable(getattr(source, "store_meta", None)):  # what a FileSource's build would record
        meta.update(source.store_meta(options))
    meta.update(source=source.name, image_size=data.image_size, options=options.model_dump(mode="json"))
    index_store = SampleStore(images=RowSpec(n, shape, dtype),
                              labels=index_store.labels, domains=index_store.domains,
                              class_names=index_store.class_names, domain_names=index_store.domain_names,
                              class_domain=index_store.class_domain, meta=meta, files=index_store.files)
    digest = _write_index(target, index_store, rows)
    header = make_header(index_store, shards, key)
    header["fingerprint"] = store_fingerprint(header, digest)
    target.write(HEADER, json.dumps(header, indent=1).encode())
    written = sum(e - s for _, s, e in todo)
    return {"uri": out, "source": source.name, "samples": n, "shape": list(shape), "shards": len(plan),
            "written": len(todo), "kept": len(done), "seconds": round(time.perf_counter() - t0, 2),
            "samples_per_s": round(written / seconds_written, 1) if written and seconds_written else None,
            "fingerprint": header["fingerprint"]}


def _write_index(target: Target, store: SampleStore, rows: int) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digest = write_index(Path(tmp), store, rows)
        target.write(INDEX, (Path(tmp) / INDEX).read_bytes())
    return digest

