"""A second, natural-image data set built offline: patch sites of real photographs.

The glyphs are where mtft-ray's defaults are easy to overfit: line drawings far from ImageNet, where
finetuning gains 18 points. This set is the opposite case, the one a real photo collection
presents: natural image statistics that the pretrained backbone already describes well, and a
small source set. Its images come from the two photographs that ship inside scikit-learn
(``china.jpg``, ``flower.jpg``, 427 x 640, CC-BY / public domain, see sklearn's
``datasets/images/README.txt``), so it builds anywhere scikit-learn installs, with no download.

* **domain**: one quadrant of one photo (8 domains);
* **class**: one patch site in that quadrant (a 3 x 4 grid: 12 classes per domain, 96 in all);
* **sample**: a crop around the site, jittered in position (up to 1/4 of the site spacing), size
  (0.8-1.25x), horizontal flip, brightness and contrast (+-20 %), resized to ``size``.

With the default split (3 target domains, 1 validation domain) the source set is 4 domains,
48 classes, 960 images, so M=400 tasks x m=25 samples revisit each source image about 10 times an
epoch: the shape of the small-source data set on which multitask finetuning was measured to hurt.

Usage::

    python tests/bench/photo_patches.py /tmp/photo-patches        # writes root/<domain>/<class>/*.png
    mtft-ray run data.source=folder data.options.root=/tmp/photo-patches
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

GRID = (3, 4)  # patch sites per quadrant: rows x columns


def _photos() -> dict[str, Image.Image]:
    from sklearn.datasets import load_sample_images

    data = load_sample_images()
    names = [Path(f).stem for f in data.filenames]
    return {n: Image.fromarray(a) for n, a in zip(names, data.images)}


def build(out: Path, samples_per_class: int = 20, size: int = 64, seed: int = 0) -> int:
    """Write the tree under ``out``; returns the number of images written (deterministic under ``seed``)."""
    rng = np.random.default_rng(seed)
    n = 0
    for photo_name, photo in sorted(_photos().items()):
        w, h = photo.size
        for qy in range(2):
            for qx in range(2):
                domain = f"{photo_name}-{'ns'[qy]}{'we'[qx]}"
                x0, y0, qw, qh = qx * w // 2, qy * h // 2, w // 2, h // 2
                sy, sx = qh / GRID[0], qw / GRID[1]  # site spacing
                base = 0.9 * min(sx, sy)
                for r in range(GRID[0]):
                    for c in range(GRID[1]):
                        cls_dir = out / domain / f"site{r}{c}"
                        cls_dir.mkdir(parents=True, exist_ok=True)
                        cy, cx = y0 + (r + 0.5) * sy, x0 + (c + 0.5) * sx
                        for i in range(samples_per_class):
                            side = base * rng.uniform(0.8, 1.25)
                            jy, jx = rng.uniform(-0.25, 0.25, 2) * (sy, sx)
                            left = float(np.clip(cx + jx - side / 2, 0, w - side))
                            top = float(np.clip(cy + jy - side / 2, 0, h - side))
                            im = photo.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
                            if rng.random() < 0.5:
                                im = im.transpose(Image.FLIP_LEFT_RIGHT)
                            im = ImageEnhance.Brightness(im).enhance(rng.uniform(0.8, 1.2))
                            im = ImageEnhance.Contrast(im).enhance(rng.uniform(0.8, 1.2))
                            im.save(cls_dir / f"{i:03d}.png")
                            n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    print(f"{build(a.out, a.samples_per_class, a.size, a.seed)} images under {a.out}")


if __name__ == "__main__":
    main()
