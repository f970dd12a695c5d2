"""Random 5-way task gather (80 images a task, listed class by class) from other on-disk layouts.

    python tests/bench/layouts.py --work /tmp/layouts-work   # ~2 min on 2 cores; writes ~1.5 GB there

The store keeps images in memory-mapped ``.npy`` shards and is judged by tasks/s against the same
rows in one in-RAM array (``ram[ids]``); ``store_bench.py gather`` also times Lance. This file times
the same kind of gather, by sample index from a local directory with a warm page cache, through
**zarr** (uncompressed, one row per chunk), **LitData** (``litdata.optimize`` +
``StreamingDataset[i]``) and **MosaicML Streaming** (``MDSWriter`` + ``StreamingDataset.get_item``).
Each ``*_rate`` writes its dataset under ``work`` once, asserts that the first task comes back equal
to ``ram[tasks[0]]``, makes one warm-up pass over the tasks, then returns the tasks/s of one timed
pass (None when the package is not importable). None of the three is a project dependency; install
them in a throwaway environment (mosaicml-streaming pins numpy<2.2, so without its deps)::

    python3 -m venv --system-site-packages /tmp/layouts-venv
    /tmp/layouts-venv/bin/pip install zarr litdata
    /tmp/layouts-venv/bin/pip install --no-deps mosaicml-streaming brotli 'python-snappy<1' cramjam zstd catalogue

The ``__main__`` run builds a synthetic store in memory (16000 noise images of 96x96x3, 1000
classes of 16 in a row, 500 tasks of 5 random classes x 16 samples, seed 1) and prints JSON:
tasks/s of each layout, its ratio to the in-RAM rate measured in the same run, and versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np


def _timed(gather, ram: np.ndarray, tasks: list[np.ndarray]) -> float:
    """Check the first task, one warm-up pass, then tasks/s of one timed pass."""
    first = gather(tasks[0])
    assert first.dtype == ram.dtype and np.array_equal(first, ram[tasks[0]])
    for ids in tasks:
        gather(ids)
    t0 = time.perf_counter()
    for ids in tasks:
        gather(ids)
    return len(tasks) / (time.perf_counter() - t0)


def _fresh(path: Path) -> Path:
    """A new empty sibling of ``path`` to write into, renamed onto ``path`` once complete."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return tmp


def zarr_rate(work: Path, ram: np.ndarray, tasks: list[np.ndarray], info: dict | None = None) -> float | None:
    """Tasks/s of zarr, the faster of ``oindex[ids]`` and one read per row (``info`` gets both).

    Chunks are one row, ``(1, H, W, 3)``, no compressor or filter: a random row reads exactly its
    own bytes (one chunk file), whatever the class layout. Bigger chunks (4 or 16 rows) were not
    faster per row and read 4-16x the bytes; 16-row chunks would line up with this synthetic
    store's classes, which real stores (uneven classes) do not. Works with zarr 2 and 3.
    """
    try:
        import zarr
    except ImportError:
        return None
    v3 = int(zarr.__version__.split(".")[0]) >= 3
    chunks = (1, *ram.shape[1:])
    path = work / f"zarr{'3' if v3 else '2'}-{len(ram)}.zarr"
    if not path.exists():
        tmp = _fresh(path)
        if v3:
            arr = zarr.create_array(str(tmp), shape=ram.shape, dtype=ram.dtype, chunks=chunks,
                                    compressors=None, filters=None)
        else:
            arr = zarr.open_array(str(tmp), mode="w", shape=ram.shape, dtype=ram.dtype, chunks=chunks,
                                  compressor=None)
        arr[:] = ram
        tmp.rename(path)
    arr = zarr.open_array(str(path), mode="r")
    loop = None
    if v3:  # zarr 3 is async inside: issue the 80 row reads together in one event-loop turn
        import zarr.api.asynchronous as za

        loop = asyncio.new_event_loop()
        aarr = loop.run_until_complete(za.open_array(store=str(path), mode="r"))

        async def rows_async(ids):
            return await asyncio.gather(*(aarr.getitem(int(i)) for i in ids))

        def rows(ids):
            return np.stack(loop.run_until_complete(rows_async(ids)))
    else:  # zarr 2 is synchronous: plain per-row reads
        def rows(ids):
            return np.stack([arr[int(i)] for i in ids])

    try:
        got = {"oindex": _timed(lambda ids: arr.oindex[ids], ram, tasks), "rows": _timed(rows, ram, tasks)}
    finally:
        if loop is not None:
            loop.close()
    best = max(got, key=got.get)
    if info is not None:
        info.update({"zarr_chunks": list(chunks), "zarr_read": best,
                     **{f"zarr_{k}_tasks_per_s": round(r, 1) for k, r in got.items()}})
    return got[best]


_RAM: np.ndarray | None = None  # litdata.optimize's forked worker reads the rows from here


def _litdata_sample(i: int) -> dict:
    return {"image": _RAM[i]}


