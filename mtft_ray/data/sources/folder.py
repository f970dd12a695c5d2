"""The ``folder`` source: a tree ``root/<domain>/<class>/<image files>`` on local disk.

Every image is decoded once, resized (shorter side to ``image_size``, centre crop) to RGB
uint8 and kept in the store; a tree with a single domain is fine (``root/all/<class>/...``).

Example:
    data:
      source: folder
      options: {root: /data/domainnet}
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mtft_ray.config.sources import FolderOptions
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 1


def _list_files(opt: FolderOptions) -> list[tuple[str, str, Path]]:
    """``(domain, class, path)`` of every image, sorted, after checking the tree's shape."""
    if not opt.root:
        raise MtftError("data source 'folder' needs data.options.root (a directory root/<domain>/<class>/<images>)")
    root = Path(opt.root).expanduser()
    if not root.is_dir():
        raise MtftError(f"data root not found: {root} (data.options.root)")
    exts = {e.lower() for e in opt.extensions}
    files = []
    for domain in sorted(p for p in root.iterdir() if p.is_dir()):
        for cls in sorted(p for p in domain.iterdir() if p.is_dir()):
            imgs = sorted(p for p in cls.iterdir() if p.suffix.lower() in exts)
            files += [(domain.name, cls.name, p) for p in imgs[: opt.max_per_class]]
    if not files:
        raise MtftError(f"no images ({', '.join(sorted(exts))}) found under {root}/<domain>/<class>/")
    return files


def _decode(path: Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = size / min(w, h)
            im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = str(e).replace(f"'{path}'", "").strip(" :") or type(e).__name__
        raise MtftError(f"unreadable image {path}: {reason}") from None


class _Folder:
    name = "folder"
    Options = FolderOptions

    def fingerprint(self, options: FolderOptions, image_size: int, seed: int) -> str:
        h = hashlib.sha256(json.dumps([_VERSION, options.model_dump(), image_size]).encode())
        for d, c, p in _list_files(options):
            st = p.stat()
            h.update(f"{d}/{c}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    def build(self, options: FolderOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        files = _list_files(options)
        with ThreadPoolExecutor(options.workers) as pool:
            it = pool.map(lambda f: _decode(f[2], image_size), files)
            images = list(progress_bar(it, progress, total=len(files), desc="decoding images", unit="img"))
        meta = {"source": "folder", "root": str(Path(options.root).expanduser().resolve()), "files": len(files)}
        return build_store(images, [(d, c) for d, c, _ in files], meta)


SOURCE = register(_Folder())
