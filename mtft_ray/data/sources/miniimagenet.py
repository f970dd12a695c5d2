"""The ``miniimagenet`` source: miniImageNet (Vinyals et al.; Ravi & Larochelle's class split) as published.

Two layouts are read, both with 64 / 16 / 20 classes in ``train`` / ``val`` / ``test``:

- ``format: csv``: ``train.csv``, ``val.csv``, ``test.csv`` (header ``filename,label``, the
  label a WordNet id) and the images in ``images/<filename>``: a file source, each image decoded
  like ``folder``'s.
- ``format: pkl``: ``mini-imagenet-cache-{train,val,test}.pkl``, each a dict
  ``{"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [row, ...]}}``, read in-process;
  images are resized (shorter side, bicubic) and centre-cropped only when ``image_size`` is not
  their size. Pickles are read by an unpickler that builds nothing but numpy arrays, lists,
  dicts, strings and numbers, so a tampered file is an error, not code run.

A split is a domain (``train``, ``val``, ``test``) and a class its WordNet id, so the published
class split is ``data.split`` by domain.

Example:
    data:
      source: miniimagenet
      options: {root: /data/miniimagenet}
      image_size: 84
      split: {by: domain, target_domains: [test], val_domains: [val]}
"""

from __future__ import annotations

import codecs
import collections
import csv
import functools
import hashlib
import io
import json
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mtft_ray.config.sources import MiniImageNetOptions
from mtft_ray.data.sources.folder import _decode, fit
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 1
SPLITS = ("train", "val", "test")
_WHITE = (255, 255, 255)


# -- shared by the readers of published archives (tieredimagenet, metadataset) -------------------

_ARRAY = np.zeros(1)
_NUMPY_GLOBALS = {"_reconstruct": _ARRAY.__reduce__()[0], "scalar": np.float64(0).__reduce__()[0],
                  "_frombuffer": _ARRAY.__reduce_ex__(5)[0], "ndarray": np.ndarray, "dtype": np.dtype}
