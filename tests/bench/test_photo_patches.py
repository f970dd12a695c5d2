"""The second, natural-image data set builds offline and deterministically."""

import hashlib

from photo_patches import build


def _digest(root):
    return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(root.rglob("*.png")))).hexdigest()


def test_photo_patches_build_the_same_tree_twice(tmp_path):
    assert build(tmp_path / "a", samples_per_class=1, size=32) == 96  # 8 domains x 12 sites
    build(tmp_path / "b", samples_per_class=1, size=32)
    assert sorted(p.name for p in (tmp_path / "a").iterdir())[:2] == ["china-ne", "china-nw"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
