"""The built-in ``glyphs`` source: an Omniglot-like benchmark drawn from the machine's fonts.

A *domain* is a Unicode script (Latin, Greek, Arabic, Devanagari, Ethiopic, ...), a *class*
is one letter of it and a *sample* is that letter drawn in one font design (a font face:
Regular, Bold and Italic of a family are different designs) with handwriting-like noise:
a random affine map (rotation, shear, scale, shift), thicker or thinner strokes, and blur.
Images are dark glyphs on white, grayscale uint8.

Which letters count (all decided from the Unicode database, never from the fonts):

- names of the form ``<SCRIPT> [CAPITAL] LETTER|SYLLABLE|CHARACTER|SYLLABICS <NAME>`` in the
  categories Lu, Ll, Lo (no modifier letters, marks, digits or symbols), without a Unicode
  decomposition (no letters with diacritics, no compatibility or presentation forms) and
  with no ``WITH`` or ``SMALL`` in their name (CJK ideographs have other names and never
  count; Hangul's precomposed syllables are left out by name);
- one form per case pair, the one that starts a word: ``A`` not ``a``, but Georgian ``ა``
  (its capital Mtavruli ``Ა`` is a near-identical shape once scaled to the frame);
- in a script with case, letters without case (IPA clicks and the like) are left out;
- a few letters that render identical to another letter of their script (:data:`_LOOKALIKES`).

A letter becomes a class when at least ``min_designs`` font faces really draw it (the font's
cmap has it and its outline is neither empty nor the ``.notdef`` box), and a script is kept
when it has at least ``min_classes_per_script`` such classes.

Every sample's randomness comes from ``(seed, class, sample index)`` alone, so a store is
byte-for-byte reproducible for a seed and a set of fonts, and a class's images do not depend
on which other scripts are built.

Example:
    >>> from mtft_ray.data.sources.glyphs import SOURCE, GlyphOptions, list_scripts
    >>> opts = GlyphOptions(scripts=["greek", "hebrew"], samples_per_class=4)
    >>> sorted(list_scripts(opts))[:3]  # doctest: +SKIP
    ['adlam', 'arabic', 'armenian']
    >>> store = SOURCE.build(opts, image_size=64, seed=0)  # doctest: +SKIP
    >>> store.domain_names, store.images.shape  # doctest: +SKIP
    (['greek', 'hebrew'], (248, 64, 64))
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import multiprocessing
import os
import re
import struct
import sys
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter, ImageFont, features

from mtft_ray.config.sources import DEFAULT_FONT_DIRS, GlyphOptions  # noqa: F401 (DEFAULT_FONT_DIRS: part of this source's API)
from mtft_ray.data.sources.registry import register
from mtft_ray.data.store import SampleStore, build_store
from mtft_ray.errors import MtftError
from mtft_ray.progress import progress as progress_bar

_VERSION = 1  # bump whenever the images a given (options, fonts, seed) produce change

INSTALL_HINT = "apt-get install fonts-noto-core fonts-freefont-ttf fonts-dejavu-core fonts-liberation"
_FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc")

_SUPERSAMPLE = 2  # draw and augment at this multiple of image_size, then box-downsample
_FILL = 0.7  # the longer side of a glyph's bounding box spans this fraction of the frame

_NAME = re.compile(
    r"^(?P<script>[A-Z][A-Z -]*?) (?P<case>CAPITAL |SMALL )?(?:LETTER|SYLLABLE|CHARACTER|SYLLABICS) (?P<letter>.+)$")
_SCRIPT_ALIASES = {"canadian": "canadian_syllabics"}  # "CANADIAN SYLLABICS E": the keyword is the script's name
_EXCLUDED_SCRIPTS = frozenset({"hangul"})  # 11,172 precomposed syllables (decomposed by rule, not by table)
# Letters drawn identical to another letter of their own script in most fonts (found by
# rendering every candidate and comparing): a class that cannot be told apart is noise.
_LOOKALIKES = frozenset({
    0x0189,  # LATIN CAPITAL LETTER AFRICAN D, drawn as ETH
    0x04C0,  # CYRILLIC LETTER PALOCHKA, drawn as BYELORUSSIAN-UKRAINIAN I
    0x0472,  # CYRILLIC CAPITAL LETTER FITA, drawn as BARRED O
    0x06CC,  # ARABIC LETTER FARSI YEH, drawn (isolated) as ALEF MAKSURA
    0x157D,  # CANADIAN SYLLABICS HK, drawn as SAYISI YI
    0x1540,  # CANADIAN SYLLABICS WEST-CREE Y, drawn as FINAL PLUS
})
_MIN_EXTENT_EM = 0.3  # a glyph's larger side must span this much of its em to count


@dataclass(frozen=True, order=True)
class _Face:
    """One font design: a face of a font file (``index`` > 0 only inside collections)."""

    path: str
    index: int = 0


@dataclass(frozen=True)
class _Letter:
    """One class: a letter, and the faces that really draw it (sorted)."""

    script: str
    codepoint: int
    name: str
    faces: tuple[_Face, ...]

    @property
    def key(self) -> str:
        return f"{self.script}/{self.name}"


# ---------------------------------------------------------------------------------- letters


def _parse_letter(cp: int) -> tuple[str, str] | None:
    """``(script, class name)`` of a code point that passes the name rules, else None."""
    ch = chr(cp)
    if unicodedata.category(ch) not in ("Lu", "Ll", "Lo") or unicodedata.decomposition(ch):
        return None
    m = _NAME.match(unicodedata.name(ch, ""))
    if m is None or m["case"] == "SMALL " or re.search(r"\b(WITH|SMALL)\b", m["letter"]):
        return None
    script = m["script"].lower().replace(" ", "_")
    if script in _EXCLUDED_SCRIPTS:
        return None
    return _SCRIPT_ALIASES.get(script, script), f"U+{cp:04X} {m['letter'].lower()}"


def _has_case(ch: str) -> bool:
    return ch.lower() != ch or ch.upper() != ch


@functools.cache
def _letter_table() -> dict[int, tuple[str, str]]:
    """Every code point that may become a class: ``codepoint -> (script, class name)``."""
    parsed = {cp: p for cp in range(sys.maxunicode + 1) if (p := _parse_letter(cp))}
    # One form per case pair: the titlecase one ('A' for a/A, but Georgian 'ა' for ა/Ა).
    table = {cp: p for cp, p in parsed.items() if chr(cp).title() == chr(cp)}
    table = {cp: p for cp, p in table.items()
             if len(low := chr(cp).lower()) != 1 or low == chr(cp) or ord(low) not in table}
    cased = {p[0] for cp, p in table.items() if _has_case(chr(cp))}
    return {cp: p for cp, p in table.items()
            if cp not in _LOOKALIKES and (p[0] not in cased or _has_case(chr(cp)))}


# ------------------------------------------------------------------------------------ fonts


def _font_files(font_dirs: Iterable[str]) -> list[Path]:
    """Font files under ``font_dirs`` (recursively), resolved, deduplicated and sorted."""
    found = set()
    for d in font_dirs:
        root = Path(d).expanduser()
        if root.is_dir():
            found.update(p.resolve() for p in root.rglob("*")
                         if p.suffix.lower() in _FONT_SUFFIXES and p.is_file())
    return sorted(found)


def _file_stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4096)
def _scan_file(path: str, size: int, mtime_ns: int) -> tuple[tuple[str, int, frozenset[int]], ...]:
    """``(design name, face index, letters it really draws)`` of each face of a font file.

    ``size`` and ``mtime_ns`` only key the cache. Unreadable files give no faces.
    """
    from fontTools.ttLib import TTCollection, TTFont, TTLibError

    try:
        if path.lower().endswith((".ttc", ".otc")):
            with TTCollection(path, lazy=True) as coll:
                return tuple((_design_name(f, path), i, _drawn_letters(f)) for i, f in enumerate(coll.fonts))
        with TTFont(path, lazy=True) as font:
            return ((_design_name(font, path), 0, _drawn_letters(font)),)
    except (TTLibError, OSError, ValueError, KeyError, AssertionError, struct.error):  # struct.error: truncated files
        return ()


def _design_name(font, path: str) -> str:
    """The face's PostScript name (the same design installed twice is counted once)."""
    name = font["name"].getDebugName(6) if "name" in font else None
    return name or Path(path).stem


