"""The folder source's decoding changes no pixel silently: deep, transparent and non-RGB images,
PIL's pixel limit, unreadable files, non-UTF-8 folder names and symlink loops (issue #16)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mtft_ray.config import load_config
from mtft_ray.config.sources import FolderOptions
from mtft_ray.data.sources.folder import SOURCE, _decode, _list_files
from mtft_ray.errors import MtftError

WHITE = (255, 255, 255)


def decode(path: Path, size: int = 4, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    return _decode(path, size, background).astype(int)


def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def write_png16(path: Path, a: np.ndarray) -> Path:
    """``a`` (H, W, 3 or 4) uint16 as a 16-bit RGB(A) PNG (PIL writes 16-bit grey only)."""
    h, w, c = a.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in a)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b""))
    return path


def tree(root: Path, n: int = 2) -> Path:
    """root/dom/cls/<i>.png, ``n`` small RGB images."""
    for i in range(n):
        save(Image.new("RGB", (8, 8), (10 * i, 20, 30)), root / "dom" / "cls" / f"{i}.png")
    return root


# ordinary 8-bit images: as before

def test_8bit_rgb_and_grey_are_unchanged(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    p = save(Image.fromarray(rgb), tmp_path / "rgb.png")
    # the previous pipeline: convert("RGB"), shorter side to size (bicubic), centre crop
    small = Image.fromarray(rgb).resize((21, 16), Image.BICUBIC).crop((2, 0, 18, 16))
    assert np.array_equal(_decode(p, 16, WHITE), np.asarray(small))
    assert np.array_equal(_decode(p, 30, WHITE), rgb[:, 5:35])  # no resize: exact pixels
    grey = save(Image.new("L", (4, 4), 77), tmp_path / "l.png")
    assert (decode(grey) == 77).all()
    bw = save(Image.new("1", (4, 4), 1), tmp_path / "bw.png")
    assert (decode(bw) == 255).all()


# 16-bit, 32-bit and float images are scaled, not clipped

def test_16bit_grey_keeps_its_high_byte(tmp_path):
    a = np.array([[0, 0x8000], [0x4000, 0xFFFF]], np.uint16)
    p = save(Image.fromarray(a), tmp_path / "g16.png")
    assert Image.open(p).mode == "I;16"
    assert decode(p, 2)[..., 0].tolist() == [[0, 128], [64, 255]]
    be = save(Image.frombytes("I;16B", (2, 2), a.astype(">u2").tobytes()), tmp_path / "g16b.tif")
    assert Image.open(be).mode == "I;16B" and decode(be, 2)[..., 0].tolist() == [[0, 128], [64, 255]]


def test_16bit_rgb_keeps_its_high_byte(tmp_path):
    a = np.zeros((2, 2, 3), np.uint16)
    a[..., 0], a[..., 1], a[..., 2] = 0x8000, 0xFFFF, 0x01FF
    p = write_png16(tmp_path / "rgb16.png", a)
    assert (decode(p, 2) == [128, 255, 1]).all()


def test_32bit_integer_grey(tmp_path):
    p = save(Image.fromarray(np.full((2, 2), 40000, np.int32)), tmp_path / "i.tif")
    assert Image.open(p).mode == "I" and (decode(p, 2) == 40000 >> 8).all()
    wide = save(Image.fromarray(np.array([[-1000, 0], [1000, 99000]], np.int32)), tmp_path / "wide.tif")
    assert decode(wide, 2)[..., 0].tolist() == [[0, 3], [5, 255]]  # out of 0..65535: min..max stretched


def test_float_grey(tmp_path):
    p = save(Image.fromarray(np.array([[0, 0.5], [0.25, 1]], np.float32)), tmp_path / "f.tif")
    assert Image.open(p).mode == "F" and decode(p, 2)[..., 0].tolist() == [[0, 128], [64, 255]]
    wide = save(Image.fromarray(np.array([[-2, 0], [2, 6]], np.float32)), tmp_path / "wide.tif")
    assert decode(wide, 2)[..., 0].tolist() == [[0, 64], [128, 255]]


# transparency is composited onto the background

def test_transparent_pixels_become_the_background_and_half_transparent_ones_blend(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)  # hidden colour black
    rgba[0, 1, 3], rgba[1, 0, 3], rgba[1, 1] = 255, 128, (200, 100, 0, 255)
    p = save(Image.fromarray(rgba), tmp_path / "rgba.png")
    out = decode(p, 2)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent: background
    assert out[0, 1].tolist() == [0, 0, 0] and out[1, 1].tolist() == [200, 100, 0]  # opaque: itself
    assert np.abs(out[1, 0] - 127).max() <= 1  # 128/255 black over white
    red = decode(p, 2, (255, 0, 0))
    assert red[0, 0].tolist() == [255, 0, 0] and np.abs(red[1, 0] - [127, 0, 0]).max() <= 1


def test_grey_alpha_palette_and_key_transparency(tmp_path):
    la = save(Image.fromarray(np.zeros((2, 2, 2), np.uint8), "LA"), tmp_path / "la.png")
    assert (decode(la, 2, (0, 0, 255)) == [0, 0, 255]).all()
    pal = Image.new("P", (2, 2), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    pal.putpixel((1, 1), 1)
    for name in ("p.png", "p.gif"):
        out = decode(save(pal, tmp_path / name, transparency=0), 2, (0, 0, 255))
        assert out[0, 0].tolist() == [0, 0, 255] and out[1, 1].tolist() == [255, 0, 0]
    g16 = save(Image.fromarray(np.array([[0x8000, 0x1234]] * 2, np.uint16)), tmp_path / "g16t.png", transparency=0x1234)
    assert decode(g16, 2, (0, 0, 255))[0].tolist() == [[128, 128, 128], [0, 0, 255]]


def test_cmyk_and_grey_become_rgb(tmp_path):
    cmyk = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=100)
    assert Image.open(cmyk).mode == "CMYK" and np.abs(decode(cmyk) - [255, 0, 0]).max() <= 2
    grey = save(Image.new("CMYK", (8, 8), (0, 0, 0, 128)), tmp_path / "k.jpg", quality=100)
    assert np.abs(decode(grey) - 127).max() <= 2


def test_background_is_validated_and_part_of_the_fingerprint(tmp_path):
    tree(tmp_path / "data")
    fp = {bg: SOURCE.fingerprint(FolderOptions(root=str(tmp_path / "data"), background=bg), 8, 0)
          for bg in ("white", (255, 255, 255), "#ffffff", "black")}
    assert fp["white"] == fp[(255, 255, 255)] == fp["#ffffff"] != fp["black"]
    assert FolderOptions(background=[1, 2, 3]).background == (1, 2, 3)
    for bad in ("no-such-colour", [1, 2], [0, 0, 256]):
        with pytest.raises(MtftError, match="background"):
            load_config(None, ["data.source=folder", f"data.options.background={bad!r}"])


def test_build_composites_onto_the_configured_background(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    save(Image.fromarray(rgba), tmp_path / "data" / "dom" / "cls" / "0.png")
    store = SOURCE.build(FolderOptions(root=str(tmp_path / "data"), background="lime", workers=1), 8, 0)
    assert (store.images == [0, 255, 0]).all()


# errors: one line naming the path

@pytest.mark.parametrize("side", [20, 12])  # 400 px: PIL's error; 144 px: PIL's warning, made an error
def test_image_over_the_pixel_limit_is_one_error(tmp_path, monkeypatch, recwarn, side):
    root = tree(tmp_path / "data", n=1)
    big = save(Image.new("RGB", (side, side)), root / "dom" / "cls" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(MtftError) as e:
        SOURCE.build(FolderOptions(root=str(root), workers=2), 8, 0)
    msg = str(e.value)
    assert str(big) in msg and f"{side * side} pixels" in msg and "MAX_IMAGE_PIXELS" in msg and "\n" not in msg
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_truncated_and_corrupt_images_are_one_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), tmp_path / "a.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image")
    for name, reason in (("cut.png", "truncated"), ("junk.png", "cannot identify")):
        with pytest.raises(MtftError, match=f"unreadable image {tmp_path / name}: .*{reason}"):
            _decode(tmp_path / name, 8, WHITE)


def test_non_utf8_folder_name_is_an_error_while_listing(tmp_path):
    root = tree(tmp_path / "data")
    bad = os.fsencode(root) + b"/dom/\xff\xfe"
    os.mkdir(bad)
    shutil.copy(root / "dom" / "cls" / "0.png", bad + b"/0.png")
    opt = FolderOptions(root=str(root))
    for fn in (lambda: _list_files(opt), lambda: SOURCE.fingerprint(opt, 8, 0)):
        with pytest.raises(MtftError, match=r"not UTF-8: .*/dom/\\xff\\xfe") as e:
            fn()
        assert str(e.value).isascii()


def test_non_utf8_file_name_is_fine(tmp_path):
    root = tree(tmp_path / "data")
    shutil.copy(root / "dom" / "cls" / "0.png", os.fsencode(root) + b"/dom/cls/\xff.png")
    opt = FolderOptions(root=str(root))
    assert len(_list_files(opt)) == 3 and len(SOURCE.fingerprint(opt, 8, 0)) == 16


def test_symlink_loops_are_skipped_and_other_symlinks_followed(tmp_path):
    root = tree(tmp_path / "data")
    os.symlink(root, root / "loop")  # domain -> root
    os.symlink("..", root / "dom" / "up")  # class -> its domain
    os.symlink("../..", root / "dom" / "top")  # class -> root
    os.symlink(".", root / "dom" / "cls" / "self")  # inside a class, no image extension: ignored
    os.symlink("dom", root / "alias")  # a second domain, the same folder: followed
    files = [(d, c, p.name) for d, c, p in _list_files(FolderOptions(root=str(root)))]
    assert files == [(d, "cls", f"{i}.png") for d in ("alias", "dom") for i in (0, 1)]
    os.symlink("missing.png", root / "dom" / "cls" / "dangling.png")
    with pytest.raises(MtftError, match=f"not an image file: {root}/(alias|dom)/cls/dangling.png"):
        SOURCE.fingerprint(FolderOptions(root=str(root)), 8, 0)


def test_cli_reports_a_non_utf8_folder_in_one_line(tmp_path):
    root = tree(tmp_path / "data")
    os.mkdir(os.fsencode(root) + b"/dom/\xff")
    shutil.copy(root / "dom" / "cls" / "0.png", os.fsencode(root) + b"/dom/\xff/0.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"source": "folder", "options": {"root": str(root)}}}))
    env = {**os.environ, "MTFT_RAY_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", "run", str(cfg), "--out", str(tmp_path / "out")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 2, r.stderr
    line = f"mtft-ray: error: folder name is not UTF-8: {root}/dom/\\xff (class and domain names are stored as text"
    assert r.stderr.strip().splitlines() == [line + ": rename it)"]
