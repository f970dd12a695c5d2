"""The ``tieredimagenet`` source: tieredImageNet (Ren et al., 2018) in its published pickles.

``root`` holds, for each split ``train`` / ``val`` / ``test`` (351 / 97 / 160 classes):

- ``<split>_images_png.pkl``: a list (or object array) of PNG-encoded 84x84 images, each as bytes
  or as a uint8 array of the PNG's bytes (as ``cv2.imencode`` returns it);
- ``<split>_labels.pkl``: a dict with ``label_specific`` (one int per image),
  ``label_specific_str`` (the class name of each ``label_specific``), ``label_general`` and
  ``label_general_str`` (the 34 ImageNet categories above the classes).

The published files are Python 2 pickles; they are read by an unpickler that builds nothing but
numpy arrays and plain containers. A split is a domain (``train``, ``val``, ``test``) and a class
its specific label's name; ``meta["general"]`` maps each class (``"<split>/<name>"``) to its
category. Images are decoded by ``folder``'s rules, resized (shorter side, bicubic) and
centre-cropped to ``image_size``.

It is a file source: ``list_files`` names each sample ``<root>/<split>_images_png.pkl#<row>`` and
``decode`` reads the split's images pickle once per process (kept, one split at a time, for the
next row), so ``mtft-ray data prepare`` decodes shards in parallel tasks; each task's process then
holds one split's PNG bytes (the size of that ``_images_png.pkl``). ``store_meta`` gives a
prepared store the same ``general`` map and the published split.

Example:
    data:
      source: tieredimagenet
      options: {root: /data/tiered-imagenet}
      image_size: 84
      split: {by: domain, target_domains: [test], val_domains: [val]}
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mtft_ray.config.sources import TieredImageNetOptions
from mtft_ray.data.sources.miniimagenet import (SPLITS, _as_bytes, _decode_bytes, _load_pickle, _root, _stat_key,
                                                _text, archive_row)
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 1
# the benchmark's own class split, as data.split (recorded in the store; `mtft-ray data info` shows it)
PUBLISHED_SPLIT = {"by": "domain", "target_domains": ["test"], "val_domains": ["val"]}
_LABEL_KEYS = ("label_specific", "label_specific_str", "label_general", "label_general_str")


def _split_files(opt: TieredImageNetOptions) -> tuple[Path, list[tuple[str, Path, Path]]]:
    """The root and ``(split, images pickle, labels pickle)`` of each split, checked to be there."""
    root = _root(opt, "tieredimagenet", "{train,val,test}_images_png.pkl and {train,val,test}_labels.pkl")
    out = []
    for split in SPLITS:
        pair = (root / f"{split}_images_png.pkl", root / f"{split}_labels.pkl")
        for p in pair:
            if not p.is_file():
                raise MtftError(f"tieredImageNet file missing: {p} (each split train, val, test needs "
                                f"<split>_images_png.pkl and <split>_labels.pkl)")
        out.append((split, *pair))
    return root, out


def _read_labels(path: Path) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """``label_specific``, its names, ``label_general`` and its names, checked for consistency."""
    d = _load_pickle(path)
    d = {_text(k): v for k, v in d.items()} if isinstance(d, dict) else d
    missing = [k for k in _LABEL_KEYS if not isinstance(d, dict) or k not in d]
    if missing:
        raise MtftError(f"{path}: expected a dict with {', '.join(_LABEL_KEYS)}; missing {', '.join(missing)}")
    specific = np.asarray(d["label_specific"]).reshape(-1)
    general = np.asarray(d["label_general"]).reshape(-1)
    names = [_text(x) for x in d["label_specific_str"]]
    general_names = [_text(x) for x in d["label_general_str"]]
    for what, labels, n in (("label_specific", specific, len(names)), ("label_general", general, len(general_names))):
        if labels.dtype.kind not in "iu":
            raise MtftError(f"{path}: {what} must be integers, got {labels.dtype}")
        if len(labels) and (labels.min() < 0 or labels.max() >= n):
            raise MtftError(f"{path}: {what} runs to {labels.max()}, but {what}_str names {n} labels")
    if len(general) != len(specific):
        raise MtftError(f"{path}: {len(specific)} label_specific but {len(general)} label_general entries")
    if len(set(names)) != len(names):
        raise MtftError(f"{path}: label_specific_str names a class twice")
    return specific.astype(np.int64), names, general.astype(np.int64), general_names


def _rows(specific: np.ndarray, names: list[str], limit: int | None) -> list[int]:
    """The rows a split contributes: its classes by name, each class's rows in file order (the first ``limit``)."""
    by_class: dict[int, list[int]] = collections.defaultdict(list)
    for r, c in enumerate(specific.tolist()):
        by_class[c].append(r)
    return [r for c in sorted(by_class, key=names.__getitem__) for r in by_class[c][:limit]]


def _read_images(img_path: Path, lab_path: Path, n_labels: int | None = None) -> list | tuple | np.ndarray:
    """The PNG-encoded images of a split's pickle, checked to be a list of as many images as
    ``lab_path`` labels (``n_labels``, read from ``lab_path`` when not given)."""
    data = _load_pickle(img_path)
    if not isinstance(data, (list, tuple, np.ndarray)):
        raise MtftError(f"{img_path}: expected a list of PNG-encoded images, got {type(data).__name__}")
    if n_labels is None:
        n_labels = len(_read_labels(lab_path)[0])
    if len(data) != n_labels:
        raise MtftError(f"{img_path} holds {len(data)} images but {lab_path} labels {n_labels}")
    return data