_NUMPY_MODULES = {"numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                  "numpy._core.numeric"}
_OTHER_GLOBALS = {("_codecs", "encode"): codecs.encode,  # bytes in protocol-2 pickles written by Python 3
                  ("collections", "OrderedDict"): collections.OrderedDict}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that reconstructs numpy arrays and plain containers and refuses every other global.

    ``encoding="latin1"`` reads Python 2 pickles of numpy arrays (numpy's advice); their byte
    strings then arrive as ``str`` (:func:`_as_bytes` turns them back).
    """

    def find_class(self, module: str, name: str):
        if module in _NUMPY_MODULES and name in _NUMPY_GLOBALS:
            return _NUMPY_GLOBALS[name]
        if (module, name) in _OTHER_GLOBALS:
            return _OTHER_GLOBALS[module, name]
        raise pickle.UnpicklingError(f"it asks for {module}.{name}; only numpy arrays and plain containers are read")


def _load_pickle(path: Path) -> object:
    """The object in the pickle at ``path``, built by :class:`_ArrayUnpickler`.

    Raises:
        MtftError: the file cannot be read or holds anything but arrays, containers and scalars.
    """
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except OSError as e:
        raise MtftError(f"cannot read {path}: {e.strerror or e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise MtftError(f"unreadable pickle {path}: {str(e) or type(e).__name__}") from None


def _text(x: object) -> str:
    """A name read from a pickle (``str``, or ``bytes`` from Python 2) as text."""
    return x.decode("utf-8", "backslashreplace") if isinstance(x, bytes) else str(x)


def _as_bytes(x: object) -> bytes:
    """Encoded image bytes as pickled: ``bytes``, a uint8 array of them, or a Python 2 ``str`` read as latin-1."""
    if isinstance(x, np.ndarray):
        return x.tobytes()
    if isinstance(x, str):
        return x.encode("latin1")
    return bytes(x)


def _fit_array(a: np.ndarray, size: int) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image at ``size`` (:func:`~mtft_ray.data.sources.folder.fit`; unchanged when already ``size`` x ``size``)."""
    if a.shape[:2] == (size, size):
        return np.array(a, np.uint8)
    return fit(Image.fromarray(a), size)


def _decode_bytes(data: bytes, size: int, where: str) -> np.ndarray:
    """An encoded image (PNG, JPEG, ...) as ``(size, size, 3)`` uint8 by ``folder``'s rules
    (transparency onto white); a bad image is one MtftError line naming ``where``."""
    return _decode(io.BytesIO(data), size, _WHITE, name=where)


def archive_row(file: str, what: str, expected: str) -> tuple[str, int]:
    """``"<archive>#<row>"`` (a sample inside a pickle or TFRecord file) as ``(archive, row)``.

    Raises:
        MtftError: ``file`` is not of that form; the message names ``what`` and the ``expected`` form.
    """
    path, hash_, row = file.rpartition("#")
    if not hash_ or not row.isdigit():
        raise MtftError(f"not a {what} sample: {file} (expected {expected})")
    return path, int(row)


def _stat_key(paths: list[Path], root: Path) -> bytes:
    """Names, sizes and modification times of ``paths`` (relative to ``root``), for a fingerprint."""
    out = []
    for p in paths:
        st = p.stat()
        out.append(f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(out).encode("utf-8", "surrogateescape")


def _root(options, source: str, layout: str) -> Path:
    """``options.root`` as a path, checked to be a directory."""
    if not options.root:
        raise MtftError(f"data source {source!r} needs data.options.root (a directory holding {layout})")
    root = Path(options.root).expanduser()
    if not root.is_dir():
        raise MtftError(f"data root not found: {root} (data.options.root)")
    return root


# -- miniImageNet -------------------------------------------------------------------------------

def _pkl_name(split: str) -> str:
    return f"mini-imagenet-cache-{split}.pkl"


def _layout(opt: MiniImageNetOptions) -> tuple[Path, str]:
    """The root and the layout (``csv`` or ``pkl``) to read, every file it needs checked to be there."""
    root = _root(opt, "miniimagenet", "train.csv, val.csv, test.csv and images/, or mini-imagenet-cache-*.pkl")
    fmt = opt.format
    if fmt == "auto":
        if any((root / f"{s}.csv").exists() for s in SPLITS):
            fmt = "csv"
        elif any((root / _pkl_name(s)).exists() for s in SPLITS):
            fmt = "pkl"
        else:
            raise MtftError(f"no miniImageNet in {root}: expected train.csv, val.csv, test.csv and images/ "
                            f"(Ravi & Larochelle) or mini-imagenet-cache-{{train,val,test}}.pkl")
    for s in SPLITS:
        p = root / (f"{s}.csv" if fmt == "csv" else _pkl_name(s))
        if not p.is_file():
            raise MtftError(f"miniImageNet split file missing: {p} (format {fmt}: one file per split train, val, test)")
    return root, fmt


def _read_csv(path: Path) -> list[tuple[str, str]]:
    """``(filename, wnid)`` of each row of a Ravi & Larochelle split file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise MtftError(f"cannot read {path}: {e}") from None
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise MtftError(f"{path}: expected the header 'filename,label', got {got!r}")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise MtftError(f"{path}:{n}: expected 'filename,label', got {','.join(row)!r}")
        out.append((row[0].strip(), row[1].strip()))
    return out


def _csv_files(root: Path, opt: MiniImageNetOptions) -> list[tuple[str, str, str]]:
    """``(split, wnid, path relative to root)`` of every listed image, sorted, each checked to exist."""
    files = []
    for split in SPLITS:
        csv_path = root / f"{split}.csv"
        by_class: dict[str, list[str]] = collections.defaultdict(list)
        for name, wnid in _read_csv(csv_path):
            by_class[wnid].append(f"images/{name}")
        for wnid in sorted(by_class):
            for rel in sorted(set(by_class[wnid]))[: opt.max_per_class]:
                if not (root / rel).is_file():
                    raise MtftError(f"image listed in {csv_path} not found: {root / rel}")
                files.append((split, wnid, rel))
    return files


def _read_cache(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``image_data`` and ``class_dict`` (wnid: rows) of a mini-imagenet-cache pickle, checked."""
    d = _load_pickle(path)
    d = {_text(k): v for k, v in d.items()} if isinstance(d, dict) else d
    if not isinstance(d, dict) or not {"image_data", "class_dict"} <= set(d):
        raise MtftError(f"{path}: expected a dict with 'image_data' and 'class_dict' (the mini-imagenet-cache "
                        f"layout), got {type(d).__name__}" + (f" with keys {sorted(d)}" if isinstance(d, dict) else ""))
    images = d["image_data"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        what = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise MtftError(f"{path}: image_data must be a uint8 array (N, H, W, 3), got {what}")
    if not isinstance(d["class_dict"], dict):
        raise MtftError(f"{path}: class_dict must be a dict {{wnid: [row, ...]}}, got {type(d['class_dict']).__name__}")
    classes = {}
    for wnid, rows in d["class_dict"].items():
        try:
            rows = np.sort(np.asarray(rows, np.int64).reshape(-1))
        except (TypeError, ValueError):
            raise MtftError(f"{path}: class_dict[{_text(wnid)!r}] must be a list of row numbers") from None
        if len(rows) and (rows[0] < 0 or rows[-1] >= len(images)):
            raise MtftError(f"{path}: class {_text(wnid)} lists row {rows[-1] if rows[-1] >= 0 else rows[0]}, "
                            f"but image_data has {len(images)} rows")
        classes[_text(wnid)] = rows
    return images, classes


@functools.lru_cache(maxsize=1)
def _cached_cache(path: str, file_size: int, mtime_ns: int) -> np.ndarray:
    """A cache pickle's ``image_data``, kept for the next :meth:`_MiniImageNet.decode` call; the file's size
    and modification time are in the key, so a changed file is read again."""
    return _read_cache(Path(path))[0]


class _MiniImageNet:
    name = "miniimagenet"
    Options = MiniImageNetOptions

    def fingerprint(self, options: MiniImageNetOptions, image_size: int, seed: int) -> str:
        root, fmt = _layout(options)
        h = hashlib.sha256(json.dumps([_VERSION, fmt, options.model_dump(exclude={"workers", "format"}),
                                       image_size]).encode())
        if fmt == "csv":
            paths = [root / f"{s}.csv" for s in SPLITS] + [root / rel for _, _, rel in _csv_files(root, options)]
        else:
            paths = [root / _pkl_name(s) for s in SPLITS]
        h.update(_stat_key(paths, root))
        return h.hexdigest()[:16]

    def list_files(self, options: MiniImageNetOptions) -> list[tuple[str, str, str]]:
        """Every sample as ``(split, wnid, file)``: an image path (csv layout) or ``<pickle>#<row>``.

        The pkl layout is listed too, so that ``mtft-ray data prepare`` can shard it; :meth:`decode`
        then reads a row from the pickle, kept loaded for the next row of the same file.
        """
        root, fmt = _layout(options)
        if fmt == "csv":
            return [(s, c, str(root / rel)) for s, c, rel in _csv_files(root, options)]
        return [(s, c, f"{root / _pkl_name(s)}#{row}") for s, c, row in self._pkl_rows(root, options)]

    def decode(self, file: str, image_size: int, options: MiniImageNetOptions) -> np.ndarray:
        path, hash_, row = file.rpartition("#")
        if hash_ and path.endswith(".pkl") and row.isdigit():
            st = os.stat(path)
            return _fit_array(_cached_cache(path, st.st_size, st.st_mtime_ns)[int(row)], image_size)
        return _decode(Path(file), image_size, _WHITE)

    def _pkl_rows(self, root: Path, opt: MiniImageNetOptions,
                  loaded: dict[str, np.ndarray] | None = None) -> list[tuple[str, str, int]]:
        """``(split, wnid, row)`` of every image in the pickles, sorted; their arrays into ``loaded``."""
        rows = []
        for split in SPLITS:
            images, classes = _read_cache(root / _pkl_name(split))
            if loaded is not None:
                loaded[split] = images
            rows += [(split, c, int(r)) for c in sorted(classes) for r in classes[c][: opt.max_per_class]]
        return rows

    def store_meta(self, options: MiniImageNetOptions) -> dict:
        """What a store records beside its samples: the published 64/16/20 split as ``data.split``."""
        return {"split": {"by": "domain", "target_domains": ["test"], "val_domains": ["val"]}}

    def build(self, options: MiniImageNetOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        root, fmt = _layout(options)
        meta = {"source": self.name, "root": str(root.resolve()), "format": fmt, **self.store_meta(options)}
        if fmt == "csv":
            files = _csv_files(root, options)
            with ThreadPoolExecutor(options.workers) as pool:
                it = pool.map(lambda f: _decode(root / f[2], image_size, _WHITE), files)
                images = list(progress_bar(it, progress, total=len(files), desc="decoding images", unit="img"))
            meta["files"] = len(files)
            return build_store(images, [(s, c) for s, c, _ in files], meta, files=[rel for _, _, rel in files])
        arrays: dict[str, np.ndarray] = {}
        rows = self._pkl_rows(root, options, arrays)
        it = (_fit_array(arrays[s][r], image_size) for s, _, r in rows)
        images = list(progress_bar(it, progress, total=len(rows), desc="resizing images", unit="img"))
        return build_store(images, [(s, c) for s, c, _ in rows], meta,
                           files=[f"{_pkl_name(s)}#{r}" for s, _, r in rows])


SOURCE = register(_MiniImageNet())
