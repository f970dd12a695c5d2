"""The ``metadataset`` source: Meta-Dataset (Triantafillou et al., 2020) as its conversion scripts write it.

``root`` holds one folder per source dataset (``omniglot``, ``aircraft``, ``cu_birds``, ...) with
``dataset_spec.json`` and one ``<class id>.tfrecords`` file per class, each record a
``tf.train.Example`` with ``image`` (encoded JPEG/PNG bytes) and ``label`` (the class id). The
records are read with the ``tfrecord`` package; TensorFlow is not needed.

The three kinds of ``dataset_spec.json`` are read: ``DatasetSpecification`` (``classes_per_split``),
``BiLevelDatasetSpecification`` (omniglot: ``superclasses_per_split`` and
``classes_per_superclass``) and ``HierarchicalDatasetSpecification`` (ilsvrc_2012: the leaves of
``split_subgraphs``). Class ids run through the TRAIN classes, then VALID, then TEST; split keys
are accepted as ``TRAIN`` or ``Split.TRAIN``. A domain is ``<source>-<split>`` with split
``train``, ``val`` or ``test`` (``omniglot-test``); a class is its ``class_names`` entry. A class
file whose record count differs from ``images_per_class`` stops the build naming the file.

It is a file source: ``list_files`` names each sample ``<root>/<source>/<class id>.tfrecords#<k>``
(counted from the spec, no record read) and ``decode`` reads a class file once per process (kept,
one file at a time, for the next record), checking its labels and record count then, so
``mtft-ray data prepare`` decodes shards in parallel tasks and a bad class file stops the task
that first reads it, with the error ``build`` raises.

Example:
    data:
      source: metadataset
      options: {root: /data/records, sources: [omniglot, aircraft, cu_birds], max_per_class: 40}
      image_size: 84
      split: {by: domain, target_domains: [omniglot-test], val_domains: [omniglot-val]}
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError
from tfrecord.reader import tfrecord_loader

from mtft_ray.config.sources import MetaDatasetOptions
from mtft_ray.data.sources.miniimagenet import _decode_bytes, _root, archive_row
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 1
SPEC = "dataset_spec.json"
_LAYOUT = "<source>/dataset_spec.json and <source>/<class id>.tfrecords"
_SPLITS = (("TRAIN", "train"), ("VALID", "val"), ("TEST", "test"))


def _by_split(d: dict) -> dict:
    """``d`` with its split keys as ``TRAIN``, ``VALID``, ``TEST`` (``Split.TRAIN`` is written by older conversions)."""
    return {str(k).removeprefix("Split."): v for k, v in d.items()}


def _per_split(spec: dict, key: str, path: Path) -> list[int]:
    """``spec[key]`` (``{"TRAIN": n, ...}`` or ``{"Split.TRAIN": n, ...}``) as ``[train, valid, test]``."""
    d = spec.get(key)
    if not isinstance(d, dict):
        raise MtftError(f"{path}: {key} missing (expected {{\"TRAIN\": n, \"VALID\": n, \"TEST\": n}})")
    d = _by_split(d)
    try:
        return [int(d[s]) for s, _ in _SPLITS]
    except (KeyError, TypeError, ValueError):
        raise MtftError(f"{path}: {key} must give a count for each of TRAIN, VALID, TEST, got {spec[key]}") from None


def _classes(spec: dict, path: Path) -> list[tuple[int, str, str, int]]:
    """``(class id, split, class name, image count)`` of every class a spec describes, by id."""
    try:
        names = {int(k): str(v) for k, v in spec["class_names"].items()}
        kind = spec.get("__class__", "DatasetSpecification")
        if kind == "HierarchicalDatasetSpecification":
            # every node of a split's subgraph has a count; its classes are the leaves
            graphs, per_split = _by_split(spec["split_subgraphs"]), _by_split(spec["images_per_class"])
            leaves = [{n["wn_id"] for n in graphs[s] if not n["children_ids"]} for s, _ in _SPLITS]
            counts_by = [{str(w): n for w, n in per_split[s].items() if w in leaves[k]}
                         for k, (s, _) in enumerate(_SPLITS)]
            n_split = [len(x) for x in leaves]
        else:
            counts = {int(k): v for k, v in spec["images_per_class"].items()}
            if kind == "BiLevelDatasetSpecification":
                supers = _per_split(spec, "superclasses_per_split", path)
                per_super = {int(k): int(v) for k, v in spec["classes_per_superclass"].items()}
                bounds = np.cumsum([0, *supers])
                n_split = [sum(per_super[i] for i in range(bounds[k], bounds[k + 1])) for k in range(3)]
            else:
                n_split = _per_split(spec, "classes_per_split", path)
    except MtftError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MtftError(f"{path}: not a Meta-Dataset dataset spec ({type(e).__name__}: {e})") from None
    if sum(n_split) != len(names) or sorted(names) != list(range(len(names))):
        raise MtftError(f"{path}: the splits hold {sum(n_split)} classes but class_names names {len(names)} "
                        f"(ids 0..{len(names) - 1} expected)")
    if len(set(names.values())) != len(names):
        raise MtftError(f"{path}: class_names names a class twice")
    out, cid = [], 0
    for k, (_, split) in enumerate(_SPLITS):
        for _ in range(n_split[k]):
            n = counts_by[k].get(names[cid]) if kind == "HierarchicalDatasetSpecification" else counts.get(cid)
            if isinstance(n, dict):
                raise MtftError(f"{path}: class {cid} has example-level pools {sorted(n)}; only one file per class "
                                f"is read")
            if n is None:
                raise MtftError(f"{path}: images_per_class has no count for class {cid} ({names[cid]})")
            out.append((cid, split, names[cid], int(n)))
            cid += 1
    return out


def _read_spec(folder: Path) -> list[tuple[int, str, str, int]]:
    """The classes (:func:`_classes`) of the source in ``folder``, from its checked ``dataset_spec.json``."""
    path = folder / SPEC
    if not path.is_file():
        old = " (only the older dataset_spec.pkl is there: convert it with Meta-Dataset's load_dataset_spec(" \
              "path, convert_from_pkl=True))" if (folder / "dataset_spec.pkl").is_file() else ""
        raise MtftError(f"Meta-Dataset spec missing: {path}{old}")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MtftError(f"cannot read {path}: {e}") from None
    if not isinstance(spec, dict):
        raise MtftError(f"{path}: not a Meta-Dataset dataset spec (a JSON object expected)")
    pattern = spec.get("file_pattern", "{}.tfrecords")
    if pattern != "{}.tfrecords":
        raise MtftError(f"{path}: file_pattern {pattern!r} is not read (one '{{}}.tfrecords' file per class is)")
    return _classes(spec, path)


def _sources(root: Path, opt: MetaDatasetOptions) -> list[tuple[str, Path, list[tuple[int, str, str, int]]]]:
    """``(source, folder, classes)`` of each source to read, its spec and class files checked to be there."""
    names = opt.sources if opt.sources is not None else sorted(
        p.name for p in root.iterdir() if (p / SPEC).is_file())
    if not names:
        raise MtftError(f"no Meta-Dataset sources in {root}: expected {root}/<source>/{SPEC}")
    out = []
    for name in names:
        folder = root / name
        classes = _read_spec(folder)
        for cid, *_ in classes:
            if not (folder / f"{cid}.tfrecords").is_file():
                raise MtftError(f"Meta-Dataset class file missing: {folder / f'{cid}.tfrecords'} "
                                f"(listed in {folder / SPEC})")
        out.append((name, folder, classes))
    return out


def _class_files(sources: list[tuple[str, Path, list[tuple[int, str, str, int]]]]
                 ) -> list[tuple[str, Path, int, str, str, int]]:
    """``(source, class file, class id, split, class name, image count)`` of every class of ``sources``
    (:func:`_sources`), in the store's order: by source, then split and class name."""
    return [(name, folder / f"{cid}.tfrecords", cid, split, cls, count)
            for name, folder, classes in sources
            for cid, split, cls, count in sorted(classes, key=lambda c: (c[1], c[2]))]


