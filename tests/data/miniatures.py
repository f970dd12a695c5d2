"""Miniatures of four published few-shot datasets, laid out on disk exactly as published, with tiny
images (12 px) and one to three images per class: DomainNet, miniImageNet (both layouts),
tieredImageNet and Meta-Dataset's records. Each writer returns the pixels it wrote where they
survive encoding (PNG, arrays), so a test can compare the store against them.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from tfrecord import TFRecordWriter

SIZE = 12
MINI_CLASSES = {"train": 64, "val": 16, "test": 20}  # Ravi & Larochelle
TIERED_CLASSES = {"train": 351, "val": 97, "test": 160}  # Ren et al.


def pixels(rng: np.random.Generator, size: int = SIZE, grey: bool = False) -> np.ndarray:
    return rng.integers(0, 256, (size, size) if grey else (size, size, 3), dtype=np.uint8)


def encode(a: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def wnids(n: int, first: int) -> list[str]:
    """``n`` WordNet-style ids (``n01530575``), not real ones."""
    return [f"n{first + 37 * i:08d}" for i in range(n)]


def write_domainnet(root: Path, domains: dict[str, list[str]] | None = None, train: int = 2, test: int = 1,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """``root/<domain>/<class>/<domain>_<label>_<n>.jpg`` with ``<domain>_train.txt`` and
    ``<domain>_test.txt`` (``path label``, labels the class's index in the sorted class list), plus
    one image per class that no list names. Returns relative path -> pixels written (before JPEG)."""
    domains = domains or {"clipart": ["aircraft_carrier", "zebra"], "sketch": ["aircraft_carrier", "The_Eiffel_Tower"]}
    labels = {c: i for i, c in enumerate(sorted({c for cs in domains.values() for c in cs}))}
    rng, written = np.random.default_rng(seed), {}
    for domain, classes in domains.items():
        lists = {"train": [], "test": []}
        for cls in classes:
            for n in range(train + test + 1):
                rel = f"{domain}/{cls}/{domain}_{labels[cls] + 1:03d}_{n + 1:06d}.jpg"
                a = pixels(rng)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(a).save(root / rel, quality=95)
                if n < train + test:  # the last one is on disk but unlisted
                    lists["train" if n < train else "test"].append(f"{rel} {labels[cls]}")
                    written[rel] = a
        for split, lines in lists.items():
            (root / f"{domain}_{split}.txt").write_text("\n".join(lines) + "\n")
    return written


def _mini_classes(classes: dict[str, int]) -> dict[str, list[str]]:
    return {s: wnids(n, 1_000_000 * (k + 1)) for k, (s, n) in enumerate(classes.items())}


def write_mini_csv(root: Path, classes: dict[str, int] = MINI_CLASSES, per_class: int = 1,
                   seed: int = 0) -> dict[str, list[str]]:
    """Ravi & Larochelle's layout: ``{train,val,test}.csv`` (``filename,label``) and
    ``images/<wnid><8-digit index>.jpg``. Returns split -> wnids."""
    rng, names = np.random.default_rng(seed), _mini_classes(classes)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for split, ids in names.items():
        lines = ["filename,label"]
        for wnid in ids:
            for i in range(per_class):
                name = f"{wnid}{i + 1:08d}.jpg"
                Image.fromarray(pixels(rng)).save(root / "images" / name, quality=95)
                lines.append(f"{name},{wnid}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return names


def write_mini_pkl(root: Path, classes: dict[str, int] = MINI_CLASSES, per_class: int = 1,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """The shared pickles ``mini-imagenet-cache-{split}.pkl``: ``{"image_data": (N, H, W, 3) uint8,
    "class_dict": {wnid: [rows]}}``, a class's rows not contiguous. Returns split -> image_data."""
    rng, names, out = np.random.default_rng(seed), _mini_classes(classes), {}
    root.mkdir(parents=True, exist_ok=True)
    for split, ids in names.items():
        n = len(ids) * per_class
        data = np.stack([pixels(rng) for _ in range(n)]) if n else np.zeros((0, SIZE, SIZE, 3), np.uint8)
        rows = rng.permutation(n)
        class_dict = {w: sorted(rows[k * per_class:(k + 1) * per_class].tolist()) for k, w in enumerate(ids)}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f, protocol=pickle.HIGHEST_PROTOCOL)
        out[split] = data
    return out


class _Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle did: protocol 2, byte strings as ``str`` (BINSTRING),
    numpy's globals under ``numpy.core``. Python 3 reads them only with ``encoding=...``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def _save_str(self, obj: bytes) -> None:
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", "")
        if module.startswith("numpy._core"):
            name = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"{module.replace('numpy._core', 'numpy.core')}\n{name}\n".encode())
            self.memoize(obj)
            return
        super().save_global(obj, name)


def py2_pickle(obj: object, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f).dump(obj)


