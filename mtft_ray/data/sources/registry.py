"""The registry of data sources by name, and the protocol every source follows.

Example:
    >>> from mtft_ray.data.sources import get_source
    >>> get_source("glyphs").Options().samples_per_class
    20
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pydantic import BaseModel

from mtft_ray.config.sources import register_options
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError


class Source(Protocol):
    """What every data source provides."""

    name: str
    Options: type[BaseModel]

    def fingerprint(self, options: BaseModel, image_size: int, seed: int) -> str:
        """A short hash of everything ``build`` depends on (inputs found on disk included)."""
        ...

    def build(self, options: BaseModel, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        """Decode the source into a store of ``image_size`` x ``image_size`` images."""
        ...


class FileSource(Source, Protocol):
    """A source whose samples are image files, one per sample: ``mtft-ray data prepare`` then
    lists them once and decodes them in parallel Ray Data tasks across the cluster
    (:mod:`mtft_ray.data.prepare`) instead of calling ``build`` in one process.

    ``build`` must give the same store as decoding ``list_files`` in order with ``decode``.
    """

    def list_files(self, options: BaseModel) -> list[tuple[str, str, str]]:
        """``(domain, class, file)`` of every sample, in the store's order (sorted); ``file`` is a
        local path or an ``s3://`` URI."""
        ...

    def decode(self, file: str, image_size: int, options: BaseModel) -> np.ndarray:
        """One sample as a ``(image_size, image_size, 3)`` uint8 RGB array."""
        ...


def is_file_source(source: Source) -> bool:
    """Whether ``source`` lists image files that can be decoded in parallel (:class:`FileSource`)."""
    return callable(getattr(source, "list_files", None)) and callable(getattr(source, "decode", None))


_SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add ``source`` under its name; its ``Options`` model then validates ``data.options``."""
    _SOURCES[source.name] = source
    register_options(source.name, source.Options)
    return source


def get_source(name: str) -> Source:
    if name not in _SOURCES:
        raise MtftError(f"unknown data source {name!r}; known: {', '.join(sorted(_SOURCES))}")
    return _SOURCES[name]


def source_names() -> list[str]:
    return sorted(_SOURCES)