def _drawn_letters(font, outlines: Callable | None = None) -> frozenset[int]:
    """Candidate letters that ``font`` really draws.

    A glyph counts when it is not the ``.notdef`` box (nor a copy of it) and its larger side
    spans at least :data:`_MIN_EXTENT_EM`: dots and superscript finals, blown up to fill the
    frame, would no longer be what they are.

    Args:
        font: a ``fontTools`` ``TTFont``.
        outlines: how to read glyphs (tests); default: raw ``glyf`` records, else a pen.
    """
    table = _letter_table()
    outlines = outlines or (_glyf_outlines if "glyf" in font.reader else _pen_outlines)
    shape = functools.cache(outlines(font))
    notdef = font.getGlyphOrder()[0]
    min_extent = _MIN_EXTENT_EM * font["head"].unitsPerEm
    return frozenset(cp for cp, g in (font.getBestCmap() or {}).items()
                     if cp in table and g != notdef and shape(g)[1] >= min_extent and shape(g)[0] != shape(notdef)[0])


def _glyf_outlines(font) -> Callable[[str], tuple[bytes, float]]:
    """TrueType glyphs' raw records and larger bbox sides (font units), read without decoding."""
    data, loca = font.reader["glyf"], font["loca"]

    def outline(name: str) -> tuple[bytes, float]:
        i = font.getGlyphID(name)
        raw = data[loca[i] : loca[i + 1]] if 0 <= i < len(loca) - 1 else b""
        if len(raw) < 10 or raw[:2] == b"\0\0":  # no header, or zero contours: nothing drawn
            return b"", 0.0
        x0, y0, x1, y1 = struct.unpack(">4h", raw[2:10])
        return raw, float(max(x1 - x0, y1 - y0))

    return outline


