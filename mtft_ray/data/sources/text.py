"""The ``text`` source: labelled texts from ``.csv``, ``.jsonl``/``.json``, ``.parquet`` files or
Hugging Face ``datasets`` folders, tokenized once into a store.

Each row gives a text, its class and (optionally) its domain; class ``c`` of domain ``d`` becomes
the store class ``"d/c"``. ``files`` takes paths and globs; a folder written by
``datasets.Dataset.save_to_disk`` (it has ``state.json`` / ``dataset_info.json``) is read with
pyarrow, without the ``datasets`` package, and its ``ClassLabel`` columns give their names (as do
those of a parquet file that ``datasets`` wrote). Rows are sorted by ``(domain, class, text)``, so
the store does not depend on the order of the files or of the rows in them.

Nothing is dropped silently: empty texts, classes with fewer than ``min_per_class`` texts, texts
over ``max_per_class`` (a seeded random subset is kept) and texts longer than ``max_length``
tokens (cut to fit) are all counted in the store's ``meta``. A missing file or column, an
unreadable file or a row with no class or domain stops the build with one line naming the file.

Example:
    data:
      source: text
      options: {files: [data/news/*.jsonl], text_column: body, class_column: topic, domain_column: null}
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from mtft_ray.config.sources import TextOptions
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.data.tokenize import load_tokenizer, tokenize, tokenizer_fingerprint
from mtft_ray.errors import MtftError

__all__ = ["SOURCE", "match_files", "read_rows", "seeded_subset", "tokenized_store"]

_VERSION = 1  # bump whenever the store given (options, files, tokenizer) changes
_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
_DATASET_MARKERS = ("state.json", "dataset_info.json")
_ONE_DOMAIN = "all"


def _shown(path: Path) -> str:
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_dataset_dir(p: Path) -> bool:
    """Whether ``p`` is a folder ``datasets`` wrote with ``save_to_disk`` (one split, or a ``DatasetDict``)."""
    return p.is_dir() and any((p / m).is_file() for m in (*_DATASET_MARKERS, "dataset_dict.json"))


def _check_dataset_dir(p: Path) -> None:
    """A ``DatasetDict`` folder is refused: which splits to read is the user's choice, not ours."""
    marker = p / "dataset_dict.json"
    if marker.is_file():
        try:
            splits = json.loads(marker.read_text(encoding="utf-8")).get("splits", [])
        except (OSError, ValueError, AttributeError):
            splits = []
        listed = ", ".join(f"{_shown(p / s)}" for s in splits) or f"{_shown(p)}/<split>"
        raise MtftError(f"{_shown(p)} is a datasets DatasetDict with splits {', '.join(splits) or '?'}: list the "
                        f"split folders to read in data.options.files ({listed})")


def match_files(options: TextOptions) -> list[Path]:
    """The files and dataset folders ``options.files`` names, deduplicated and sorted by absolute path.

    A plain path must exist and be a supported file or a ``save_to_disk`` folder; a glob keeps the
    supported files and folders it matches and skips the rest.

    Raises:
        MtftError: no files given, a plain path that is missing or unsupported, or nothing matched.
    """
    if not options.files:
        raise MtftError("data source 'text' needs data.options.files (paths or globs of .csv, .jsonl, .json, "
                        ".parquet files or datasets.save_to_disk folders)")
    found: dict[str, Path] = {}
    for pattern in options.files:
        expanded = os.path.expanduser(pattern)
        if any(ch in pattern for ch in "*?["):
            import glob

            hits = [Path(h) for h in sorted(glob.glob(expanded, recursive=True))]
            hits = [h for h in hits if (h.is_file() and h.suffix.lower() in _SUFFIXES) or _is_dataset_dir(h)]
        else:
            p = Path(expanded)
            if not p.exists():
                raise MtftError(f"text file not found: {_shown(p)} (data.options.files)")
            if p.is_dir() and not _is_dataset_dir(p):
                raise MtftError(f"{_shown(p)} is a folder but not a datasets.save_to_disk folder (no "
                                f"{' or '.join(_DATASET_MARKERS)}): list its files, e.g. {_shown(p)}/*.csv")
            if p.is_file() and p.suffix.lower() not in _SUFFIXES:
                raise MtftError(f"unsupported text file {_shown(p)}: use {', '.join(_SUFFIXES)} files or a "
                                f"datasets.save_to_disk folder (data.options.files)")
            hits = [p]
        for h in hits:
            if h.is_dir():
                _check_dataset_dir(h)
            found.setdefault(str(h.resolve()), h.resolve())
    if not found:
        raise MtftError(f"no text files matched data.options.files {options.files} ({', '.join(_SUFFIXES)} files "
                        f"or datasets.save_to_disk folders)")
    return [found[k] for k in sorted(found)]