def _read_class(path: Path, cid: int, expected: int, limit: int | None) -> list[bytes]:
    """The encoded images of one class file (the first ``limit``), after checking every record."""
    images, n = [], 0
    try:
        for rec in tfrecord_loader(str(path), None, {"image": "byte", "label": "int"}):
            label = int(np.asarray(rec["label"]).reshape(-1)[0])
            if label != cid:
                raise MtftError(f"{path}: record {n} has label {label}, expected the class id {cid}")
            if limit is None or n < limit:
                images.append(bytes(rec["image"]))
            n += 1
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, DecodeError) as e:
        raise MtftError(f"unreadable TFRecord file {path} at record {n}: {e}") from None
    if n != expected:
        raise MtftError(f"{path} holds {n} records, but {path.parent / SPEC} says images_per_class[{cid}] = {expected}")
    return images


@functools.lru_cache(maxsize=4)
def _cached_counts(folder: str, size: int, mtime_ns: int) -> dict[int, int]:
    """Class id -> image count of the spec in ``folder`` (its size and modification time in the key)."""
    return {cid: count for cid, _, _, count in _read_spec(Path(folder))}


_cache_lock = threading.Lock()
_cached: dict[tuple, list[bytes]] = {}  # at most one class file's encoded images


def _cached_class(path: Path, limit: int | None) -> list[bytes]:
    """The (first ``limit``) encoded images of the class file ``path``, read and checked (labels, count
    against the spec) once and kept for the next :meth:`_MetaDataset.decode` call; one class file is
    kept at a time, and its size and modification time are in the key."""
    if not path.name.endswith(".tfrecords") or not path.name.removesuffix(".tfrecords").isdigit():
        raise MtftError(f"not a Meta-Dataset class file: {path} (expected <root>/<source>/<class id>.tfrecords#<k>)")
    cid = int(path.name.removesuffix(".tfrecords"))
    try:
        st, spec_st = path.stat(), (path.parent / SPEC).stat()
    except OSError as e:
        raise MtftError(f"cannot read {e.filename}: {e.strerror or e}") from None
    key = (str(path), st.st_size, st.st_mtime_ns, limit)
    with _cache_lock:
        if key not in _cached:
            _cached.clear()
            counts = _cached_counts(str(path.parent), spec_st.st_size, spec_st.st_mtime_ns)
            if cid not in counts:
                raise MtftError(f"{path.parent / SPEC} has no class {cid} (for {path})")
            _cached[key] = _read_class(path, cid, counts[cid], limit)
        return _cached[key]


