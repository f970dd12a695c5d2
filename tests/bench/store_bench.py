"""Store benchmarks (JSON): memory does not grow with data, gather speed, prepare scaling.

    python tests/bench/store_bench.py memory  --small 20000 --large 200000 --size 96
    python tests/bench/store_bench.py gather  --samples 16000 --size 96
    python tests/bench/store_bench.py prepare --images 1200 --size 96

``memory``: two generated stores of RGB images (random pixels; 100 domains x 10 classes, so the
large store has 10x the samples per class), then ``mtft-ray run`` on each, in-process and with 2
Ray Train workers (a few tasks, a few hundred episodes); the peak RSS of every process of the run
is sampled (psutil, every 0.2 s) and the ratio large/small reported (goal <= 1.3), beside the large
store's bytes on disk. ``gather``: random 5-way tasks (16 samples per class) gathered from the
memory-mapped store and from the same rows in one in-RAM array, as a ratio: warm page cache with
the classes laid out as every source writes them and interleaved over the shards, past the
process's mapping budget, and cold (the shards evicted with ``posix_fadvise(DONTNEED)``). ``prepare``: ``mtft-ray data
prepare`` of one JPEG tree from and to S3 on a moto server on 127.0.0.1 with 1 and 2 Ray CPUs
(ratio), then a prepare killed midway and run again (how many shards it kept and redid).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mtft_ray.data.sharded import (HEADER, RowSpec, make_header, rows_per_shard, store_bytes,  # noqa: E402
                                   store_fingerprint, write_index, write_shard)
from mtft_ray.data.store import SampleStore  # noqa: E402
from mtft_ray.io import atomic_write_json  # noqa: E402


def generate(path: Path, n: int, size: int, n_domains: int = 100, classes_per_domain: int = 10,
             interleaved: bool = False) -> Path:
    """A store of ``n`` random RGB images written shard by shard (never all in memory).

    Its classes lie one after another, as every source and ``data prepare`` write them (a
    listing walks class by class); ``interleaved`` deals the samples out to the classes in turn
    instead, so every class is spread over every shard (the worst case for a gather).
    """
    if (path / HEADER).is_file():
        return path
    shape = (size, size, 3)
    n_classes = n_domains * classes_per_domain
    labels = np.arange(n) % n_classes if interleaved else np.arange(n) * n_classes // n
    class_domain = np.arange(n_classes) // classes_per_domain
    spec = SampleStore(images=RowSpec(n, shape, np.uint8), labels=labels, domains=class_domain[labels],
                       class_names=[f"d{c // classes_per_domain:03d}/c{c:04d}" for c in range(n_classes)],
                       domain_names=[f"d{d:03d}" for d in range(n_domains)], class_domain=class_domain,
                       meta={"source": "synthetic-bench"})
    rows = rows_per_shard(int(np.prod(shape)))
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    shards = []
    for k, s in enumerate(range(0, n, rows)):
        m = min(rows, n - s)
        base = rng.integers(0, 256, (1, *shape), dtype=np.uint8)  # cheap to make: one noise image, shifted
        shards.append(write_shard(path, k, (base + np.arange(m, dtype=np.uint8)[:, None, None, None]).astype(np.uint8)))
    digest = write_index(path, spec, rows)
    header = make_header(spec, shards, f"bench:{n}:{size}")
    header["fingerprint"] = store_fingerprint(header, digest)
    atomic_write_json(path / HEADER, header)
    return path


def _peak_rss(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; the peak RSS of its largest process and of all its processes together (MB)."""
    import psutil

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    parent = psutil.Process(proc.pid)
    peak_one = peak_sum = 0
    t0 = time.perf_counter()
    while proc.poll() is None:
        try:
            procs = [parent, *parent.children(recursive=True)]
            rss = []
            for p in procs:
                try:
                    if "raylet" in p.name() or "gcs_server" in p.name():
                        continue
                    rss.append(p.memory_info().rss)
                except psutil.Error:
                    pass
            peak_one, peak_sum = max(peak_one, max(rss, default=0)), max(peak_sum, sum(rss))
        except psutil.Error:
            pass
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-3000:]}")
    return {"peak_rss_mb_largest_process": round(peak_one / 2**20), "peak_rss_mb_all_processes": round(peak_sum / 2**20),
            "seconds": round(time.perf_counter() - t0, 1)}


