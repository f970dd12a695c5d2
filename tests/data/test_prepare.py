"""``mtft-ray data prepare`` / ``data info``, the ``store`` source, and one S3 download per node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtft_ray.config.schema import DataConfig
from mtft_ray.data.load import load_store
from mtft_ray.data.prepare import prepare
from mtft_ray.data.sharded import listing_fingerprint, open_store
from mtft_ray.data.sources import get_source
from mtft_ray.errors import MtftError
from moto_s3 import list_keys, moto_s3, recording

ROOT = Path(__file__).resolve().parents[2]
GLYPHS = {"scripts": ["greek", "armenian"], "samples_per_class": 2}


def _cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)


def _tree(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for d in range(2):
        for c in range(3):
            folder = root / f"dom{d}" / f"cls{c}"
            folder.mkdir(parents=True)
            for i in range(5):
                Image.fromarray(rng.integers(0, 255, (20, 26, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


@pytest.mark.slow
def test_prepare_with_ray_data_equals_the_source_and_resumes(tmp_path):
    tree = _tree(tmp_path / "tree")
    cfg = tmp_path / "folder.yaml"
    cfg.write_text(f"name: f\ndata: {{source: folder, options: {{root: {tree}}}, image_size: 16}}\n")
    out = tmp_path / "store"
    # 0.004 MB shards: 5 rows of 16x16x3 each, so 30 images make 6 shards, one Ray Data task each
    first = _cli("data", "prepare", str(cfg), "--out", str(out), "--shard-mb", "0.004", "--json", "--no-progress")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.strip().splitlines()[-1])
    assert (summary["samples"], summary["shards"], summary["written"], summary["kept"]) == (30, 6, 6, 0)
    prepared = open_store(out)
    data = DataConfig(source="folder", options={"root": str(tree)}, image_size=16)
    built = get_source("folder").build(data.source_options(), 16, 0)
    assert np.array_equal(np.asarray(prepared.images), built.images)
    assert listing_fingerprint(prepared) == listing_fingerprint(built) and prepared.files == built.files

    # a rerun keeps finished shards: remove two and truncate one, and only those three are written
    (out / "shards" / "00001.npy").unlink()
    (out / "shards" / "00004.npy").unlink()
    third = out / "shards" / "00002.npy"
    third.write_bytes(third.read_bytes()[:100])
    import ray

    try:
        again = prepare(data, str(out), shard_bytes=int(0.004 * (1 << 20)))  # starts Ray in this process
    finally:
        ray.shutdown()
    assert (again["written"], again["kept"]) == (3, 3) and again["fingerprint"] == summary["fingerprint"]
    assert np.array_equal(np.asarray(open_store(out).images), built.images)

    info = _cli("data", "info", str(out), "--json")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["samples"] == 30 and doc["shape"] == [16, 16, 3] and doc["fingerprint"] == summary["fingerprint"]
    assert doc["domains"]["dom0"] == {"classes": 3, "samples": 15, "min_per_class": 5, "max_per_class": 5}


def test_a_prepared_store_is_the_data_source(tmp_path):
    data = DataConfig(source="glyphs", options=GLYPHS, image_size=24, cache_dir=str(tmp_path / "cache"))
    cached = load_store(data)
    prepare(data, str(tmp_path / "store"), progress=False)
    store_cfg = DataConfig(source="store", options={"uri": str(tmp_path / "store")}, image_size=24)
    store = load_store(store_cfg)
    assert np.array_equal(np.asarray(store.images), np.asarray(cached.images))
    assert listing_fingerprint(store) == listing_fingerprint(cached)
    with pytest.raises(MtftError, match="holds 24 px images but data.image_size is 32"):
        load_store(DataConfig(source="store", options={"uri": str(tmp_path / "store")}, image_size=32))
    with pytest.raises(MtftError, match="store not found"):
        load_store(DataConfig(source="store", options={"uri": str(tmp_path / "nothing")}, image_size=24))


_OPEN = textwrap.dedent("""
    import sys
    from mtft_ray.config.schema import DataConfig
    from mtft_ray.data.load import load_store
    store = load_store(DataConfig(source="store", options={"uri": sys.argv[1]}, image_size=24, cache_dir=sys.argv[2]))
    print(store.num_samples, int(store.images.take([0, store.num_samples - 1]).sum()))
""")


def test_an_s3_store_is_fetched_once_per_node_and_a_vanished_object_leaves_nothing(tmp_path):
    data = DataConfig(source="glyphs", options=GLYPHS, image_size=24, cache_dir=str(tmp_path / "build"))
    with moto_s3("stores") as endpoint:
        env = {"AWS_ENDPOINT_URL_S3": endpoint}
        os.environ.update(env)
        try:
            summary = prepare(data, "s3://stores/glyphs-24", shard_bytes=20_000, progress=False)
            keys = list_keys(endpoint, "stores", "glyphs-24/")
            assert len(keys) == summary["shards"] + 2 and summary["shards"] > 3  # + header and index
            cache = tmp_path / "node"
            with recording(endpoint) as requests_so_far:
                procs = [subprocess.Popen([sys.executable, "-c", _OPEN, "s3://stores/glyphs-24", str(cache)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                          env={**os.environ, **env}) for _ in range(2)]
                outs = [p.communicate(timeout=120) for p in procs]
                assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
                assert outs[0][0] == outs[1][0]
                gets = Counter(q["url"].split("?")[0].rsplit("/glyphs-24/", 1)[1]
                               for q in requests_so_far() if q["method"] == "GET" and "/glyphs-24/" in q["url"])
            assert sorted(gets) == sorted(k.split("/", 1)[1] for k in keys) and set(gets.values()) == {1}, gets

            # an object that vanishes: the download stops naming it and keeps nothing a later run would trust
            import boto3

            s3 = boto3.client("s3", endpoint_url=endpoint)
            s3.put_object(Bucket="stores", Key="glyphs-24/header.json",  # a changed store: the copy is refetched
                          Body=s3.get_object(Bucket="stores", Key="glyphs-24/header.json")["Body"].read() + b" ")
            s3.delete_object(Bucket="stores", Key="glyphs-24/shards/00002.npy")
            with pytest.raises(MtftError) as e:
                load_store(DataConfig(source="store", options={"uri": "s3://stores/glyphs-24"}, image_size=24,
                                      cache_dir=str(cache)))
            assert "s3://stores/glyphs-24/shards/00002.npy" in str(e.value) and "does not exist" in str(e.value)
            left = sorted(p.name for p in (cache / "stores" / "s3").iterdir())
            assert not [n for n in left if "partial" in n], left
        finally:
            for k in env:
                os.environ.pop(k, None)


def test_cli_bad_store_is_one_line_and_exit_2(tmp_path):
    data = DataConfig(source="glyphs", options=GLYPHS, image_size=24, cache_dir=str(tmp_path / "cache"))
    prepare(data, str(tmp_path / "store"), progress=False)
    shard = tmp_path / "store" / "shards" / "00000.npy"
    shard.write_bytes(shard.read_bytes()[:-1])
    res = _cli("data", "info", str(tmp_path / "nothing"))
    assert res.returncode == 2 and res.stderr.strip() == f"mtft-ray: error: store not found: {tmp_path / 'nothing'}"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"name: r\ndata: {{source: store, options: {{uri: {tmp_path / 'store'}}}, image_size: 24}}\n")
    res = _cli("run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress")
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 2 and last.startswith("mtft-ray: error: truncated or damaged shard") and str(shard) in last
    assert not (tmp_path / "out" / "result.json").exists()