def _class_labels(features: object) -> dict[str, list[str]]:
    """``{column: names}`` of the ``ClassLabel`` columns in a ``datasets`` features description."""
    if not isinstance(features, dict):
        return {}
    return {col: list(f["names"]) for col, f in features.items()
            if isinstance(f, dict) and f.get("_type") == "ClassLabel" and isinstance(f.get("names"), list)}


def _hf_features(metadata: dict | None) -> object:
    """The features ``datasets`` keeps in an arrow or parquet schema's ``huggingface`` metadata."""
    raw = (metadata or {}).get(b"huggingface")
    try:
        return json.loads(raw).get("info", {}).get("features") if raw else None
    except (ValueError, AttributeError):
        return None


def _unreadable(path: Path, e: BaseException) -> MtftError:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return MtftError(f"unreadable text file {_shown(path)}: {reason.replace(str(path), '').strip(' :')}")


def _read_csv(path: Path, wanted: list[str]) -> tuple[list[str], dict[str, list], dict]:
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError, csv.Error, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise _unreadable(path, e) from None
    cols = [str(c) for c in df.columns]
    return cols, {c: df[c].tolist() for c in wanted if c in df.columns}, {}


def _read_json(path: Path, wanted: list[str]) -> tuple[list[str], dict[str, list], dict]:
    """JSON lines (``.jsonl``, or ``.json`` not starting with ``[``), or a ``.json`` array of objects."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise _unreadable(path, e) from None
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise MtftError(f"unreadable text file {_shown(path)}: not JSON at line {e.lineno} ({e.msg})") from None
        numbered = list(enumerate(records, 1))
        where = "item"
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    numbered.append((lineno, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise MtftError(f"unreadable text file {_shown(path)}: line {lineno} is not JSON ({e.msg})") from None
        where = "line"
    cols: dict[str, None] = {}
    for n, rec in numbered:
        if not isinstance(rec, dict):
            raise MtftError(f"unreadable text file {_shown(path)}: {where} {n} is a JSON {type(rec).__name__}, not an "
                            f"object with columns")
        cols.update(dict.fromkeys(rec))
    return list(cols), {c: [rec.get(c) for _, rec in numbered] for c in wanted if c in cols}, {}


def _read_parquet(path: Path, wanted: list[str]) -> tuple[list[str], dict[str, list], dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        present = [c for c in wanted if c in schema.names]
        table = pq.read_table(path, columns=present)
    except (OSError, pa.ArrowException) as e:
        raise _unreadable(path, e) from None
    return list(schema.names), {c: table.column(c).to_pylist() for c in present}, _class_labels(
        _hf_features(schema.metadata))


def _read_dataset_dir(path: Path, wanted: list[str]) -> tuple[list[str], dict[str, list], dict]:
    """A ``save_to_disk`` folder: its arrow shards (in ``state.json``'s order), read with pyarrow."""
    import pyarrow as pa

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8")) if (path / "state.json").is_file() else {}
        info = (json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
                if (path / "dataset_info.json").is_file() else {})
    except (OSError, ValueError) as e:
        raise MtftError(f"unreadable datasets folder {_shown(path)}: {e}") from None
    names = [f.get("filename") for f in state.get("_data_files", []) if isinstance(f, dict)] if isinstance(state, dict) else []
    shards = [path / n for n in names if n] or sorted(path.glob("*.arrow"))
    if not shards:
        raise MtftError(f"datasets folder {_shown(path)} has no .arrow files")
    labels = _class_labels(info.get("features") if isinstance(info, dict) else None)
    cols: list[str] | None = None
    data: dict[str, list] = {}
    for shard in shards:
        try:
            with pa.memory_map(str(shard)) as src:
                try:
                    table = pa.ipc.open_stream(src).read_all()  # what datasets writes
                except pa.ArrowInvalid:
                    src.seek(0)
                    table = pa.ipc.open_file(src).read_all()
                labels = labels or _class_labels(_hf_features(table.schema.metadata))
                if cols is None:
                    cols = list(table.schema.names)
                elif list(table.schema.names) != cols:
                    raise MtftError(f"datasets folder {_shown(path)}: shard {shard.name} has columns "
                                    f"{', '.join(table.schema.names)}, the first had {', '.join(cols)}")
                for c in wanted:
                    if c in cols:
                        data.setdefault(c, []).extend(table.column(c).to_pylist())
        except (OSError, pa.ArrowException) as e:
            raise _unreadable(shard, e) from None
    return cols or [], data, labels


def _reader(path: Path):
    if path.is_dir():
        return _read_dataset_dir
    return {".csv": _read_csv, ".parquet": _read_parquet}.get(path.suffix.lower(), _read_json)


def _as_text(value: object, path: Path, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise MtftError(f"{_shown(path)}: column {column!r} holds {type(value).__name__} values, not text")


def _as_name(value: object, names: list[str] | None, path: Path, column: str) -> str:
    """A class or domain value as its name (``""``: none): a ``ClassLabel`` id maps to its name."""
    if names is not None and isinstance(value, int) and not isinstance(value, bool):
        return names[value] if 0 <= value < len(names) else ""
    return _as_text(value, path, column)


def read_rows(options: TextOptions, files: list[Path] | None = None) -> tuple[list[tuple[str, str, str]], int]:
    """Every non-empty ``(domain, class, text)`` row of the files, sorted, and how many empty texts were dropped.

    Raises:
        MtftError: a file is unreadable, lacks a column, or has a row with no class or domain (or a
            domain name with a ``/``, which would break ``"domain/class"`` names).
    """
    files = match_files(options) if files is None else files
    wanted = [options.text_column, options.class_column] + ([options.domain_column] if options.domain_column else [])
    setting = {options.text_column: "text_column", options.class_column: "class_column",
               options.domain_column: "domain_column"}
    rows: list[tuple[str, str, str]] = []
    empty = 0
    for path in files:
        cols, data, labels = _reader(path)(path, wanted)
        for col in wanted:
            if col not in data:
                hint = "; set domain_column: null to put all rows in one domain" if col == options.domain_column else ""
                raise MtftError(f"{_shown(path)}: no column {col!r} (data.options.{setting[col]}); its columns: "
                                f"{', '.join(cols) or 'none'}{hint}")
        texts = [_as_text(v, path, options.text_column) for v in data[options.text_column]]
        classes = [_as_name(v, labels.get(options.class_column), path, options.class_column)
                   for v in data[options.class_column]]
        if options.domain_column:
            domains = [_as_name(v, labels.get(options.domain_column), path, options.domain_column)
                       for v in data[options.domain_column]]
        else:
            domains = [_ONE_DOMAIN] * len(texts)
        for col, values in ((options.class_column, classes), (options.domain_column, domains)):
            missing = sum(not v for v in values)
            if missing:
                raise MtftError(f"{_shown(path)}: {missing} of {len(values)} rows have no value in column {col!r} "
                                f"(empty, null, or a ClassLabel id out of range)")
        bad = sorted({d for d in domains if "/" in d})
        if bad:
            raise MtftError(f"{_shown(path)}: domain {bad[0]!r} (column {options.domain_column!r}) contains '/', which "
                            f"separates domain and class in store names")
        for d, c, t in zip(domains, classes, texts):
            if t.strip():
                rows.append((d, c, t))
            else:
                empty += 1
    rows.sort()
    return rows, empty


def seeded_subset(n: int, cap: int | None, seed: int, key: str) -> np.ndarray:
    """Sorted indices of a random ``cap`` of ``n`` items, from ``(seed, key)`` alone (all of them if ``n <= cap``).

    A class's subset depends on its own key only, so adding or dropping other classes keeps it.
    """
    if cap is None or n <= cap:
        return np.arange(n)
    rng = np.random.default_rng([seed % 2**64, zlib.crc32(key.encode("utf-8", "surrogateescape"))])
    return np.sort(rng.choice(n, cap, replace=False))


def tokenized_store(rows: list[tuple[str, str, str]], tokenizer_spec: str, max_length: int,
                    meta: dict, progress: bool = False) -> SampleStore:
    """The store of sorted ``(domain, class, text)`` rows, tokenized; ``meta`` gains the counts."""
    rows_, truncated = tokenize([t for _, _, t in rows], load_tokenizer(tokenizer_spec), max_length, progress)
    meta = {**meta, "texts": len(rows), "classes": len({(d, c) for d, c, _ in rows}),
            "domains": len({d for d, _, _ in rows}), "truncated": truncated, "max_length": max_length,
            "tokenizer": tokenizer_spec}
    return build_store(rows_, [(d, c) for d, c, _ in rows], meta)


def _stamp(path: Path) -> str:
    """Path, size and mtime of a file, or of each file in a dataset folder."""
    targets = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    parts = []
    for p in targets:
        st = p.stat()
        parts.append(f"{p}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)


class _Text:
    name = "text"
    Options = TextOptions

    def fingerprint(self, options: TextOptions, image_size: int, seed: int) -> str:
        """Hash of the options (the file list as the set of files it matches), each file's size and mtime,
        the tokenizer's stamp, and the seed when ``max_per_class`` uses it. ``image_size`` plays no part."""
        h = hashlib.sha256(json.dumps([
            _VERSION, options.model_dump(exclude={"files"}), tokenizer_fingerprint(options.tokenizer),
            seed if options.max_per_class is not None else None]).encode())
        for p in match_files(options):
            h.update(_stamp(p).encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def build(self, options: TextOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        files = match_files(options)
        rows, empty = read_rows(options, files)
        if not rows:
            raise MtftError(f"no text in data.options.files: all {empty} texts in column {options.text_column!r} "
                            f"are empty")
        sizes = Counter((d, c) for d, c, _ in rows)
        small = {k for k, n in sizes.items() if n < options.min_per_class}
        kept: list[tuple[str, str, str]] = []
        over = 0
        start = 0
        for key in sorted(sizes):  # rows are sorted, so each class is one run
            run = rows[start : start + sizes[key]]
            start += sizes[key]
            if key in small:
                continue
            keep = seeded_subset(len(run), options.max_per_class, seed, f"{key[0]}/{key[1]}")
            over += len(run) - len(keep)
            kept += [run[i] for i in keep]
        if not kept:
            raise MtftError(f"no class of data.options.files has min_per_class={options.min_per_class} non-empty texts "
                            f"({len(sizes)} classes, {len(rows)} texts)")
        meta = {"source": "text", "options": options.model_dump(), "files": [_shown(p) for p in files],
                "dropped": {"empty_texts": empty, "small_classes": len(small),
                            "small_class_texts": sum(sizes[k] for k in small), "over_max_per_class": over}}
        return tokenized_store(kept, options.tokenizer, options.max_length, meta, progress)


SOURCE = register(_Text())
