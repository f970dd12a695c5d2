"""The on-disk store format: fixed-shape ``.npy`` shards, memory-mapped, with an index and a header.

Every source ends up in this format (the cache of a built-in source, and ``mtft-ray data
prepare``'s output alike)::

    <store>/
      header.json            schema version, sample shape and dtype, class and domain names,
                             each shard's rows and bytes, the fingerprint; written last
      index.parquet          one row per sample: label, domain, shard, row, file
      shards/00000.npy ...   (rows, *shape) uint8 images or int32 tokens, plain .npy

A store opens in milliseconds whatever its size: the shards are memory-mapped (``np.load(...,
mmap_mode="r")``) and :class:`ShardedArray` gathers only the rows an episode, a feature batch or a
training step touches, so a process's memory does not grow with the data set and every process on
a node shares one copy in the page cache. Plain ``.npy`` was chosen by measurement
(``tests/bench/store_bench.py gather``: random 5-way tasks gather at 0.72-0.78 of the speed of
one in-RAM array with a warm page cache, Lance's random ``take`` by row at 0.10) and needs nothing
beyond numpy to read; the index is parquet because it carries strings (each sample's original
file) and Ray Data and pandas read it directly.

The fingerprint is computed from the index and the build key (the source's own fingerprint of
its options and inputs), never from pixel bytes, so opening a 100 GB store hashes a few MB.

Example:
    >>> import tempfile, numpy as np
    >>> from mtft_ray.data.store import build_store
    >>> store = build_store([np.zeros((4, 4), np.uint8)] * 3, [("d", "a"), ("d", "a"), ("d", "b")])
    >>> path = write_store(store, tempfile.mkdtemp() + "/s", build_key="demo")
    >>> opened = open_store(path)
    >>> opened.num_samples, type(opened.images).__name__, opened.images.take([2]).shape
    (3, 'ShardedArray', (1, 4, 4))
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_json

SCHEMA_VERSION = 1
HEADER, INDEX, SHARD_DIR = "header.json", "index.parquet", "shards"
SHARD_BYTES = 256 << 20  # target shard size: big enough for few files, small enough to fetch alone
# Pages a process has read from its shards count in its RSS until they are unmapped; once the
# process's file-backed RSS has grown by this much since the store was opened they are released
# (the page cache keeps them: reading them again costs a page fault, no I/O)
RELEASE_BYTES = 512 << 20
MAP_ENV = "MTFT_RAY_MAP_MB"  # overrides RELEASE_BYTES, in MB (a node with RAM to spare maps a whole store)
_CHECK_BYTES = 64 << 20  # gathered between two looks at /proc/self/status


def _rss_file() -> int | None:
    """This process's file-backed resident bytes (Linux ``RssFile``), or None where unknown."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssFile:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def map_budget() -> int:
    """Bytes of shard pages a process keeps mapped before it hands them back: ``$MTFT_RAY_MAP_MB``
    (MB) or :data:`RELEASE_BYTES`."""
    raw = os.environ.get(MAP_ENV, "").strip()
    if not raw:
        return RELEASE_BYTES
    try:
        mb = float(raw)
    except ValueError:
        mb = -1
    if mb <= 0:
        raise MtftError(f"${MAP_ENV}={raw!r}: give the MB of store pages a process may keep mapped (a positive number)")
    return int(mb * (1 << 20))