def write_tiered(root: Path, classes: dict[str, int] = TIERED_CLASSES, per_class: int = 1, seed: int = 0,
                 as_: str = "array") -> dict[str, tuple[list[np.ndarray], np.ndarray, list[str]]]:
    """Ren et al.'s ``<split>_images_png.pkl`` (PNG bytes per image: ``as_`` ``array`` is the
    ``(n, 1)`` uint8 array ``cv2.imencode`` gives, ``bytes`` plain bytes, ``objarray`` an object
    array of such arrays) and ``<split>_labels.pkl`` (keys and names Python 2 ``str``), pickled as
    Python 2's cPickle wrote them (:func:`py2_pickle`). Rows of a class are scattered. Returns
    split -> (pixels, label_specific, names)."""
    rng, out = np.random.default_rng(seed), {}
    root.mkdir(parents=True, exist_ok=True)
    for k, (split, n_cls) in enumerate(classes.items()):
        names = wnids(n_cls, 2_000_000 * (k + 1))
        general_str = wnids(max(1, n_cls // 10), 90_000_000 + 1000 * k)
        specific = rng.permutation(np.repeat(np.arange(n_cls), per_class)).astype(np.int64)
        general = (specific * len(general_str)) // max(n_cls, 1)
        imgs = [pixels(rng) for _ in specific]
        pngs = [np.frombuffer(encode(a), np.uint8).reshape(-1, 1) for a in imgs]
        if as_ == "bytes":
            pngs = [p.tobytes() for p in pngs]
        elif as_ == "objarray":
            obj = np.empty(len(pngs), object)
            for i, png in enumerate(pngs):  # one by one: arrays of one length would make a 2-D array
                obj[i] = png
            pngs = obj
        labels = {b"label_specific": specific, b"label_general": general,
                  b"label_specific_str": [n.encode() for n in names],
                  b"label_general_str": [n.encode() for n in general_str]}
        py2_pickle(pngs, root / f"{split}_images_png.pkl")
        py2_pickle(labels, root / f"{split}_labels.pkl")
        out[split] = (imgs, specific, names)
    return out


def _records(folder: Path, cid: int, images: list[np.ndarray], fmt: str) -> None:
    writer = TFRecordWriter(str(folder / f"{cid}.tfrecords"))
    for a in images:
        writer.write({"image": (encode(a, fmt), "byte"), "label": (cid, "int")})
    writer.close()


def write_metadataset(root: Path, per_class: int = 2, seed: int = 0) -> dict[str, dict[int, list[np.ndarray]]]:
    """Three sources as Meta-Dataset's conversion writes them, one of each spec kind:

    - ``omniglot``: ``BiLevelDatasetSpecification``, alphabets 2 / 1 / 1 per split with 2, 1, 2, 1
      characters, grey PNGs;
    - ``aircraft``: ``DatasetSpecification`` 2 / 1 / 1 classes, keys written ``Split.TRAIN`` as
      older conversions did, JPEG records, one class name with a slash (``F-16A/B``);
    - ``ilsvrc_2012``: ``HierarchicalDatasetSpecification`` with a small WordNet graph per split
      (leaves 2 / 1 / 1), PNG records.

    Returns source -> class id -> pixels written (aircraft's before JPEG).
    """
    rng, out = np.random.default_rng(seed), {}

    def classes(folder: Path, n: int, fmt: str = "PNG", grey: bool = False) -> dict[int, list[np.ndarray]]:
        folder.mkdir(parents=True, exist_ok=True)
        imgs = {cid: [pixels(rng, grey=grey) for _ in range(per_class)] for cid in range(n)}
        for cid, ims in imgs.items():
            _records(folder, cid, ims, fmt)
        return imgs

    alphabets = ["Anglo-Saxon_Futhorc", "Arcadian", "Bengali", "Cyrillic"]
    chars = [2, 1, 2, 1]
    names = [f"{a}-character{i + 1:02d}" for a, n in zip(alphabets, chars) for i in range(n)]
    out["omniglot"] = classes(root / "omniglot", len(names), grey=True)
    spec = {"name": "omniglot", "superclasses_per_split": {"TRAIN": 2, "VALID": 1, "TEST": 1},
            "classes_per_superclass": {str(i): n for i, n in enumerate(chars)},
            "images_per_class": {str(i): per_class for i in range(len(names))},
            "superclass_names": {str(i): a for i, a in enumerate(alphabets)},
            "class_names": {str(i): n for i, n in enumerate(names)},
            "path": "/path/to/records/omniglot", "file_pattern": "{}.tfrecords",
            "__class__": "BiLevelDatasetSpecification"}
    (root / "omniglot" / "dataset_spec.json").write_text(json.dumps(spec, indent=2))

    planes = ["A340-300", "F-16A/B", "Falcon 2000", "Tu-154"]
    out["aircraft"] = classes(root / "aircraft", len(planes), fmt="JPEG")
    spec = {"name": "aircraft", "classes_per_split": {"Split.TRAIN": 2, "Split.VALID": 1, "Split.TEST": 1},
            "images_per_class": {str(i): per_class for i in range(len(planes))},
            "class_names": {str(i): n for i, n in enumerate(planes)},
            "path": "/path/to/records/aircraft", "file_pattern": "{}.tfrecords", "__class__": "DatasetSpecification"}
    (root / "aircraft" / "dataset_spec.json").write_text(json.dumps(spec, indent=2))

    leaves = {"TRAIN": ["n01440764", "n01443537"], "VALID": ["n02085620"], "TEST": ["n03000134"]}
    wn = [w for s in ("TRAIN", "VALID", "TEST") for w in leaves[s]]
    out["ilsvrc_2012"] = classes(root / "ilsvrc_2012", len(wn))

    def graph(ls: list[str]) -> list[dict]:
        top = {"wn_id": "n00001740", "words": "entity", "children_ids": ls, "parents_ids": []}
        return [top] + [{"wn_id": w, "words": w, "children_ids": [], "parents_ids": ["n00001740"]} for w in ls]

    spec = {"name": "ilsvrc_2012", "split_subgraphs": {s: graph(ls) for s, ls in leaves.items()},
            "images_per_class": {s: {"n00001740": per_class * len(ls), **{w: per_class for w in ls}}
                                 for s, ls in leaves.items()},
            "class_names": {str(i): w for i, w in enumerate(wn)},
            "path": "/path/to/records/ilsvrc_2012", "file_pattern": "{}.tfrecords",
            "__class__": "HierarchicalDatasetSpecification"}
    (root / "ilsvrc_2012" / "dataset_spec.json").write_text(json.dumps(spec, indent=2))
    return out
