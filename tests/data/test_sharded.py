"""The sharded, memory-mapped store format: round trip, gathering across shards, bad stores."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtft_ray.data import sharded as sharded_mod
from mtft_ray.data.sharded import (HEADER, INDEX, MAP_ENV, ShardedArray, as_rows, listing_fingerprint, map_budget,
                                   open_store, write_store)
from mtft_ray.errors import MtftError
from tests.conftest import make_store


@pytest.fixture
def sharded(tmp_path, small_store):
    """The small store written 7 rows per shard (240 samples: 35 shards, the last one short)."""
    return open_store(write_store(small_store, tmp_path / "s", build_key="k", rows=7)), tmp_path / "s"


def test_round_trip_gathers_the_same_rows_across_shards(sharded, small_store):
    store, path = sharded
    assert isinstance(store.images, ShardedArray) and len(store.images.shards) == 35
    assert store.images.shape == small_store.images.shape and store.images.dtype == np.uint8
    ids = np.random.default_rng(0).permutation(small_store.num_samples)[:50]
    assert np.array_equal(store.images.take(ids), small_store.images[ids])
    got = as_rows(store.images).index_select(0, torch.from_numpy(ids))
    assert torch.equal(got, torch.from_numpy(small_store.images[ids]))
    assert np.array_equal(store.images[3], small_store.images[3])
    assert np.array_equal(store.images[5:20], small_store.images[5:20])
    assert np.array_equal(np.asarray(store.images), small_store.images)
    assert np.array_equal(store.labels, small_store.labels) and np.array_equal(store.domains, small_store.domains)
    assert (store.class_names, store.domain_names) == (small_store.class_names, small_store.domain_names)
    assert np.array_equal(store.class_domain, small_store.class_domain) and store.meta == small_store.meta
    assert listing_fingerprint(store) == listing_fingerprint(small_store)


def test_gathers_in_runs_give_rows_in_the_order_asked(sharded, small_store):
    """Class-major episode ids (long runs in one shard), runs that straddle shard edges, single
    rows, repeats and reversed order all come back exactly as from the array."""
    store, _ = sharded
    by_class = store.samples_by_class()
    rng = np.random.default_rng(3)
    episode = np.concatenate([rng.choice(by_class[c], 4, replace=False) for c in rng.choice(len(by_class), 5)])
    for ids in (episode, np.arange(240)[::-1], np.arange(5, 30), np.array([6, 7, 7, 6, 200, 0, 0, 13]),
                np.array([239]), np.zeros(0, np.int64)):
        got = store.images.take(ids)
        assert got.shape == (len(ids), *small_store.images.shape[1:])
        assert np.array_equal(got, small_store.images[ids])


def test_a_store_within_the_map_budget_is_never_released(sharded, monkeypatch):
    """Releasing pages costs a fault on every later read: a store that fits the budget keeps them
    whatever the process's RSS does; past the budget it is released, also after other mappings
    shrank the RSS below the one seen at open."""
    store, _ = sharded
    images = store.images
    calls = []
    monkeypatch.setattr(ShardedArray, "release", lambda self: calls.append(1))
    monkeypatch.setattr(sharded_mod, "_CHECK_BYTES", 1)
    rss = iter([10**12] * 4)  # an RSS far above the baseline: past any budget
    monkeypatch.setattr(sharded_mod, "_rss_file", lambda: next(rss))
    images.release_bytes = images.mapped_bytes
    images.take(np.arange(240))
    assert calls == []  # the whole store fits: never released
    images.release_bytes, images._baseline = images.mapped_bytes // 2, 2 * 10**12  # another mapping has gone
    images.take(np.arange(240))
    assert calls == []  # the RSS dropped below the baseline: growth counts from there
    images._baseline = 0
    images.take(np.arange(240))
    assert calls == [1]


def test_the_map_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(MAP_ENV, raising=False)
    assert map_budget() == sharded_mod.RELEASE_BYTES
    monkeypatch.setenv(MAP_ENV, "2048")
    assert map_budget() == 2048 << 20
    for bad in ("lots", "0", "-5"):
        monkeypatch.setenv(MAP_ENV, bad)
        with pytest.raises(MtftError, match=MAP_ENV):
            map_budget()


def test_fingerprint_comes_from_index_and_build_key_not_pixels(tmp_path, small_store):
    a = open_store(write_store(small_store, tmp_path / "a", build_key="k"))
    b = open_store(write_store(small_store, tmp_path / "b", build_key="k", rows=7))
    other_key = open_store(write_store(small_store, tmp_path / "c", build_key="other"))
    assert a.fingerprint() == json.loads((tmp_path / "a" / HEADER).read_text())["fingerprint"]
    assert a.fingerprint() != b.fingerprint()  # another layout: another index
    assert a.fingerprint() != other_key.fingerprint()
    # pixel bytes are not read: a shard overwritten in place (same size) keeps the fingerprint
    shard = tmp_path / "a" / "shards" / "00000.npy"
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert open_store(tmp_path / "a").fingerprint() == a.fingerprint()


def test_text_tokens_round_trip(tmp_path):
    from mtft_ray.data.store import build_store

    tokens = [np.stack([np.arange(6, dtype=np.int32) + i, np.ones(6, np.int32)]) for i in range(9)]
    store = build_store(tokens, [("d", f"c{i % 3}") for i in range(9)], files=[f"t.csv#{i}" for i in range(9)])
    back = open_store(write_store(store, tmp_path / "t", build_key="k", rows=4))
    assert back.is_text and np.array_equal(np.asarray(back.images), store.images) and back.files == store.files


def test_a_store_already_written_is_kept(tmp_path, small_store):
    path = write_store(small_store, tmp_path / "s", build_key="k")
    before = (path / HEADER).stat().st_mtime_ns
    write_store(make_store(seed=1), path, build_key="k")  # another process won the race: its store stays
    assert (path / HEADER).stat().st_mtime_ns == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def _expect(path, *words):
    with pytest.raises(MtftError) as e:
        open_store(path)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_a_truncated_shard_names_the_file(sharded):
    _, path = sharded
    shard = path / "shards" / "00004.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    _expect(path, "truncated", str(shard))


def test_an_index_row_past_its_shards_end(sharded):
    _, path = sharded
    table = pq.read_table(path / INDEX)
    rows = np.asarray(table["row"]).copy()
    rows[12] = 7  # shards hold rows 0..6
    pq.write_table(table.set_column(table.schema.get_field_index("row"), "row", pa.array(rows, pa.int32())),
                   path / INDEX)
    _expect(path, str(path / INDEX), "row 12", "past its shard's end")


def test_another_schema_version(sharded):
    _, path = sharded
    header = json.loads((path / HEADER).read_text())
    header["schema"] = 99
    (path / HEADER).write_text(json.dumps(header))
    _expect(path, "schema version 99", "mtft-ray data prepare")


def test_an_unfinished_store_has_no_header(tmp_path):
    (tmp_path / "half" / "shards").mkdir(parents=True)
    _expect(tmp_path / "half", "not a store", HEADER)