def _pen_outlines(font) -> Callable[[str], tuple[bytes, float]]:
    """CFF (or other) glyphs' drawing commands as bytes, and their larger control-box sides."""
    from fontTools.pens.recordingPen import DecomposingRecordingPen

    glyphs = font.getGlyphSet()

    def outline(name: str) -> tuple[bytes, float]:
        pen = DecomposingRecordingPen(glyphs)
        try:
            glyphs[name].draw(pen)
        except (KeyError, IndexError, TypeError, ValueError):
            return b"", 0.0
        points = np.array([p for _, args in pen.value for p in args if isinstance(p, tuple)], float)
        if not len(points):
            return b"", 0.0
        return repr(pen.value).encode(), float((points.max(0) - points.min(0)).max())

    return outline


def _faces(font_dirs: list[str]) -> list[tuple[_Face, frozenset[int]]]:
    """Every distinct design under ``font_dirs`` with the letters it draws.

    Raises:
        MtftError: no font file at all.
    """
    files = _font_files(font_dirs)
    if not files:
        raise MtftError(f"no font files ({', '.join(_FONT_SUFFIXES)}) found in {', '.join(font_dirs)}; "
                        f"install some, e.g. `{INSTALL_HINT}`, or set data.options.font_dirs")
    faces, seen = [], set()
    for path in files:
        for design, index, letters in _scan_file(*_file_stamp(path)):
            if design not in seen and letters:
                seen.add(design)
                faces.append((_Face(str(path), index), letters))
    return faces