class _MetaDataset:
    name = "metadataset"
    Options = MetaDatasetOptions

    def fingerprint(self, options: MetaDatasetOptions, image_size: int, seed: int) -> str:
        root = _root(options, "metadataset", _LAYOUT)
        h = hashlib.sha256(json.dumps([_VERSION, options.model_dump(exclude={"workers"}), image_size]).encode())
        for name, folder, classes in _sources(root, options):
            for rel in [SPEC] + [f"{cid}.tfrecords" for cid, *_ in classes]:
                st = (folder / rel).stat()
                h.update(f"{name}/{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def list_files(self, options: MetaDatasetOptions) -> list[tuple[str, str, str]]:
        """Every sample as ``(<source>-<split>, class name, "<root>/<source>/<class id>.tfrecords#<k>")``,
        in ``build``'s order.

        The records are counted from ``dataset_spec.json`` (the first ``max_per_class`` of
        ``images_per_class``), not read: a class file's labels and record count are checked by
        :meth:`decode` when it first reads the file (the same errors ``build`` raises), except for a
        class the spec gives no images, checked here.
        """
        root = _root(options, "metadataset", _LAYOUT)
        files = []
        for name, path, cid, split, cls, count in _class_files(_sources(root, options)):
            if count == 0:
                _read_class(path, cid, count, options.max_per_class)
            n = count if options.max_per_class is None else min(count, options.max_per_class)
            files += [(f"{name}-{split}", cls, f"{path}#{k}") for k in range(n)]
        return files

    def decode(self, file: str, image_size: int, options: MetaDatasetOptions) -> np.ndarray:
        """Record ``k`` of ``<class id>.tfrecords#<k>``; the class file is read once per process and kept
        (one at a time) for the next record."""
        path, k = archive_row(file, "Meta-Dataset", "<root>/<source>/<class id>.tfrecords#<k>")
        data = _cached_class(Path(path), options.max_per_class)
        if k >= len(data):
            raise MtftError(f"{path}: no record {k} (of the {len(data)} read)")
        return _decode_bytes(data[k], image_size, file)

    def build(self, options: MetaDatasetOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        root = _root(options, "metadataset", _LAYOUT)
        sources = _sources(root, options)
        images, keys, files = [], [], []
        bar = progress_bar(None, progress, total=sum(len(c) for *_, c in sources), desc="reading classes",
                           unit="class")
        with ThreadPoolExecutor(options.workers) as pool:
            for name, path, cid, split, cls, count in _class_files(sources):
                data = _read_class(path, cid, count, options.max_per_class)
                where = [f"{name}/{cid}.tfrecords#{i}" for i in range(len(data))]
                images += pool.map(lambda a: _decode_bytes(a[0], image_size, f"{root}/{a[1]}"), zip(data, where))
                keys += [(f"{name}-{split}", cls)] * len(data)
                files += where
                bar.update()
        bar.close()
        meta = {"source": self.name, "root": str(root.resolve()), "sources": [s for s, *_ in sources],
                "files": len(files)}
        return build_store(images, keys, meta, files=files)


SOURCE = register(_MetaDataset())
