"""Shared fixtures: a small synthetic store (no fonts, no decoding) for fast unit tests."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# moto's request recorder (tests/moto_s3.recording) reads its file's path when moto is first
# imported: keep it out of the working tree
os.environ.setdefault("MOTO_RECORDER_FILEPATH", os.path.join(tempfile.gettempdir(), f"mtft-moto-requests-{os.getpid()}.jsonl"))

from mtft_ray.data.store import SampleStore, build_store  # noqa: E402


def make_store(n_domains: int = 4, classes_per_domain: int = 6, per_class: int = 10, size: int = 8,
               seed: int = 0) -> SampleStore:
    """A store of random images: ``n_domains`` domains named d0.., classes c0.., ``per_class`` samples each."""
    rng = np.random.default_rng(seed)
    images, keys = [], []
    for d in range(n_domains):
        for c in range(classes_per_domain):
            for _ in range(per_class):
                images.append(rng.integers(0, 255, (size, size), dtype=np.uint8))
                keys.append((f"d{d}", f"c{c}"))
    return build_store(images, keys, {"source": "synthetic"})


@pytest.fixture
def small_store() -> SampleStore:
    return make_store()
