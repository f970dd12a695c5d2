"""The ``domainnet`` source: DomainNet (Peng et al., 2019) in its published layout.

``root`` holds the images ``<domain>/<class>/<file>.jpg`` and, per domain, the split lists
``<domain>_train.txt`` and ``<domain>_test.txt``: one image a line, its path relative to ``root``
and its integer label (``clipart/aircraft_carrier/clipart_001_000018.jpg 0``). The lists are the
source of truth: ``images`` picks which are read (``train``, ``test`` or ``all``), files on disk
that no list names are ignored, and a listed file that is missing stops the build naming it.

A domain is a DomainNet domain (clipart, infograph, painting, quickdraw, real, sketch), a class
its folder name; images are decoded like ``folder``'s (:func:`mtft_ray.data.sources.folder._decode`).

Example:
    data:
      source: domainnet
      options: {root: /data/domainnet, images: all, max_per_class: 100}
      split: {by: domain, target_domains: [sketch], val_domains: [quickdraw]}
"""

from __future__ import annotations

import hashlib
import json
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mtft_ray.config.sources import DomainNetOptions
from mtft_ray.data.sources.folder import _decode, _shown
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 1
_LISTS = {"train": ("train",), "test": ("test",), "all": ("train", "test")}


def _domains(root: Path, opt: DomainNetOptions) -> list[str]:
    """The domains to read: ``opt.domains``, or every one with a split list that ``opt.images`` reads."""
    if opt.domains is not None:
        return sorted(set(opt.domains))
    found = sorted({p.name[: -len(f"_{s}.txt")] for s in _LISTS[opt.images] for p in root.glob(f"*_{s}.txt")
                    if p.is_file()})
    if not found:
        names = " and ".join(f"<domain>_{s}.txt" for s in _LISTS[opt.images])
        raise MtftError(f"no DomainNet split lists ({names}) in {root}")
    return found


def _read_list(path: Path, domain: str) -> list[tuple[str, str]]:
    """``(class, path relative to root)`` of each line of a split list."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MtftError(f"cannot read {path}: {e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        rel = parts[0].strip() if len(parts) == 2 else ""
        segs = rel.split("/")
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit() or len(segs) != 3 or segs[0] != domain:
            raise MtftError(f"{path}:{n}: expected '{domain}/<class>/<file> <label>', got {line.strip()!r}")
        out.append((segs[1], rel))
    return out


def _list_files(opt: DomainNetOptions) -> tuple[Path, list[tuple[str, str, str]]]:
    """The root and ``(domain, class, path relative to root)`` of every listed image, sorted, each
    checked to exist."""
    if not opt.root:
        raise MtftError("data source 'domainnet' needs data.options.root (a directory with <domain>/<class>/<images> "
                        "and <domain>_train.txt, <domain>_test.txt)")
    root = Path(opt.root).expanduser()
    if not root.is_dir():
        raise MtftError(f"data root not found: {root} (data.options.root)")
    files = []
    for domain in _domains(root, opt):
        by_class: dict[str, set[str]] = {}
        listed_in = {}
        for split in _LISTS[opt.images]:
            path = root / f"{domain}_{split}.txt"
            if not path.is_file():
                raise MtftError(f"DomainNet split list missing: {path} (data.options.images: {opt.images} reads "
                                + " and ".join(f"<domain>_{s}.txt" for s in _LISTS[opt.images]) + ")")
            for cls, rel in _read_list(path, domain):
                by_class.setdefault(cls, set()).add(rel)
                listed_in.setdefault(rel, path)
        for cls in sorted(by_class):
            for rel in sorted(by_class[cls])[: opt.max_per_class]:
                if not (root / rel).is_file():
                    raise MtftError(f"image listed in {listed_in[rel]} not found: {_shown(root / rel)}")
                files.append((domain, cls, rel))
    if not files:
        raise MtftError(f"the DomainNet split lists in {root} name no images")
    return root, files


class _DomainNet:
    name = "domainnet"
    Options = DomainNetOptions

    def fingerprint(self, options: DomainNetOptions, image_size: int, seed: int) -> str:
        root, files = _list_files(options)
        h = hashlib.sha256(json.dumps([_VERSION, options.model_dump(exclude={"workers"}), image_size]).encode())
        lists = sorted({f"{d}_{s}.txt" for d, _, _ in files for s in _LISTS[options.images]})
        for rel in lists + [rel for *_, rel in files]:
            st = (root / rel).stat()
            h.update(f"{rel}:{st.st_size}:{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def list_files(self, options: DomainNetOptions) -> list[tuple[str, str, str]]:
        root, files = _list_files(options)
        return [(d, c, str(root / rel)) for d, c, rel in files]

    def decode(self, file: str, image_size: int, options: DomainNetOptions) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one error line, not a warning
            return _decode(Path(file), image_size, options.background)

    def build(self, options: DomainNetOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        root, files = _list_files(options)
        with warnings.catch_warnings(), ThreadPoolExecutor(options.workers) as pool:
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one error line, not a warning
            it = pool.map(lambda f: _decode(root / f[2], image_size, options.background), files)
            images = list(progress_bar(it, progress, total=len(files), desc="decoding images", unit="img"))
        meta = {"source": self.name, "root": str(root.resolve()), "images": options.images, "files": len(files)}
        return build_store(images, [(d, c) for d, c, _ in files], meta, files=[rel for *_, rel in files])


SOURCE = register(_DomainNet())