# -------------------------------------------------------------------------------- catalogue


def _all_letters(options: GlyphOptions) -> dict[str, list[_Letter]]:
    """Every script's letters drawn by ``>= min_designs`` faces, before per-script limits."""
    drawn_by: dict[int, list[_Face]] = {}
    for face, letters in _faces(options.font_dirs):
        for cp in letters:
            drawn_by.setdefault(cp, []).append(face)
    table = _letter_table()
    scripts: dict[str, list[_Letter]] = {}
    for cp in sorted(drawn_by):
        if len(drawn_by[cp]) >= options.min_designs:
            script, name = table[cp]
            scripts.setdefault(script, []).append(_Letter(script, cp, name, tuple(sorted(drawn_by[cp]))))
    return scripts


def _cap(letters: list[_Letter], script: str, limit: int | None, seed: int) -> list[_Letter]:
    """A seeded random subset of ``limit`` letters (in code point order), or all of them."""
    if limit is None or len(letters) <= limit:
        return letters
    rng = np.random.default_rng([_seed_word(seed), zlib.crc32(script.encode()), 2])
    keep = np.sort(rng.choice(len(letters), limit, replace=False))
    return [letters[i] for i in keep]


def _catalogue(options: GlyphOptions, seed: int) -> dict[str, list[_Letter]]:
    """The classes of every script that qualifies, ``options.scripts`` not applied.

    Raises:
        MtftError: no font found, or no script with enough classes and designs.
    """
    scripts = _all_letters(options)
    kept = {s: _cap(ls, s, options.max_classes_per_script, seed)
            for s, ls in sorted(scripts.items()) if len(ls) >= options.min_classes_per_script}
    if not kept:
        best = max(scripts.items(), key=lambda kv: len(kv[1]), default=("none", []))
        raise MtftError(
            f"{len(_faces(options.font_dirs))} font designs found in {', '.join(options.font_dirs)}, but no script "
            f"has >= {options.min_classes_per_script} letters drawn by >= {options.min_designs} font designs "
            f"(best: {best[0]} with {len(best[1])}); install more fonts (`{INSTALL_HINT}`) "
            f"or lower min_designs / min_classes_per_script")
    return kept


def _select(catalogue: dict[str, list[_Letter]], wanted: list[str] | None) -> dict[str, list[_Letter]]:
    """The scripts named in ``wanted`` (all when None)."""
    if wanted is None:
        return catalogue
    unknown = sorted(set(wanted) - set(catalogue))
    if unknown:
        raise MtftError(f"unknown or too small script(s) {', '.join(map(repr, unknown))} in glyphs options.scripts; "
                        f"available: {', '.join(catalogue)}")
    return {s: catalogue[s] for s in sorted(set(wanted))}


def list_scripts(options: GlyphOptions | None = None, seed: int = 0) -> dict[str, dict]:
    """The scripts the installed fonts support, without rendering anything.

    ``options.scripts`` is ignored: this is the list to choose from.

    Returns:
        ``script -> {"classes", "designs", "min_designs_per_class"}``, sorted by script;
        ``designs`` counts the distinct font faces drawing any of the script's classes.
    """
    options = options or GlyphOptions()
    return {s: _script_counts(ls) for s, ls in _catalogue(options, seed).items()}


def _script_counts(letters: list[_Letter]) -> dict:
    return {"classes": len(letters), "designs": len({f for lt in letters for f in lt.faces}),
            "min_designs_per_class": min(len(lt.faces) for lt in letters)}


# -------------------------------------------------------------------------------- rendering


def _seed_word(seed: int) -> int:
    return seed % 2**64  # SeedSequence takes non-negative words only


