"""The registry of data sources by name, and the protocol every source follows.

Example:
    >>> from mtft_ray.data.sources import get_source
    >>> get_source("glyphs").Options().samples_per_class
    20
"""

from __future__ import annotations

from typing import Protocol

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
