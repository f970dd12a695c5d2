"""The text sources: ``text`` (csv / jsonl / json / parquet / save_to_disk folders) and ``wordnet``
(data.noun parsed by hand), tokenized once with the packaged MiniLM tokenizer, offline."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtft_ray.config.schema import DataConfig
from mtft_ray.config.sources import TextOptions, WordNetOptions
from mtft_ray.data.load import load_store
from mtft_ray.data.sources import get_source
from mtft_ray.data.sources.wordnet import definition, find_data_noun, parse_data_noun, wordnet_rows
from mtft_ray.data.store import SampleStore
from mtft_ray.data.tokenize import load_tokenizer, tokenize
from mtft_ray.errors import MtftError

TEXT, WORDNET = get_source("text"), get_source("wordnet")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"

# (text, label, domain): news/sport has 3 texts, news/politics 2, reviews/pos 2, reviews/neg 2;
# reviews/meh has one (below min_per_class 2: dropped) and one text is empty (dropped)
ROWS = [
    ("the match ended in a draw", "sport", "news"),
    ("a late goal won the cup", "sport", "news"),
    ("record crowd at the final", "sport", "news"),
    ("parliament passed the budget", "politics", "news"),
    ("the minister resigned today", "politics", "news"),
    ("great film, loved it", "pos", "reviews"),
    ("wonderful acting throughout", "pos", "reviews"),
    ("boring and far too long", "neg", "reviews"),
    ("", "neg", "reviews"),
    ("the plot made no sense", "neg", "reviews"),
    ("it was fine i guess", "meh", "reviews"),
]


def frame(rows=ROWS) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label", "domain"])


def write_dataset_dir(folder: Path, rows=ROWS, shards: int = 2) -> Path:
    """A folder as ``datasets.Dataset.save_to_disk`` writes it: arrow stream shards, state.json and
    dataset_info.json, with ``label`` a ClassLabel (int ids) and ``domain`` a string."""
    folder.mkdir(parents=True)
    names = sorted({r[1] for r in rows})
    ids = {n: i for i, n in enumerate(names)}
    files = []
    for k in range(shards):
        part = rows[k::shards]
        table = pa.table({"text": [r[0] for r in part], "label": pa.array([ids[r[1]] for r in part], pa.int64()),
                          "domain": [r[2] for r in part]})
        name = f"data-{k:05d}-of-{shards:05d}.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        files.append({"filename": name})
    (folder / "state.json").write_text(json.dumps({"_data_files": files, "_fingerprint": "0", "_split": "train"}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {
        "text": {"dtype": "string", "_type": "Value"}, "label": {"names": names, "_type": "ClassLabel"},
        "domain": {"dtype": "string", "_type": "Value"}}}))
    return folder


def build(files, **kw) -> SampleStore:
    return TEXT.build(TextOptions(files=[str(f) for f in files], **kw), 64, 0)


def error(fn, *args, **kw) -> str:
    with pytest.raises(MtftError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_every_format_gives_the_same_store(tmp_path):
    df = frame()
    df.to_csv(tmp_path / "t.csv", index=False)
    df.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    (tmp_path / "t.json").write_text(json.dumps(df.to_dict(orient="records")))  # a JSON array
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / "t.parquet")
    stores = [build([tmp_path / name]) for name in ("t.csv", "t.jsonl", "t.json", "t.parquet")]
    stores.append(build([write_dataset_dir(tmp_path / "saved")]))
    first = stores[0]
    assert first.is_text and first.images.shape == (9, 2, 64)
    assert first.class_names == ["news/politics", "news/sport", "reviews/neg", "reviews/pos"]
    assert first.domain_names == ["news", "reviews"]
    assert first.meta["dropped"] == {"empty_texts": 1, "small_classes": 1, "small_class_texts": 1,
                                     "over_max_per_class": 0}
    assert (first.meta["texts"], first.meta["truncated"], first.meta["max_length"]) == (9, 0, 64)
    assert first.meta["tokenizer"] == MINILM and first.meta["options"]["min_per_class"] == 2
    for s in stores[1:]:
        assert s.fingerprint() == first.fingerprint()
        assert s.meta["dropped"] == first.meta["dropped"]
    # the rows are the packaged tokenizer's encodings, in (domain, class, text) order
    expected, _ = tokenize(["parliament passed the budget", "the minister resigned today"], load_tokenizer(MINILM), 64)
    np.testing.assert_array_equal(first.images[:2], expected)


def test_store_and_fingerprint_do_not_depend_on_file_or_row_order(tmp_path):
    rows = list(ROWS)
    random.Random(1).shuffle(rows)
    frame(rows[:5]).to_csv(tmp_path / "a.csv", index=False)
    frame(rows[5:]).to_csv(tmp_path / "b.csv", index=False)
    (tmp_path / "one").mkdir()
    frame(ROWS).to_csv(tmp_path / "one" / "all.csv", index=False)
    ab, ba = build([tmp_path / "a.csv", tmp_path / "b.csv"]), build([tmp_path / "b.csv", tmp_path / "a.csv"])
    assert ab.fingerprint() == ba.fingerprint() == build([tmp_path / "one" / "all.csv"]).fingerprint()
    fps = {TEXT.fingerprint(TextOptions(files=f), 64, 0) for f in (
        [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")], [str(tmp_path / "b.csv"), str(tmp_path / "a.csv")],
        [str(tmp_path / "*.csv")], [str(tmp_path / "?.csv"), str(tmp_path / "a.csv")])}
    assert len(fps) == 1
    # the seed plays a part only through max_per_class
    opts = TextOptions(files=[str(tmp_path / "*.csv")])
    assert TEXT.fingerprint(opts, 64, 0) == TEXT.fingerprint(opts, 64, 1)
    capped = TextOptions(files=[str(tmp_path / "*.csv")], max_per_class=2)
    assert TEXT.fingerprint(capped, 64, 0) != TEXT.fingerprint(capped, 64, 1)
    store = TEXT.build(capped, 64, 0)
    assert np.bincount(store.labels).tolist() == [2, 2, 2, 2] and store.meta["dropped"]["over_max_per_class"] == 1


def test_missing_column_names_the_file_the_column_and_what_it_has(tmp_path):
    frame()[["text", "label"]].to_csv(tmp_path / "t.csv", index=False)
    msg = error(build, [tmp_path / "t.csv"])
    assert str(tmp_path / "t.csv") in msg and "'domain'" in msg and "its columns: text, label" in msg
    assert "domain_column: null" in msg
    msg = error(build, [tmp_path / "t.csv"], text_column="body")
    assert "'body'" in msg and "text_column" in msg
    one = build([tmp_path / "t.csv"], domain_column=None)
    assert one.domain_names == ["all"] and one.class_names[0] == "all/neg"


def test_no_files_unreadable_files_and_empty_texts_are_one_line_errors(tmp_path):
    assert "no text files matched" in error(build, [tmp_path / "*.csv"])
    assert "text file not found" in error(build, [tmp_path / "nope.csv"])
    assert "needs data.options.files" in error(build, [])
    (tmp_path / "t.txt").write_text("hello")
    assert "unsupported text file" in error(build, [tmp_path / "t.txt"])
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x", "domain": "d"}\n{"text": \n')
    assert "line 2 is not JSON" in error(build, [tmp_path / "bad.jsonl"])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert "unreadable text file" in error(build, [tmp_path / "bad.parquet"])
    frame([("  ", "a", "d"), ("", "b", "d")]).to_csv(tmp_path / "empty.csv", index=False)
    assert "all 2 texts" in error(build, [tmp_path / "empty.csv"])
    frame([("x", "", "d"), ("y", "b", "d")]).to_csv(tmp_path / "nolabel.csv", index=False)
    assert "1 of 2 rows have no value in column 'label'" in error(build, [tmp_path / "nolabel.csv"])


def test_truncation_is_counted_exactly(tmp_path):
    # "a " * k is [CLS] + k tokens + [SEP]: k <= 6 fits in 8 positions, k = 7..10 (4 texts) does not
    rows = [("a " * k, f"c{k % 2}", "d") for k in range(1, 11)]
    frame(rows).to_csv(tmp_path / "t.csv", index=False)
    store = build([tmp_path / "t.csv"], max_length=8)
    assert store.meta["truncated"] == 4 and store.images.shape == (10, 2, 8)
    assert sorted(store.images[:, 1].sum(axis=1).tolist()) == [3, 4, 5, 6, 7, 8, 8, 8, 8, 8]
    assert (store.images[:, 0, -1] == 102).sum() == 5  # [SEP] closes the full rows, the exact fit included
    _, n = tokenize(["a " * 6, "a " * 7, "a " * 100], load_tokenizer(MINILM), 8)
    assert n == 2


def test_tokenizer_not_found_is_one_line_naming_it():
    msg = error(load_tokenizer, "mtft-ray-tests/no-such-tokenizer")
    assert "'mtft-ray-tests/no-such-tokenizer'" in msg and MINILM in msg and "local model folder" in msg
    assert "tokenizer folder not found" in error(load_tokenizer, "./no/such/folder")
    assert load_tokenizer(MINILM) is load_tokenizer(MINILM)  # loaded once


def test_load_store_round_trips_through_the_cache(tmp_path, monkeypatch):
    frame().to_csv(tmp_path / "t.csv", index=False)
    data = DataConfig(source="text", options={"files": [str(tmp_path / "*.csv")], "max_length": 16},
                      cache_dir=str(tmp_path / "cache"))
    store = load_store(data)
    (cached,) = (tmp_path / "cache" / "stores").iterdir()
    assert cached.name.startswith("text-")

    def no_build(*a, **k):
        raise AssertionError("rebuilt although the cache matches")

    monkeypatch.setattr(type(TEXT), "build", no_build)
    again = load_store(data)
    assert again.fingerprint() == store.fingerprint() and again.meta == store.meta and again.is_text
    monkeypatch.undo()
    os.utime(tmp_path / "t.csv", ns=(0, 0))  # a changed file is a new store
    load_store(data)
    assert len(list((tmp_path / "cache" / "stores").iterdir())) == 2


# --- wordnet ----------------------------------------------------------------------------------

HEADER = ["  1 This software and database is being provided to you, the LICENSEE, by  ",
          "  2 Princeton University under the following license.  ", "  3   "]


def write_data_noun(folder: Path, synsets: list[tuple]) -> Path:
    """A data.noun in the real format: ``(key, lex, words, [(symbol, target key, pos)], gloss)`` per
    synset; offsets are byte offsets (all 8 digits, so each line's length is known up front)."""
    folder.mkdir(parents=True, exist_ok=True)
    offsets, pos = {}, sum(len(h) + 1 for h in HEADER)

    def line(s, offs):
        key, lex, words, ptrs, gloss = s
        w = " ".join(f"{word} 0" for word in words)
        p = " ".join(f"{sym} {offs.get(t, 99999999):08d} {ps} {'0101' if ps == 'v' else '0000'}" for sym, t, ps in ptrs)
        return f"{offs.get(key, 0):08d} {lex:02d} n {len(words):02x} {w} {len(ptrs):03d} {p} | {gloss}  ".replace("  |", " |")

    for s in synsets:
        offsets[s[0]] = pos
        pos += len(line(s, {})) + 1
    path = folder / "data.noun"
    path.write_text("\n".join(HEADER + [line(s, offsets) for s in synsets]) + "\n")
    return path


TEN_WORDS = [f"tool_{i}" for i in range(10)]  # w_cnt 0a: hexadecimal
MINI = [
    ("animal", 5, ["animal", "beast"], [("~", "dog", "n"), ("~", "cat", "n"), ("~", "bird", "n"), ("@", "rock", "n")],
     'a living organism; "animals move"'),
    ("dog", 5, ["dog"], [("@", "animal", "n")], 'a member of the genus Canis; "the dog barked all night"'),
    ("cat", 5, ["cat", "true_cat"], [("@", "animal", "n"), ("+", "bird", "v")], 'feline mammal; "meow; said the cat"; "purr"'),
    ("bird", 5, ["bird"], [("@", "animal", "n")], "warm-blooded egg-laying vertebrate"),
    ("tool", 6, TEN_WORDS, [("~", "hammer", "n"), ("~i", "excalibur", "n"), ("~", "hammer", "n")],
     "an implement used in the practice of a vocation"),
    ("hammer", 6, ["hammer"], [("@", "tool", "n")], 'a hand tool with a heavy head;  "he used a hammer"'),
    ("excalibur", 6, ["Excalibur"], [("@i", "tool", "n")], "the sword of King Arthur;"),
    ("rock", 17, ["rock", "stone"], [("~", "dog", "n")], "a lump of hard mineral matter"),
]


def test_definitions_lose_their_quoted_examples():
    assert definition('a member of the genus Canis; "the dog barked"; "a dog\'s life"') == "a member of the genus Canis"
    assert definition('feline mammal; "meow; said the cat"; "purr"') == "feline mammal"
    assert definition("the sword of King Arthur; ") == "the sword of King Arthur"
    assert definition('"only an example"') == ""
    assert definition("one sense; another sense") == "one sense; another sense"


def test_a_miniature_data_noun_parses_to_its_classes(tmp_path):
    path = write_data_noun(tmp_path / "dict", MINI)
    synsets = parse_data_noun(path)
    tool = next(s for s in synsets.values() if s.words[0] == "tool_0")
    assert len(tool.words) == 10 and len(tool.hyponyms) == 2 and tool.line == len(HEADER) + 5
    store = WORDNET.build(WordNetOptions(path=str(tmp_path / "dict"), min_hyponyms=2), 64, 0)
    off = {s.words[0]: s.offset for s in synsets.values()}
    assert store.domain_names == ["noun.animal", "noun.artifact"]
    assert store.class_names == [f"noun.animal/animal.{off['animal']:08d}", f"noun.artifact/tool_0.{off['tool_0']:08d}"]
    tok = load_tokenizer(MINILM)
    texts = ["a member of the genus Canis", "feline mammal", "warm-blooded egg-laying vertebrate",
             "a hand tool with a heavy head", "the sword of King Arthur"]
    for label, text in zip([0, 0, 0, 1, 1], texts):
        (row,), _ = tokenize([text], tok, 64)
        assert any((r == row).all() for r in store.images[store.labels == label]), text
    assert store.num_samples == 5 and store.meta["truncated"] == 0 and store.meta["synsets"] == 8
    assert WORDNET.build(WordNetOptions(path=str(path), min_hyponyms=3), 64, 0).num_classes == 1  # path: the file itself
    capped = WORDNET.build(WordNetOptions(path=str(path), min_hyponyms=2, max_per_class=1), 64, 0)
    assert np.bincount(capped.labels).tolist() == [1, 1] and capped.meta["dropped"]["over_max_per_class"] == 3


def test_garbled_data_noun_and_missing_wordnet_are_one_line_errors(tmp_path):
    path = write_data_noun(tmp_path / "dict", MINI)
    lines = path.read_text().splitlines()
    cut = len(HEADER) + 2  # 0-based: the "cat" synset, 1-based line number cut + 1
    for garbled in (lines[cut][:40], lines[cut].replace(" 002 ", " 003 "), lines[cut].replace(" n 02 ", " n zz ")):
        path.write_text("\n".join(lines[:cut] + [garbled] + lines[cut + 1 :]) + "\n")
        msg = error(parse_data_noun, path)
        assert f"{path} line {cut + 1}:" in msg and "garbled" in msg
    msg = error(WORDNET.build, WordNetOptions(path=str(tmp_path / "nowhere")), 64, 0)
    assert str(tmp_path / "nowhere") in msg and "apt-get install wordnet-base" in msg


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(), reason="Debian's wordnet-base is not installed")
def test_the_real_wordnet_benchmark_has_plausible_counts():
    synsets = parse_data_noun(find_data_noun(None))
    rows, counts = wordnet_rows(WordNetOptions(), synsets, 0)
    classes, domains = {(d, c) for d, c, _ in rows}, {d for d, _, _ in rows}
    assert 1500 <= len(classes) <= 1800 and 20 <= len(domains) <= 28 and 35_000 <= len(rows) <= 50_000
    assert "noun.animal" in domains and counts["empty_definitions"] < len(rows) // 100
    assert ("noun.animal", "dog.02084071", "a young dog") in rows  # puppy, a hyponym of dog
    # Durga's gloss: 'Hindu goddess of war; a malevolent aspect of Devi; "the inaccessible Durga"'
    assert ("noun.person", "Hindu_deity.09522978", "Hindu goddess of war; a malevolent aspect of Devi") in rows
    # the store itself, two texts a class (tokenizing all ~44k texts takes longer than this file should)
    store = WORDNET.build(WordNetOptions(max_per_class=2), 64, 0)
    assert (store.num_classes, store.num_domains, store.num_samples) == (len(classes), len(domains), 2 * len(classes))
    assert store.images.shape[1:] == (2, 64) and store.meta["truncated"] < store.num_samples // 100