@functools.lru_cache(maxsize=1024)  # FreeType faces are small; reloading one costs ~1 ms
def _load_font(face: _Face, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(face.path, size, index=face.index, layout_engine=ImageFont.Layout.BASIC)


def _glyph(face: _Face, codepoint: int, size: int) -> Image.Image:
    """The letter drawn white on black at ``size`` px per em, cropped to its ink."""
    font = _load_font(face, size)
    left, top, right, bottom = font.getbbox(chr(codepoint))
    pad = size // 8
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(canvas).text((pad - left, pad - top), chr(codepoint), fill=255, font=font)
    box = canvas.getbbox()
    if box is None:  # an outline FreeType cannot draw (_drawn_letters screens the rest): a blank sample
        return Image.new("L", (1, 1), 0)
    return canvas.crop(box)


def _affine(glyph_size: tuple[int, int], frame: int, u: np.ndarray, opt: GlyphOptions) -> tuple[float, ...]:
    """PIL's (output -> input) affine coefficients: centre the glyph, scale it to fill, jitter it.

    The forward map is ``rotate @ shear @ scale`` about the glyph's box centre, which lands at
    the frame's centre plus a shift. ``u`` holds uniform draws in [-1, 1]: rotation, shear,
    scale, shift x, shift y.
    """
    w, h = glyph_size
    scale = _FILL * frame / max(w, h) * (1 + opt.scale_jitter * float(u[2]))
    theta = math.radians(opt.rotation_deg * float(u[0]))
    cos, sin, shear = math.cos(theta), math.sin(theta), opt.shear * float(u[1])
    # inverse = scale^-1 @ shear^-1 @ rotate^-1
    a, b = (cos + shear * sin) / scale, (sin - shear * cos) / scale
    d, e = -sin / scale, cos / scale
    cx, cy = frame / 2 + opt.translate * frame * float(u[3]), frame / 2 + opt.translate * frame * float(u[4])
    return a, b, w / 2 - a * cx - b * cy, d, e, h / 2 - d * cx - e * cy


def _rank_filter(a: np.ndarray, k: int, op: Callable) -> np.ndarray:
    """Max (``op=np.maximum``) or min filter over a ``(2k+1)`` square, as separable shifts."""
    for axis in (0, 1):
        out = a.copy()
        for s in range(1, k + 1):
            head, tail = [slice(None)] * 2, [slice(None)] * 2
            head[axis], tail[axis] = slice(None, -s), slice(s, None)
            op(out[tuple(tail)], a[tuple(head)], out=out[tuple(tail)])
            op(out[tuple(head)], a[tuple(tail)], out=out[tuple(head)])
        a = out
    return a


def _stroke(img: np.ndarray, radius: float) -> np.ndarray:
    """Thicken (``radius`` > 0) or thin the white strokes by a max / min filter.

    Thinning that would erase most of the ink (hairline fonts) is skipped.
    """
    k = int(round(abs(radius)))
    if k == 0:
        return img
    if radius > 0:
        return _rank_filter(img, k, np.maximum)
    thin = _rank_filter(img, k, np.minimum)
    return thin if thin.sum(dtype=np.int64) >= 0.4 * img.sum(dtype=np.int64) else img


def _sample(glyph: Image.Image, rng: np.random.Generator, opt: GlyphOptions, image_size: int) -> np.ndarray:
    """One augmented sample of a cropped glyph: dark on white, ``(image_size, image_size)`` uint8."""
    u = rng.uniform(-1.0, 1.0, size=7)  # always 7 draws: one option does not shift another's
    frame = image_size * _SUPERSAMPLE
    img = glyph.transform((frame, frame), Image.Transform.AFFINE, _affine(glyph.size, frame, u, opt),
                          resample=Image.Resampling.BILINEAR, fillcolor=0)
    img = Image.fromarray(_stroke(np.asarray(img), opt.stroke_jitter * frame * float(u[5])))
    img = img.reduce(_SUPERSAMPLE)
    sigma = opt.blur_sigma * (float(u[6]) + 1) / 2
    if sigma > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(sigma))
    return 255 - np.asarray(img, np.uint8)