_IMAGES_SUFFIX = "_images_png.pkl"
_cache_lock = threading.Lock()
_cached: dict[tuple[str, int, int], list | tuple | np.ndarray] = {}  # at most one split's images pickle


def _cached_images(img_path: str) -> list | tuple | np.ndarray:
    """The images pickle at ``img_path``, read (and checked against its labels) once and kept for the
    next :meth:`_TieredImageNet.decode` call; one pickle is kept at a time (the previous one is
    dropped before the next is read), and its size and modification time are in the key."""
    name = Path(img_path).name
    if not name.endswith(_IMAGES_SUFFIX):
        raise MtftError(f"not a tieredImageNet images pickle: {img_path} (expected <split>{_IMAGES_SUFFIX}#<row>)")
    try:
        st = os.stat(img_path)
    except OSError as e:
        raise MtftError(f"cannot read {img_path}: {e.strerror or e}") from None
    key = (img_path, st.st_size, st.st_mtime_ns)
    with _cache_lock:
        if key not in _cached:
            _cached.clear()
            lab_path = Path(img_path).with_name(name.removesuffix(_IMAGES_SUFFIX) + "_labels.pkl")
            _cached[key] = _read_images(Path(img_path), lab_path)
        return _cached[key]


class _TieredImageNet:
    name = "tieredimagenet"
    Options = TieredImageNetOptions

    def fingerprint(self, options: TieredImageNetOptions, image_size: int, seed: int) -> str:
        root, splits = _split_files(options)
        h = hashlib.sha256(json.dumps([_VERSION, options.model_dump(exclude={"workers"}), image_size]).encode())
        h.update(_stat_key([p for _, img, lab in splits for p in (img, lab)], root))
        return h.hexdigest()[:16]

    def list_files(self, options: TieredImageNetOptions) -> list[tuple[str, str, str]]:
        """Every sample as ``(split, class name, "<root>/<split>_images_png.pkl#<row>")``, in ``build``'s order.

        Only the labels pickles are read here; that a split's images pickle holds as many images as
        its labels name is checked by :meth:`decode` when it first reads the pickle (the same error
        ``build`` raises), except for an empty split, checked here.
        """
        root, splits = _split_files(options)
        files = []
        for split, img_path, lab_path in splits:
            specific, names, _, _ = _read_labels(lab_path)
            if not len(specific):
                _read_images(img_path, lab_path, 0)
            files += [(split, names[specific[r]], f"{img_path}#{r}")
                      for r in _rows(specific, names, options.max_per_class)]
        return files

    def decode(self, file: str, image_size: int, options: TieredImageNetOptions) -> np.ndarray:
        """Row ``r`` of ``<split>_images_png.pkl#<r>``; the pickle is read once per process and kept
        (one at a time) for the next row."""
        img_path, r = archive_row(file, "tieredImageNet", f"<root>/<split>{_IMAGES_SUFFIX}#<row>")
        data = _cached_images(img_path)
        if r >= len(data):
            raise MtftError(f"{img_path} holds {len(data)} images, so no row {r}")
        return _decode_bytes(_as_bytes(data[r]), image_size, file)

    def store_meta(self, options: TieredImageNetOptions) -> dict:
        """What ``data prepare`` keeps in a prepared store's header beside the samples: each
        class's ImageNet category and the published split (read from the labels pickles only)."""
        _, splits = _split_files(options)
        general_of = {}
        for split, _, lab_path in splits:
            specific, names, general, general_names = _read_labels(lab_path)
            for r in _rows(specific, names, options.max_per_class):
                general_of.setdefault(f"{split}/{names[specific[r]]}", general_names[general[r]])
        return {"general": general_of, "split": PUBLISHED_SPLIT}

    def build(self, options: TieredImageNetOptions, image_size: int, seed: int,
              progress: bool = False) -> SampleStore:
        root, splits = _split_files(options)
        images, keys, files, general_of = [], [], [], {}
        for split, img_path, lab_path in splits:
            specific, names, general, general_names = _read_labels(lab_path)
            data = _read_images(img_path, lab_path, len(specific))
            rows = _rows(specific, names, options.max_per_class)
            with ThreadPoolExecutor(options.workers) as pool:
                it = pool.map(lambda r: _decode_bytes(_as_bytes(data[r]), image_size, f"{img_path}#{r}"), rows)
                images += progress_bar(it, progress, total=len(rows), desc=f"decoding {split} images", unit="img")
            data = None  # this split's PNG bytes are freed before the next split's are read
            keys += [(split, names[specific[r]]) for r in rows]
            files += [f"{img_path.name}#{r}" for r in rows]
            for r in rows:
                general_of.setdefault(f"{split}/{names[specific[r]]}", general_names[general[r]])
        meta = {"source": self.name, "root": str(root.resolve()), "files": len(files), "general": general_of,
                "split": PUBLISHED_SPLIT}
        return build_store(images, keys, meta, files=files)


SOURCE = register(_TieredImageNet())