def rows_per_shard(sample_bytes: int, target: int = SHARD_BYTES) -> int:
    """Rows in each shard so that a shard holds about ``target`` bytes."""
    return max(1, target // max(1, sample_bytes))


def shard_name(k: int) -> str:
    return f"{SHARD_DIR}/{k:05d}.npy"


class ShardedArray:
    """Fixed-shape rows spread over memory-mapped shards, read by gathering.

    It stands in for the store's image array wherever rows are gathered: :meth:`take` for numpy,
    :meth:`index_select` for the torch call sites (the training loop and feature extraction call
    ``images.index_select(0, ids)``), and ``len``/``shape``/``dtype``/``ndim`` like an array.
    ``np.asarray`` materialises every row (a small store only).

    The pages a gather touches stay mapped (and count in the process's RSS); once the process's
    file-backed RSS has grown by ``release_bytes`` since the store was opened (looked at every
    64 MB gathered, and only in a store larger than that; where the RSS is unknown, every
    ``release_bytes`` gathered) they are handed back
    with ``madvise(DONTNEED)``, so a pass over a 100 GB store never holds more than that in the
    process while a store smaller than it stays mapped and is gathered at memory speed. The page
    cache, shared by every process on the node, keeps the pages either way. ``release_bytes``
    defaults to :func:`map_budget` (``$MTFT_RAY_MAP_MB``, else 512 MB).
    """

    def __init__(self, shards: list[np.ndarray], shard: np.ndarray, row: np.ndarray,
                 release_bytes: int | None = None):
        self.shards = shards
        self._arrays = [mm.view(np.ndarray) for mm in shards]  # plain views: no memmap subclass per gather
        self.release_bytes = map_budget() if release_bytes is None else release_bytes
        self._gathered = 0  # bytes gathered since the last look at the RSS
        self._unknown = 0  # where the RSS is unknown: bytes gathered since the last release
        self._baseline = _rss_file()
        self._shard = shard.astype(np.int64)
        self._row = row.astype(np.int64)
        self.mapped_bytes = sum(mm.nbytes for mm in shards)  # a store within the budget is never released
        first = shards[0]
        self.dtype = first.dtype
        self.shape = (len(self._shard), *first.shape[1:])
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, ids) -> np.ndarray:
        """Rows ``ids`` (any int sequence), in that order, as one new array."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        shard, row = self._shard[ids], self._row[ids]
        first = shard[0] if len(shard) else 0
        if len(self._arrays) == 1 or (shard == first).all():  # one shard: one gather, as from an array
            out = self._arrays[first].take(row, axis=0)
        else:
            out = self._gather_runs(shard, row)
        self._gathered += out.nbytes
        if self._gathered > _CHECK_BYTES and self.mapped_bytes > self.release_bytes:
            self._gathered = 0
            rss = _rss_file()
            if rss is None or self._baseline is None:
                self._unknown += _CHECK_BYTES
                if self._unknown > self.release_bytes:
                    self._unknown = 0
                    self.release()
            else:
                # other mappings of the process may have gone since (another store closed): growth
                # counts from the lowest RSS seen, never from a baseline it can no longer reach
                self._baseline = min(self._baseline, rss)
                if rss - self._baseline > self.release_bytes:
                    self.release()
        return out

    def _gather_runs(self, shard: np.ndarray, row: np.ndarray) -> np.ndarray:
        """Rows from several shards into one output, a gather per run of ids in one shard.

        Episodes list their samples class by class and a store keeps a class's samples together,
        so a task's ids fall in a few runs (about two per class): each run is one ``np.take``
        straight into its slice of the output, with no scatter and no Python loop per row. Ids in
        random shard order (a shuffled batch) make runs of one row, copied one by one.
        """
        out = np.empty((len(shard), *self.shape[1:]), self.dtype)
        arrays = self._arrays
        bounds = [0, *(np.flatnonzero(shard[1:] != shard[:-1]) + 1).tolist(), len(shard)]
        for s, e in zip(bounds[:-1], bounds[1:]):
            src = arrays[shard[s]]
            if e - s == 1:
                out[s] = src[row[s]]
            else:
                np.take(src, row[s:e], axis=0, out=out[s:e], mode="clip")  # ids checked at open; "raise" would buffer the output
        return out

    def release(self) -> None:
        """Unmap the pages read so far from this process (they stay in the page cache)."""
        for mm in self.shards:
            _advise(mm, "MADV_DONTNEED")

    def index_select(self, dim: int, index):
        """``torch.Tensor.index_select`` for ``dim=0``: the gathered rows as a CPU tensor."""
        import torch

        if dim != 0:
            raise ValueError("a sharded store gathers rows (dim 0) only")
        return torch.from_numpy(self.take(index.cpu().numpy() if hasattr(index, "cpu") else index))

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.take([key])[0]
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        return self.take(key)

    def __array__(self, dtype=None, copy=None):
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)


def as_rows(images):
    """The store's inputs in the form the training loop gathers from: a CPU tensor sharing the
    array's memory, or the :class:`ShardedArray` itself (it has ``index_select``)."""
    import torch

    return images if isinstance(images, ShardedArray) else torch.from_numpy(images)