def _render_class(letter: _Letter, opt: GlyphOptions, image_size: int, seed: int) -> np.ndarray:
    """All ``samples_per_class`` samples of one class, ``(S, H, W)`` uint8.

    The class's faces are visited in a seeded order, then cycled; sample ``i`` draws its
    augmentation from ``(seed, class, i)`` only.
    """
    class_word = zlib.crc32(letter.key.encode())
    order = np.random.default_rng([_seed_word(seed), class_word, 0]).permutation(len(letter.faces))
    glyphs: dict[int, Image.Image] = {}
    out = np.empty((opt.samples_per_class, image_size, image_size), np.uint8)
    for i in range(opt.samples_per_class):
        f = int(order[i % len(order)])
        if f not in glyphs:
            glyphs[f] = _glyph(letter.faces[f], letter.codepoint, image_size * _SUPERSAMPLE)
        rng = np.random.default_rng([_seed_word(seed), class_word, 1, i])
        out[i] = _sample(glyphs[f], rng, opt, image_size)
    return out


def _render_job(job: tuple[_Letter, GlyphOptions, int, int]) -> np.ndarray:
    return _render_class(*job)


def _worker_count(opt: GlyphOptions) -> int:
    if opt.workers:
        return opt.workers
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _render_all(letters: list[_Letter], opt: GlyphOptions, image_size: int, seed: int,
                 progress: bool) -> list[np.ndarray]:
    """Every class's samples, in ``letters`` order; the same arrays with any worker count."""
    jobs = [(lt, opt, image_size, seed) for lt in letters]
    workers = min(_worker_count(opt), len(jobs))
    with progress_bar(total=len(jobs), enabled=progress, desc="rendering glyphs", unit="class") as bar:
        if workers <= 1:
            return list(_tick(map(_render_job, jobs), bar))
        # spawn, not fork: the caller may hold threads (Ray, torch) that a forked child would inherit
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            return list(_tick(pool.map(_render_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))), bar))


def _tick(it: Iterable[np.ndarray], bar) -> Iterator[np.ndarray]:
    for x in it:
        bar.update()
        yield x


# ----------------------------------------------------------------------------------- source


class _Glyphs:
    name = "glyphs"
    Options = GlyphOptions

    def fingerprint(self, options: GlyphOptions, image_size: int, seed: int) -> str:
        """Hash of the options, size, seed, code and Unicode versions, and every font file's stamp."""
        h = hashlib.sha256(json.dumps([
            _VERSION, options.model_dump(exclude={"workers"}), image_size, seed, unicodedata.unidata_version,
            PIL.__version__, features.version("freetype2")]).encode())
        for path in _font_files(options.font_dirs):
            h.update(json.dumps(_file_stamp(path)).encode())
        return h.hexdigest()[:16]

    def build(self, options: GlyphOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        """Render every class of the selected scripts.

        Raises:
            MtftError: no fonts, no script with enough classes, or an unknown script asked for.
        """
        scripts = _select(_catalogue(options, seed), options.scripts)
        letters = [lt for ls in scripts.values() for lt in ls]
        images = np.concatenate(_render_all(letters, options, image_size, seed, progress))
        keys = [(lt.script, lt.name) for lt in letters for _ in range(options.samples_per_class)]
        meta = {
            "source": self.name, "version": _VERSION, "options": options.model_dump(), "image_size": image_size,
            "seed": seed, "unicode": unicodedata.unidata_version,
            "fonts": {s: sorted({f.path if not f.index else f"{f.path}#{f.index}" for lt in ls for f in lt.faces})
                      for s, ls in scripts.items()},
            "counts": {"scripts": len(scripts), "classes": len(letters), "samples": len(images),
                       "per_script": {s: _script_counts(ls) for s, ls in scripts.items()}},
        }
        return build_store(images, keys, meta)


SOURCE = register(_Glyphs())
