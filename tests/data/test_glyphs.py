"""The built-in ``glyphs`` source, on the fonts installed on this machine.

Builds stay small (two scripts, a few samples, 32 px) so the module runs in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import unicodedata

import numpy as np
import pytest
from pydantic import ValidationError

from mtft_ray.data.sharded import listing_fingerprint, open_store, write_store
from mtft_ray.data.sources import get_source
from mtft_ray.data.sources.glyphs import (
    DEFAULT_FONT_DIRS, SOURCE, GlyphOptions, _catalogue, _drawn_letters, _faces, _font_files, _glyf_outlines,
    _glyph, _letter_table, _pen_outlines, list_scripts)
from mtft_ray.errors import MtftError

pytestmark = pytest.mark.skipif(
    not _font_files(DEFAULT_FONT_DIRS),
    reason="no system fonts (apt-get install fonts-noto-core fonts-freefont-ttf fonts-dejavu-core fonts-liberation)")

SIZE = 32
SMALL = {"scripts": ["greek", "hebrew"], "samples_per_class": 4}
DEJAVU = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _build(seed: int = 0, **kw) -> "SampleStore":  # noqa: F821
    return SOURCE.build(GlyphOptions(**{**SMALL, **kw}), SIZE, seed)


def _images_by_class(store) -> dict[str, np.ndarray]:
    return {store.class_names[c]: store.images[ids] for c, ids in enumerate(store.samples_by_class())}


@pytest.fixture(scope="module")
def store():
    return _build()


def test_registered_under_its_name():
    assert get_source("glyphs") is SOURCE
    assert SOURCE.Options is GlyphOptions


def test_store_shapes_and_dtype(store):
    assert store.domain_names == ["greek", "hebrew"]
    assert store.images.dtype == np.uint8
    assert store.images.shape == (store.num_classes * 4, SIZE, SIZE)
    assert store.num_classes == sum(v["classes"] for v in store.meta["counts"]["per_script"].values())
    greek = [n for n in store.class_names if n.startswith("greek/")]
    assert "greek/U+0391 alpha" in greek and len(greek) >= 24
    assert all(store.domain_names[store.class_domain[store.labels[i]]] == store.class_names[store.labels[i]].split("/")[0]
               for i in range(0, store.num_samples, 7))


def test_every_class_has_its_samples_and_enough_designs(store):
    assert [len(ids) for ids in store.samples_by_class()] == [4] * store.num_classes
    for script, letters in _catalogue(GlyphOptions(), 0).items():
        assert all(len(lt.faces) >= 3 for lt in letters), script
        assert len(letters) >= 10, script
    per_script = store.meta["counts"]["per_script"]
    assert all(v["min_designs_per_class"] >= 3 for v in per_script.values())
    assert all(len(store.meta["fonts"][s]) == v["designs"] for s, v in per_script.items())


def test_meta_is_json_and_survives_save_load(store, tmp_path):
    json.dumps(store.meta)
    back = open_store(write_store(store, tmp_path / "g", build_key="test"))
    assert listing_fingerprint(back) == listing_fingerprint(store)
    assert np.array_equal(np.asarray(back.images), store.images)
    assert back.meta["source"] == "glyphs" and back.meta["options"]["samples_per_class"] == 4


def test_build_is_deterministic(store):
    again = _build()
    assert again.class_names == store.class_names
    assert again.images.tobytes() == store.images.tobytes()
    assert again.fingerprint() == store.fingerprint()


def test_a_class_does_not_depend_on_the_other_scripts(store):
    alone = SOURCE.build(GlyphOptions(scripts=["hebrew"], samples_per_class=4), SIZE, 0, progress=True)
    assert alone.domain_names == ["hebrew"]
    both = _images_by_class(store)
    for name, images in _images_by_class(alone).items():
        assert np.array_equal(images, both[name]), name


def test_parallel_build_equals_serial():
    options = {"scripts": ["hebrew"], "samples_per_class": 3}
    serial = SOURCE.build(GlyphOptions(**options, workers=1), SIZE, 5)
    parallel = SOURCE.build(GlyphOptions(**options, workers=2), SIZE, 5)
    assert parallel.images.tobytes() == serial.images.tobytes()


def test_seeds_differ(store):
    other = _build(seed=1)
    assert other.class_names == store.class_names
    assert not np.array_equal(other.images, store.images)
    assert SOURCE.fingerprint(GlyphOptions(**SMALL), SIZE, 1) != SOURCE.fingerprint(GlyphOptions(**SMALL), SIZE, 0)


def test_images_are_dark_glyphs_on_white_and_classes_differ(store):
    imgs = store.images.astype(np.float32)
    assert (imgs.min(axis=(1, 2)) < 100).all()  # every sample has ink
    assert (np.median(imgs, axis=(1, 2)) > 200).all()  # on a white background
    ink = (255 - imgs).sum(axis=(1, 2))
    assert (ink > 0.005 * 255 * SIZE * SIZE).all()  # a thin "I" has ~1%
    means = np.stack([imgs[ids].mean(0).ravel() for ids in store.samples_by_class()])
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(len(means)) * 1e9
    assert dist.min() > 50  # no two classes look alike on average
    assert len({img.tobytes() for img in store.images}) == store.num_samples


def test_augmentation_strengths_are_used():
    plain = dict(rotation_deg=0, shear=0, scale_jitter=0, translate=0, stroke_jitter=0, blur_sigma=0)
    still = _build(scripts=["hebrew"], samples_per_class=40, **plain)
    noisy = _build(scripts=["hebrew"], samples_per_class=40)
    # 40 samples cycle through fewer designs: without augmentation, repeats of a design are identical
    assert len({i.tobytes() for i in still.images}) < still.num_samples
    assert len({i.tobytes() for i in noisy.images}) == noisy.num_samples


def test_max_classes_per_script_is_a_seeded_subset():
    full = _catalogue(GlyphOptions(max_classes_per_script=None), 0)
    capped = _catalogue(GlyphOptions(max_classes_per_script=12), 0)
    assert capped.keys() == full.keys()
    for script, letters in capped.items():
        assert len(letters) == min(12, len(full[script]))
        assert {lt.codepoint for lt in letters} <= {lt.codepoint for lt in full[script]}
    big = max(full, key=lambda s: len(full[s]))
    assert [lt.codepoint for lt in _catalogue(GlyphOptions(max_classes_per_script=12), 0)[big]] == \
        [lt.codepoint for lt in capped[big]]
    assert [lt.codepoint for lt in _catalogue(GlyphOptions(max_classes_per_script=12), 1)[big]] != \
        [lt.codepoint for lt in capped[big]]


def test_list_scripts_counts():
    scripts = list_scripts(GlyphOptions(scripts=["greek"]))  # the filter is ignored: all are listed
    assert {"latin", "greek", "cyrillic", "hebrew", "arabic"} <= scripts.keys()
    assert len(scripts) >= 15
    for info in scripts.values():
        assert info["classes"] >= 10 and info["min_designs_per_class"] >= 3 and info["designs"] >= 3
    assert list_scripts(GlyphOptions(min_classes_per_script=60)).keys() < scripts.keys()


@pytest.mark.parametrize("char, kept", [
    ("A", True), ("a", False),  # one form per case pair: the capital
    ("Á", False), ("ﺑ", False), ("Ａ", False),  # diacritics, presentation and compatibility forms
    ("ა", True), ("Ა", False),  # Georgian: Mkhedruli, not its Mtavruli capital
    ("ʔ", False), ("ǀ", False),  # caseless extras of a cased script
    ("א", True), ("ก", True), ("ሀ", True), ("अ", True),
    ("一", False), ("가", False), ("ʰ", False), ("ª", False), ("ـ", False),  # CJK, Hangul, modifiers
    ("Ð", True), ("Ɖ", False),  # look-alikes of another letter of the script
])
def test_which_letters_count(char, kept):
    assert (ord(char) in _letter_table()) == kept, unicodedata.name(char)


def test_script_names_are_lower_case_words():
    table = _letter_table()
    assert table[ord("Α")] == ("greek", "U+0391 alpha")
    assert table[ord("ᐁ")][0] == "canadian_syllabics"
    assert all(s == s.lower() and " " not in s and "/" not in s + n for s, n in set(table.values()))


def test_pen_and_raw_glyf_readers_agree():
    from fontTools.ttLib import TTFont

    with TTFont(DEJAVU, lazy=True) as font:
        drawn = _drawn_letters(font)
        assert ord("A") in drawn and ord("א") in drawn and ord("Ⴀ") in drawn
        assert _drawn_letters(font, _pen_outlines) == drawn == _drawn_letters(font, _glyf_outlines)


def test_collections_and_duplicate_designs(tmp_path):
    from fontTools.ttLib import TTCollection, TTFont

    mono = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"
    coll = TTCollection()
    coll.fonts = [TTFont(DEJAVU), TTFont(mono)]
    coll.save(tmp_path / "pair.ttc")
    shutil.copy(DEJAVU, tmp_path / "copy-of-dejavu.ttf")  # the same design again
    faces = _faces([str(tmp_path)])
    assert sorted((f.path.endswith(".ttc"), f.index) for f, _ in faces) == [(False, 0), (True, 1)]
    mono_face = next(f for f, _ in faces if f.index == 1)
    assert _glyph(mono_face, ord("Ж"), 64).getbbox() is not None


def test_fingerprint_tracks_options_and_fonts(tmp_path):
    shutil.copy(DEJAVU, tmp_path / "a.ttf")
    opts = GlyphOptions(font_dirs=[str(tmp_path)])
    fp = SOURCE.fingerprint(opts, SIZE, 0)
    assert SOURCE.fingerprint(opts.model_copy(update={"workers": 3}), SIZE, 0) == fp
    assert SOURCE.fingerprint(opts.model_copy(update={"blur_sigma": 0.0}), SIZE, 0) != fp
    assert SOURCE.fingerprint(opts, SIZE * 2, 0) != fp
    os.utime(tmp_path / "a.ttf", ns=(0, 10**9))
    assert SOURCE.fingerprint(opts, SIZE, 0) != fp


def test_no_fonts_names_the_dirs_and_packages(tmp_path):
    with pytest.raises(MtftError, match="fonts-noto-core") as err:
        SOURCE.build(GlyphOptions(font_dirs=[str(tmp_path)]), SIZE, 0)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_too_few_designs_says_so(tmp_path):
    shutil.copy(DEJAVU, tmp_path / "only.ttf")
    with pytest.raises(MtftError, match=r"no script has >= 10 letters drawn by >= 3 font designs \(best: \w+ with 0\)"):
        list_scripts(GlyphOptions(font_dirs=[str(tmp_path)]))


def test_unknown_script_lists_the_available_ones():
    with pytest.raises(MtftError, match="'klingon'.*available: .*greek"):
        SOURCE.build(GlyphOptions(scripts=["greek", "klingon"]), SIZE, 0)


def test_options_are_validated():
    with pytest.raises(ValidationError):
        GlyphOptions(samples_per_clas=3)
    with pytest.raises(ValidationError):
        GlyphOptions(samples_per_class=0)
    with pytest.raises(ValidationError):
        GlyphOptions(scripts=[])
    assert GlyphOptions().samples_per_class == 20