def bench_memory(work: Path, small: int, large: int, size: int) -> dict:
    stores = {n: generate(work / f"store-{n}", n, size) for n in (small, large)}
    cfg = work / "run.yaml"
    out = {"image_size": size, "stores": {}}
    for n, path in stores.items():
        out["stores"][n] = {"bytes_on_disk_mb": round(store_bytes(path) / 2**20)}
    env = {**os.environ, "MTFT_RAY_CACHE": str(work / "cache"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "disabled"}
    for n, path in stores.items():
        cfg.write_text(
            f"name: mem\ndata: {{source: store, options: {{uri: {path}}}, image_size: {size},\n"
            f"       split: {{by: domain, target_domains: 2, val_domains: 1}}}}\n"
            f"backbone: {{weights: none}}\ntasks: {{n_way: 5, n_shot: 1, n_query: 4, M: 8}}\n"
            f"finetune: {{epochs: 1, val_episodes: 50, keep_pretrained: false}}\n"
            f"eval: {{shots: [1], episodes: 300}}\nmethods: [direct, multitask]\n")
        for workers in (0, 2):
            key = "in_process" if workers == 0 else "two_workers"
            run = _peak_rss([sys.executable, "-m", "mtft_ray.cli.main", "run", str(cfg), "--no-progress",
                             "--out", str(work / f"run-{n}-{workers}"), f"train.workers={workers}"], env)
            out["stores"][n][key] = run
    for key in ("in_process", "two_workers"):
        for what in ("peak_rss_mb_largest_process", "peak_rss_mb_all_processes"):
            out[f"{key}_{what}_ratio"] = round(out["stores"][large][key][what] / out["stores"][small][key][what], 3)
    return out


def _tasks(store, n_tasks: int, rng) -> list[np.ndarray]:
    by_class = store.samples_by_class()
    out = []
    for _ in range(n_tasks):
        classes = rng.choice(len(by_class), 5, replace=False)
        out.append(np.concatenate([rng.choice(by_class[c], 16, replace=False) for c in classes]))
    return out


def _evict(path: Path) -> None:
    os.sync()  # dirty pages (a store just written) cannot be evicted
    for f in (path / "shards").iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def bench_gather(work: Path, n: int, size: int, n_tasks: int = 2000) -> dict:
    """Warm gathers from the store as written (classes one after another) and interleaved (every
    class in every shard), a store past the process's mapping budget, a cold page cache, Lance."""
    from mtft_ray.data.sharded import open_store, store_bytes

    out = {"store_samples": n, "image_size": size, "task": "5-way x 16 samples", "tasks": n_tasks}
    rng = np.random.default_rng(1)

    def rate(gather, tasks) -> float:
        t0 = time.perf_counter()
        for ids in tasks:
            gather(ids)
        return len(tasks) / (time.perf_counter() - t0)

    def warm(store, ram, tasks) -> tuple[float, float]:
        """Median of three (store, in-RAM) rate pairs, taken in turn so load swings hit both."""
        pairs = [(rate(store.images.take, tasks), rate(lambda ids: ram[ids], tasks)) for _ in range(3)]
        return float(np.median([p[0] for p in pairs])), float(np.median([p[1] for p in pairs]))

    for layout in ("interleaved", "as_written"):  # the store as written last: its pages are the warm ones below
        path = generate(work / f"store-{n}-{size}{'-interleaved' if layout == 'interleaved' else ''}", n, size,
                        n_domains=min(100, max(1, n // 160)), interleaved=layout == "interleaved")  # >= 16 a class
        store = open_store(path)
        ram = np.asarray(store.images)  # the same rows, one array in memory
        tasks = _tasks(store, n_tasks, rng)
        assert all(np.array_equal(store.images.take(t), ram[t]) for t in tasks[:20])
        mm, in_ram = warm(store, ram, tasks)
        out[layout] = {"shards": len(store.images.shards), "in_ram_tasks_per_s": round(in_ram, 1),
                       "mmap_warm_tasks_per_s": round(mm, 1), "warm_ratio": round(mm / in_ram, 3)}
    bytes_ = store_bytes(path)
    out["store_mb"], out["map_budget_mb"] = round(bytes_ / 2**20), store.images.release_bytes >> 20
    # past the budget: the process hands its pages back every quarter of the store it maps
    store.images.release_bytes = bytes_ // 4
    mm, in_ram = warm(store, ram, tasks)
    out["past_budget"] = {"map_budget_mb": round(bytes_ / 4 / 2**20), "warm_ratio": round(mm / in_ram, 3)}
    other = _lance_rate(work, store, ram, tasks[:500])  # the same tasks through Lance, where installed
    out.update({"lance_warm_tasks_per_s": round(other, 1), "lance_ratio": round(other / in_ram, 3)} if other else
               {"lance": "not installed (pip install pylance) - not compared"})
    store.images.release()  # pages this process maps cannot be evicted: unmap them first
    del ram
    _evict(path)
    cold = rate(store.images.take, tasks)
    out.update({"mmap_cold_tasks_per_s": round(cold, 1), "cold_ratio": round(cold / in_ram, 3)})
    return out


def _lance_rate(work: Path, store, ram: np.ndarray, tasks: list[np.ndarray]) -> float | None:
    """Tasks/s of Lance's random ``take`` by row over the same images (one fixed-size binary column),
    the layout the store was compared against; None without ``pylance``."""
    try:
        import lance
        import pyarrow as pa
    except ImportError:
        return None
    path = work / f"lance-{len(ram)}.lance"
    if not path.exists():
        row = int(np.prod(ram.shape[1:]))
        col = pa.FixedSizeBinaryArray.from_buffers(pa.binary(row), len(ram), [None, pa.py_buffer(ram.reshape(-1))])
        lance.write_dataset(pa.table({"image": col, "label": pa.array(store.labels)}), str(path))
    ds = lance.dataset(str(path))

    def take(ids):
        col = ds.take(ids, columns=["image"]).column("image").combine_chunks()
        return np.frombuffer(col.buffers()[1], np.uint8).reshape(len(ids), *ram.shape[1:])

    assert np.array_equal(take(tasks[0]), ram[tasks[0]])
    take(tasks[0])
    t0 = time.perf_counter()
    for ids in tasks:
        take(ids)
    return len(tasks) / (time.perf_counter() - t0)


def _jpeg_tree(root: Path, n: int, size: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    per_class = 10
    for i in range(n):
        d, c = (i // per_class) // 10, i // per_class
        folder = root / f"dom{d}" / f"cls{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        yy, xx = np.mgrid[0:size + 32, 0:size + 64]
        img = (np.stack([xx * (1 + i % 7), yy * (1 + i % 5), xx + yy], -1) + rng.integers(0, 40, (size + 32, size + 64, 3)))
        Image.fromarray((img % 256).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench_prepare(work: Path, n: int, size: int, rows: int = 100) -> dict:
    import boto3
    from moto.server import ThreadedMotoServer

    tree = _jpeg_tree(work / "tree", n, size)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # in this process: its GIL is shared
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_ENDPOINT_URL_S3": endpoint, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")})
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="bench")
        for f in sorted(tree.rglob("*.jpg")):
            s3.upload_file(str(f), "bench", f"tree/{f.relative_to(tree)}")
        cfg = work / "prep.yaml"
        cfg.write_text(f"name: p\ndata: {{source: folder, options: {{root: s3://bench/tree}}, image_size: {size}}}\n")
        shard_mb = rows * size * size * 3 / 2**20  # enough shards to spread over the CPUs
        out = {"images": n, "image_size": size, "from": "s3 (moto on 127.0.0.1)", "to": "s3", "rows_per_shard": rows}
        local_cfg = work / "prep-local.yaml"
        local_cfg.write_text(f"name: p\ndata: {{source: folder, options: {{root: {tree}}}, image_size: {size}}}\n")
        for where, config, target in (("s3", cfg, "s3://bench/store-{}cpu"), ("local", local_cfg, str(work / "local-{}cpu"))):
            for cpus in (1, 2):
                cmd = [sys.executable, "-c", "import ray, sys; ray.init(num_cpus=int(sys.argv[1]), include_dashboard=False); "
                       "from mtft_ray.cli.main import main; sys.exit(main(sys.argv[2:]))", str(cpus),
                       "data", "prepare", str(config), "--out", target.format(cpus), "--shard-mb", str(shard_mb),
                       "--json", "--no-progress"]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
                if res.returncode:
                    raise RuntimeError(res.stderr[-3000:])
                out[f"{where}_cpus_{cpus}"] = json.loads(res.stdout.strip().splitlines()[-1])
            out[f"{where}_speedup_2_vs_1_cpu"] = round(out[f"{where}_cpus_2"]["samples_per_s"]
                                                      / out[f"{where}_cpus_1"]["samples_per_s"], 3)

        # killed midway, run again: finished shards are kept
        cmd = [sys.executable, "-m", "mtft_ray.cli.main", "data", "prepare", str(cfg), "--out", str(work / "killed"),
               "--shard-mb", str(shard_mb), "--parallelism", "1", "--json", "--no-progress"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
                                start_new_session=True)
        total = out["s3_cpus_1"]["shards"]
        shards = work / "killed" / "shards"
        while proc.poll() is None and len(list(shards.glob("*.npy")) if shards.is_dir() else []) < total // 2:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = len(list(shards.glob("*.npy")))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
        if res.returncode:
            raise RuntimeError(res.stderr[-3000:])
        again = json.loads(res.stdout.strip().splitlines()[-1])
        out["killed_midway"] = {"shards": total, "finished_when_killed": finished, "rerun_kept": again["kept"],
                                "rerun_written": again["written"],
                                "same_fingerprint_as_uninterrupted": again["fingerprint"] == out["s3_cpus_1"]["fingerprint"]}
        return out
    finally:
        server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["memory", "gather", "prepare"])
    p.add_argument("--small", type=int, default=20000)
    p.add_argument("--large", type=int, default=200000)
    p.add_argument("--samples", type=int, default=16000, help="gather: the store's images (16,000 at 96 px "
                   "fit the default 512 MB mapping budget)")
    p.add_argument("--images", type=int, default=1200)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--rows", type=int, default=100, help="prepare: images per shard")
    p.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    a = p.parse_args()
    work = Path(a.work or tempfile.mkdtemp(prefix="mtft-store-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if a.what == "memory":
        r = bench_memory(work, a.small, a.large, a.size)
    elif a.what == "gather":
        r = bench_gather(work, a.samples, a.size)
    else:
        r = bench_prepare(work, a.images, a.size, a.rows)
    print(json.dumps({a.what: r, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}, indent=1))


if __name__ == "__main__":
    main()