def store_fingerprint(header: dict, index_digest: str) -> str:
    """The fingerprint of a store: its build key, shape, names and index, not its pixels."""
    keyed = {k: header[k] for k in ("schema", "build_key", "shape", "dtype", "class_names", "domain_names",
                                    "class_domain", "num_samples")}
    return hashlib.sha256(json.dumps([keyed, index_digest]).encode()).hexdigest()[:16]


def listing_fingerprint(store: SampleStore) -> str:
    """A hash of the sample listing: each sample's class and domain name in order, and the
    sample shape. Two stores with the same listing hold the same samples in the same order
    (whatever format they are in); the pixels themselves are not hashed."""
    h = hashlib.sha256(json.dumps([list(store.image_shape), str(store.images.dtype)]).encode())
    names = np.array(store.class_names, dtype=object)[store.labels]
    h.update("\n".join(names.tolist()).encode())
    h.update(np.ascontiguousarray(store.domains, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _index_table(labels, domains, shard, row, files):
    import pyarrow as pa

    return pa.table({"label": pa.array(labels, pa.int32()), "domain": pa.array(domains, pa.int32()),
                     "shard": pa.array(shard, pa.int32()), "row": pa.array(row, pa.int32()),
                     "file": pa.array(files if files is not None else [None] * len(labels), pa.string())})


def _digest_index(table) -> str:
    h = hashlib.sha256()
    for name in ("label", "domain", "shard", "row"):
        h.update(np.asarray(table[name]).astype(np.int64).tobytes())
    h.update("\n".join("" if f is None else f for f in table["file"].to_pylist()).encode())
    return h.hexdigest()


def make_header(store: SampleStore, shards: list[dict], build_key: str) -> dict:
    return {"schema": SCHEMA_VERSION, "build_key": build_key, "shape": list(store.image_shape),
            "dtype": str(store.images.dtype), "num_samples": store.num_samples,
            "class_names": store.class_names, "domain_names": store.domain_names,
            "class_domain": [int(d) for d in store.class_domain], "meta": store.meta, "shards": shards}


def write_index(path: Path, store: SampleStore, rows: int) -> str:
    """Write ``index.parquet`` (samples laid out in order, ``rows`` per shard); its digest."""
    import pyarrow.parquet as pq

    n = store.num_samples
    ids = np.arange(n)
    table = _index_table(store.labels, store.domains, ids // rows, ids % rows, store.files)
    tmp = path / f".{INDEX}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path / INDEX)
    return _digest_index(table)


def write_shard(path: Path, k: int, rows: np.ndarray) -> dict:
    """Write shard ``k`` atomically (a reader never sees half of it); its header entry."""
    target = path / shard_name(k)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(rows), allow_pickle=False)
    os.replace(tmp, target)
    return {"file": shard_name(k), "rows": int(len(rows)), "bytes": target.stat().st_size}


def write_store(store: SampleStore, path: str | os.PathLike, *, build_key: str, rows: int | None = None) -> Path:
    """Write ``store`` as a sharded store at ``path`` (a directory, created), atomically: the
    store is written beside it and renamed into place, so a reader sees all of it or nothing.
    A store already at ``path`` (another process won the race) is kept. Returns ``path``."""
    path = Path(path)
    if (path / HEADER).is_file():
        return path
    sample_bytes = int(np.prod(store.image_shape)) * store.images.dtype.itemsize
    rows = rows or rows_per_shard(sample_bytes)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        images = store.images
        shards = [write_shard(tmp, k, np.asarray(images[s : s + rows]))
                  for k, s in enumerate(range(0, max(store.num_samples, 1), rows))]
        digest = write_index(tmp, store, rows)
        header = make_header(store, shards, build_key)
        header["fingerprint"] = store_fingerprint(header, digest)
        atomic_write_json(tmp / HEADER, header)
        try:
            os.rename(tmp, path)
        except OSError:
            if not (path / HEADER).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_header(path: Path) -> dict:
    """The header of the store at ``path``, after checking its schema version."""
    file = path / HEADER
    if not file.is_file():
        raise MtftError(f"not a store: {file} is missing (a store is written by `mtft-ray data prepare`; "
                        f"one without its header is unfinished)")
    try:
        header = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise MtftError(f"unreadable store header {file}: {e}") from None
    if header.get("schema") != SCHEMA_VERSION:
        raise MtftError(f"store {path} has schema version {header.get('schema')!r}; this mtft-ray reads "
                        f"version {SCHEMA_VERSION}: prepare it again with `mtft-ray data prepare`")
    return header


def open_store(path: str | os.PathLike, *, check_index: bool = True) -> SampleStore:
    """Open the sharded store at ``path`` (memory-mapped; nothing is read but the index).

    Raises:
        MtftError: one line naming the file: a missing header or index, another schema version,
            a shard shorter or longer than its header says, an index row past its shard's end.
    """
    import pyarrow.parquet as pq

    path = Path(path)
    header = read_header(path)
    shape, dtype = tuple(header["shape"]), np.dtype(header["dtype"])
    shards = []
    for k, entry in enumerate(header["shards"]):
        file = path / entry["file"]
        size = file.stat().st_size if file.is_file() else None
        if size != entry["bytes"]:
            got = "missing" if size is None else f"{size} bytes"
            raise MtftError(f"truncated or damaged shard {file}: {got}, the header says {entry['bytes']} bytes")
        try:
            mm = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise MtftError(f"unreadable shard {file}: {e}") from None
        if mm.shape != (entry["rows"], *shape) or mm.dtype != dtype:
            raise MtftError(f"shard {file} holds {mm.dtype} {mm.shape}; the header says "
                            f"{dtype} {(entry['rows'], *shape)}")
        _advise(mm, "MADV_RANDOM")
        shards.append(mm)
    index_file = path / INDEX
    try:
        table = pq.read_table(index_file)
    except (OSError, ValueError) as e:
        raise MtftError(f"unreadable store index {index_file}: {e}") from None
    shard, row = np.asarray(table["shard"]), np.asarray(table["row"])
    if len(shard) != header["num_samples"]:
        raise MtftError(f"store index {index_file} has {len(shard)} rows; the header says {header['num_samples']}")
    if check_index and len(shard):
        sizes = np.array([e["rows"] for e in header["shards"]])
        bad = np.flatnonzero((shard < 0) | (shard >= len(sizes)) | (row < 0)
                             | (row >= sizes[np.clip(shard, 0, len(sizes) - 1)]))
        if len(bad):
            i = int(bad[0])
            raise MtftError(f"store index {index_file} row {i} points past its shard's end (shard {shard[i]}, "
                            f"row {row[i]}; {len(bad)} such rows): the index and shards do not belong together")
    files = table["file"].to_pylist()
    images = ShardedArray(shards, shard, row) if shards else np.zeros((0, *shape), dtype)
    return SampleStore(images=images, labels=np.asarray(table["label"]).astype(np.int64),
                       domains=np.asarray(table["domain"]).astype(np.int64), class_names=header["class_names"],
                       domain_names=header["domain_names"],
                       class_domain=np.asarray(header["class_domain"], np.int64), meta=header.get("meta", {}),
                       files=None if all(f is None for f in files) else files, digest=header["fingerprint"])


def _advise(mm: np.ndarray, advice: str) -> None:
    """``madvise`` a shard's mapping: ``MADV_RANDOM`` (read at random: no read-ahead of pages no
    episode asked for) or ``MADV_DONTNEED`` (drop its pages from this process). A no-op where the
    platform has no such advice."""
    import mmap

    raw = getattr(mm, "_mmap", None)
    if raw is not None and hasattr(raw, "madvise") and hasattr(mmap, advice):
        try:
            raw.madvise(getattr(mmap, advice))
        except (OSError, ValueError):
            pass


class RowSpec:
    """Stands in for a store's images where only their count, shape and dtype are needed (an
    index and header written before, or without, the rows themselves)."""

    def __init__(self, n: int, shape: tuple[int, ...], dtype):
        self.shape, self.dtype, self.ndim = (n, *shape), np.dtype(dtype), 1 + len(shape)

    def __len__(self) -> int:
        return self.shape[0]


def store_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a store's shards, index and header."""
    path = Path(path)
    header = read_header(path)
    return sum(e["bytes"] for e in header["shards"]) + (path / INDEX).stat().st_size + (path / HEADER).stat().st_size
