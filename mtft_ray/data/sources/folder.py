"""The ``folder`` source: a tree ``root/<domain>/<class>/<image files>`` on local disk.

Every image is decoded once, resized (shorter side to ``image_size``, centre crop) to RGB
uint8 and kept in the store; a tree with a single domain is fine (``root/all/<class>/...``).
Decoding clips or drops nothing silently (:func:`_to_rgb` states the rules): 16-bit and float images
are scaled to 8 bits, transparency is composited onto ``options.background``, and a file that
cannot be decoded, an image over PIL's pixel limit or a folder name that is not UTF-8 stops the
build with one line naming the path.

Example:
    data:
      source: folder
      options: {root: /data/domainnet, background: white}
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mtft_ray.config.sources import FolderOptions
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 2  # 2: 16-bit, float and transparent images decoded by _to_rgb's rules
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "PA"}


def _shown(path: Path) -> str:
    """``path`` with the bytes that are not UTF-8 as backslash escapes (``dom/\\xff\\xfe``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _subdirs(parent: Path) -> list[Path]:
    """The directories in ``parent``, sorted, except symlinks to ``parent`` itself or a folder above it.

    Raises:
        MtftError: a directory's name is not UTF-8 (it would become a class or domain name).
    """
    dirs = []
    for p in sorted(parent.iterdir()):
        if not p.is_dir() or (p.is_symlink() and parent.resolve().is_relative_to(p.resolve())):
            continue
        try:
            p.name.encode()
        except UnicodeEncodeError:
            raise MtftError(f"folder name is not UTF-8: {_shown(p)} (class and domain names are stored as "
                            f"text: rename it)") from None
        dirs.append(p)
    return dirs


def _list_files(opt: FolderOptions) -> list[tuple[str, str, Path]]:
    """``(domain, class, path)`` of every image, sorted, after checking the tree's shape.

    Domains and classes are the directories one and two levels below the root, symlinks
    followed, except a symlink back to its own folder or one above it (a loop: skipped). An entry
    with an image extension that is not a file (a directory, a dangling or looping symlink) is an
    error, as is a domain or class name that is not UTF-8; both are found here, before decoding.
    """
    if not opt.root:
        raise MtftError("data source 'folder' needs data.options.root (a directory root/<domain>/<class>/<images>)")
    if opt.root.startswith("s3://"):
        return _list_s3(opt)
    root = Path(opt.root).expanduser()
    if not root.is_dir():
        raise MtftError(f"data root not found: {root} (data.options.root)")
    exts = {e.lower() for e in opt.extensions}
    files = []
    for domain in _subdirs(root):
        for cls in _subdirs(domain):
            imgs = sorted(p for p in cls.iterdir() if p.suffix.lower() in exts)[: opt.max_per_class]
            for p in imgs:
                if not p.is_file():
                    raise MtftError(f"not an image file: {_shown(p)} (a directory, or a dangling or looping symlink)")
            files += [(domain.name, cls.name, p) for p in imgs]
    if not files:
        raise MtftError(f"no images ({', '.join(sorted(exts))}) found under {root}/<domain>/<class>/")
    return files


def read_object(uri: str) -> bytes:
    """The bytes of the S3 object ``uri`` (one GET; endpoint from the AWS environment)."""
    from mtft_ray.data.nodecache import s3_client, s3_reason, split_uri

    bucket, key = split_uri(uri)
    try:
        return s3_client(None, None).get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as e:
        raise MtftError(f"reading {uri} failed: {s3_reason(e)}") from None


def _list_s3(opt: FolderOptions) -> list[tuple[str, str, str]]:
    """``(domain, class, s3://bucket/key)`` of every image under an ``s3://`` root, sorted by key
    (``mtft-ray data prepare`` reads them in its tasks; ``build`` needs a local root)."""
    from mtft_ray.data.nodecache import s3_client, s3_reason, split_uri

    bucket, prefix = split_uri(opt.root)
    exts, files, per_class = {e.lower() for e in opt.extensions}, [], {}
    try:
        pages = s3_client(None, None).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
        keys = sorted(o["Key"] for page in pages for o in page.get("Contents", []))
    except Exception as e:
        raise MtftError(f"cannot list data root {opt.root}: {s3_reason(e)}") from None
    for key in keys:
        parts = key[len(prefix.rstrip("/")) + 1:].split("/")
        if len(parts) != 3 or Path(parts[2]).suffix.lower() not in exts:
            continue
        n = per_class.setdefault((parts[0], parts[1]), 0)
        if opt.max_per_class is None or n < opt.max_per_class:
            per_class[(parts[0], parts[1])] = n + 1
            files.append((parts[0], parts[1], f"s3://{bucket}/{key}"))
    if not files:
        raise MtftError(f"no images ({', '.join(sorted(exts))}) found under {opt.root}/<domain>/<class>/")
    return files


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Integer or float grey values as uint8 (the rules are :func:`_to_rgb`'s)."""
    if a.dtype.kind == "f":
        a = np.where(np.isfinite(a), a, 0)
    lo, hi = a.min(), a.max()
    if a.dtype.kind in "iu" and 0 <= lo and hi <= 0xFFFF:
        return (a >> 8).astype(np.uint8)
    if a.dtype.kind == "f" and 0 <= lo and hi <= 1:
        return np.round(a * 255).astype(np.uint8)
    span = float(hi) - float(lo)
    return np.round((a.astype(np.float64) - lo) * (255 / span if span else 0)).astype(np.uint8)


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """``im`` as 8-bit RGB, by these rules:

    - 16-bit and 32-bit integer grey (modes ``I;16*``, ``I``): values in 0..65535 are 16-bit
      and keep their high byte (``v >> 8``, as PIL itself reads 16-bit RGB), so 0x8000 is 128;
      values outside that range are stretched from the image's min..max to 0..255.
    - Float grey (``F``): values in [0, 1] are ``round(255 * v)``; any other range is stretched
      from the image's min..max (non-finite values count as 0). A constant stretched image is 0.
    - Transparency (an alpha band, or a transparency key of a palette, grey or RGB image) is
      composited onto ``background``: ``alpha * pixel + (1 - alpha) * background``.
    - Every other mode (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``)
      through PIL's ``convert("RGB")``; 8-bit RGB comes out unchanged.
    """
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        a, key = np.asarray(im), im.info.get("transparency")
        im = Image.fromarray(_to_uint8(a))
        if isinstance(key, int):
            im = Image.merge("LA", (im, Image.fromarray(np.where(a == key, 0, 255).astype(np.uint8))))
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, (*background, 255)), im.convert("RGBA"))
    return im.convert("RGB")