def litdata_rate(work: Path, ram: np.ndarray, tasks: list[np.ndarray]) -> float | None:
    """Tasks/s of LitData's ``StreamingDataset(dir)[i]``, one call per sample (numpy serializer)."""
    global _RAM
    try:
        import litdata
    except ImportError:
        return None
    path = work / f"litdata-{len(ram)}"
    # optimize() makes empty cache folders, by default /tmp/chunks and /tmp/data: keep them in work
    os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", str(work / "litdata-cache" / "chunks"))
    os.environ.setdefault("DATA_OPTIMIZER_DATA_CACHE_FOLDER", str(work / "litdata-cache" / "data"))
    if not path.exists():
        tmp = _fresh(path)
        _RAM = ram  # one worker, forked: keeps the input order and does not pickle the array
        litdata.optimize(fn=_litdata_sample, inputs=list(range(len(ram))), output_dir=str(tmp),
                         chunk_bytes="64MB", num_workers=1, start_method="fork", verbose=False)
        _RAM = None
        tmp.rename(path)
    # batch_decode="auto" deserialises 256 neighbours for every numpy sample read (~3 tasks/s
    # here): 0 decodes just the item asked for
    ds = litdata.StreamingDataset(str(path), batch_decode=0)
    return _timed(lambda ids: np.stack([ds[int(i)]["image"] for i in ids]), ram, tasks)


def streaming_rate(work: Path, ram: np.ndarray, tasks: list[np.ndarray]) -> float | None:
    """Tasks/s of MosaicML Streaming's ``StreamingDataset(local=dir).get_item(i)``, one per sample.

    The MDS column is raw ``bytes`` (decoded with ``np.frombuffer``): an ``ndarray:uint8:H,W,3``
    column gave the same rows ~30% slower. ``StreamingDataset`` keeps its state in shared memory
    (``/dev/shm``), one instance per local directory and process.
    """
    try:
        from streaming import MDSWriter, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory
    except ImportError:
        return None
    path = work / f"mds-{len(ram)}"
    if not path.exists():
        tmp = _fresh(path)
        with MDSWriter(out=str(tmp), columns={"image": "bytes"}, compression=None, size_limit="64mb") as out:
            for row in ram:
                out.write({"image": row.tobytes()})
        tmp.rename(path)
    clean_stale_shared_memory()  # what a killed earlier run left would make the open fail
    ds = StreamingDataset(local=str(path), remote=None, batch_size=1)
    shape = ram.shape[1:]
    return _timed(lambda ids: np.stack([np.frombuffer(ds.get_item(int(i))["image"], ram.dtype).reshape(shape)
                                        for i in ids]), ram, tasks)


def rates(work: Path, ram: np.ndarray, tasks: list[np.ndarray]) -> dict:
    """Tasks/s of every layout (or why it was not compared), with the versions used."""
    out, info = {}, {}
    for name, pip, rate in (("zarr", "zarr", lambda: zarr_rate(work, ram, tasks, info)),
                            ("litdata", "litdata", lambda: litdata_rate(work, ram, tasks)),
                            ("streaming", "mosaicml-streaming", lambda: streaming_rate(work, ram, tasks))):
        r = rate()
        out.update({f"{name}_tasks_per_s": round(r, 1), f"{name}_version": version(pip)} if r is not None else
                   {name: f"not installed (pip install {pip}) - not compared"})
    return {**out, **info}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/layouts-work"))
    parser.add_argument("--n", type=int, default=16000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--tasks", type=int, default=500)
    args = parser.parse_args()
    n, per_class = args.n, 16
    shape = (args.size, args.size, 3)
    base = np.random.default_rng(0).integers(0, 256, (1, *shape), dtype=np.uint8)
    ram = base + (np.arange(n) % 256).astype(np.uint8)[:, None, None, None]  # one noise image, shifted per row
    by_class = np.arange(n).reshape(-1, per_class)  # class-contiguous: 1000 classes of 16 rows
    rng = np.random.default_rng(1)
    tasks = [np.concatenate([rng.choice(by_class[c], per_class, replace=False)
                             for c in rng.choice(len(by_class), 5, replace=False)]) for _ in range(args.tasks)]

    def ram_pass() -> float:
        t0 = time.perf_counter()
        for ids in tasks:
            ram[ids]
        return len(tasks) / (time.perf_counter() - t0)

    load = os.getloadavg()[0]
    ram_pass()  # warm-up
    ram_rate = float(np.median([ram_pass() for _ in range(3)]))
    got = rates(args.work, ram, tasks)
    ratios = {k.replace("_tasks_per_s", "_ratio"): round(v / ram_rate, 4)
              for k, v in got.items() if k.endswith("_tasks_per_s")}
    print(json.dumps({"store_samples": n, "image_size": args.size, "task": "5-way x 16 samples", "tasks": len(tasks),
                      "in_ram_tasks_per_s": round(ram_rate, 1), **got, **ratios, "numpy_version": np.__version__,
                      "cpus": os.cpu_count(), "load_1min_before_after": [round(load, 2), round(os.getloadavg()[0], 2)]},
                     indent=1))


if __name__ == "__main__":
    main()
