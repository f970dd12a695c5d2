"""The compact sample store every data source decodes into, once.

A :class:`SampleStore` holds all inputs of a source as one array (uint8 images, or int32 token
ids with their attention masks for text) plus, per sample, an integer class id and an integer
domain id. Episodes, tasks and feature extraction index into
it; nothing is ever decoded per episode.

Example:
    >>> import numpy as np
    >>> store = SampleStore(
    ...     images=np.zeros((4, 8, 8), np.uint8), labels=np.array([0, 0, 1, 1]),
    ...     domains=np.array([0, 0, 0, 0]), class_names=["a", "b"], domain_names=["latin"],
    ...     class_domain=np.array([0, 0]))
    >>> store.num_classes, store.image_shape
    (2, (8, 8))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np


def is_tokens(inputs) -> bool:
    """Whether an input array (numpy or torch) holds tokenized text: int32 ``(N, 2, L)``."""
    return str(inputs.dtype).endswith("int32") and inputs.ndim == 3 and inputs.shape[1] == 2


@dataclass(frozen=True)
class SampleStore:
    """All samples of a source, decoded.

    Attributes:
        images: the model inputs, one row per sample: ``(N, H, W)`` grayscale or ``(N, H, W, 3)``
            RGB uint8 images, or for text ``(N, 2, L)`` int32 token ids (``[:, 0]``) and attention
            masks (``[:, 1]``), tokenized once at a fixed length ``L`` (:func:`is_tokens`). An
            array in memory, or, for a store opened from disk, a memory-mapped
            :class:`~mtft_ray.data.sharded.ShardedArray` that reads only the rows gathered.
        labels: ``(N,)`` int64 class id of each sample, in ``[0, num_classes)``.
        domains: ``(N,)`` int64 domain id of each sample, in ``[0, num_domains)``.
        class_names: name of each class id (unique).
        domain_names: name of each domain id (unique).
        class_domain: ``(num_classes,)`` domain id of each class (a class lives in one domain).
        meta: free-form provenance (source name, options, font list, ...), JSON-serialisable.
        files: where each sample came from (a path, or ``"<file>#<row>"`` inside an archive);
            ``None`` for generated sources (glyphs). Kept in the store's index.
    """

    images: np.ndarray
    labels: np.ndarray
    domains: np.ndarray
    class_names: list[str]
    domain_names: list[str]
    class_domain: np.ndarray
    meta: dict = field(default_factory=dict)
    files: list[str] | None = None
    digest: str | None = None  # the fingerprint a sharded store was written with (its header's)

    def __post_init__(self) -> None:
        n = len(self.images)
        if not is_tokens(self.images) and (self.images.dtype != np.uint8 or self.images.ndim not in (3, 4)):
            raise ValueError(f"images must be uint8 (N,H,W) or (N,H,W,3), or int32 tokens (N,2,L), got "
                             f"{self.images.dtype} {self.images.shape}")
        if self.labels.shape != (n,) or self.domains.shape != (n,):
            raise ValueError("labels and domains must have one entry per image")
        if len(self.class_domain) != len(self.class_names):
            raise ValueError("class_domain must have one entry per class")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise ValueError("labels out of range of class_names")
        if n and (self.domains.min() < 0 or self.domains.max() >= len(self.domain_names)):
            raise ValueError("domains out of range of domain_names")
        if self.files is not None and len(self.files) != n:
            raise ValueError("files must have one entry per sample")

    @property
    def num_samples(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_domains(self) -> int:
        return len(self.domain_names)

    @property
    def is_text(self) -> bool:
        """Whether the inputs are token ids and masks rather than images."""
        return is_tokens(self.images)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def samples_by_class(self) -> list[np.ndarray]:
        """Sample ids of each class, sorted, indexed by class id."""
        order = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def fingerprint(self) -> str:
        """A cache key: equal stores have equal fingerprints.

        A store opened from disk (:func:`mtft_ray.data.sharded.open_store`) has the one its header
        was written with, computed from its index and build options; a store built in memory
        hashes its contents.
        """
        if self.digest is not None:
            return self.digest
        h = hashlib.sha256()
        for arr in (self.images, self.labels, self.domains, self.class_domain):
            h.update(str(arr.shape).encode())
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(json.dumps([self.class_names, self.domain_names]).encode())
        return h.hexdigest()[:16]


def build_store(images: list[np.ndarray] | np.ndarray, class_keys: list[tuple[str, str]],
                meta: dict | None = None, files: list[str] | None = None) -> SampleStore:
    """Assemble a store from images and their ``(domain, class)`` names.

    Class and domain ids are assigned in sorted name order, so the same inputs in any order
    give the same ids.

    Args:
        images: one uint8 array per sample, all of one shape.
        class_keys: ``(domain_name, class_name)`` of each sample. A class name is made unique
            across domains by prefixing its domain (``"greek/alpha"``).
        meta: provenance to keep with the store.
        files: where each sample came from (see :attr:`SampleStore.files`).
    """
    if len(images) != len(class_keys):
        raise ValueError("one (domain, class) key per image")
    domain_names = sorted({d for d, _ in class_keys})
    full = [f"{d}/{c}" for d, c in class_keys]
    class_names = sorted(set(full))
    dom_id = {d: i for i, d in enumerate(domain_names)}
    cls_id = {c: i for i, c in enumerate(class_names)}
    class_domain = np.array([dom_id[c.split("/", 1)[0]] for c in class_names], np.int64)
    return SampleStore(
        images=np.ascontiguousarray(np.stack(images)) if len(images) else np.zeros((0, 1, 1), np.uint8),
        labels=np.array([cls_id[c] for c in full], np.int64),
        domains=np.array([dom_id[d] for d, _ in class_keys], np.int64),
        class_names=class_names, domain_names=domain_names, class_domain=class_domain,
        meta=dict(meta or {}), files=None if files is None else [str(f) for f in files],
    )