def fit(im: Image.Image, size: int) -> np.ndarray:
    """``im`` as ``(size, size, ...)`` uint8: shorter side to ``size`` (bicubic), then centre crop."""
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _decode(path: Path | io.BytesIO, size: int, background: tuple[int, int, int], name: str | None = None) -> np.ndarray:
    """The image at ``path`` (or in a bytes buffer, called ``name`` in messages) as
    ``(size, size, 3)`` uint8: :func:`_to_rgb`, then resize and centre crop.

    Raises:
        MtftError: the file is not a readable image, or it has more pixels than PIL's
            decompression-bomb limit ``PIL.Image.MAX_IMAGE_PIXELS`` (up to twice the limit PIL
            only warns: :meth:`_Folder.build` makes that warning this error too).
    """
    try:
        with Image.open(path) as im:
            return fit(_to_rgb(im, background), size)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MtftError(f"image too large {name or _shown(path)}: {str(e).split(',')[0]} (PIL's guard against "
                        f"decompression bombs, PIL.Image.MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = str(e).replace(f"'{path}'", "").strip(" :") or type(e).__name__
        if name:
            reason = reason.split(" <_io.BytesIO")[0].replace("image file", "image")
        raise MtftError(f"unreadable image {name or _shown(path)}: {reason}") from None


class _Folder:
    name = "folder"
    Options = FolderOptions

    def fingerprint(self, options: FolderOptions, image_size: int, seed: int) -> str:
        h = hashlib.sha256(json.dumps([_VERSION, options.model_dump(), image_size]).encode())
        if options.root.startswith("s3://"):  # keys (their listing order) name the objects
            h.update("\n".join(f for _, _, f in _list_files(options)).encode())
            return h.hexdigest()[:16]
        for d, c, p in _list_files(options):
            st = p.stat()
            h.update(f"{d}/{c}/{p.name}:{st.st_size}:{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
        return h.hexdigest()[:16]

    def list_files(self, options: FolderOptions) -> list[tuple[str, str, str]]:
        return [(d, c, str(p)) for d, c, p in _list_files(options)]

    def decode(self, file: str, image_size: int, options: FolderOptions) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one error line, not a warning
            if file.startswith("s3://"):
                return _decode(io.BytesIO(read_object(file)), image_size, options.background, name=file)
            return _decode(Path(file), image_size, options.background)

    def build(self, options: FolderOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        if options.root.startswith("s3://"):
            raise MtftError(f"a folder in S3 ({options.root}) is read by `mtft-ray data prepare CONFIG --out URI`; "
                            f"then use data.source: store with that URI")
        files = _list_files(options)
        with warnings.catch_warnings(), ThreadPoolExecutor(options.workers) as pool:
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # one error line, not a warning
            it = pool.map(lambda f: _decode(f[2], image_size, options.background), files)
            images = list(progress_bar(it, progress, total=len(files), desc="decoding images", unit="img"))
        root = Path(options.root).expanduser()
        meta = {"source": "folder", "root": str(root.resolve()), "files": len(files)}
        return build_store(images, [(d, c) for d, c, _ in files], meta,
                           files=[_shown(p.relative_to(root)) for _, _, p in files])


SOURCE = register(_Folder())
