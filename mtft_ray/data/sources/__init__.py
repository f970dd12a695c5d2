"""Data sources, by name: each decodes its raw data once into a :class:`SampleStore`.

A source is a small object with a pydantic ``Options`` model (unknown keys rejected), a cheap
``fingerprint`` that says what ``build`` would produce (used as the on-disk cache key), and
``build`` itself. Register new ones with :func:`register`.

Example:
    >>> from mtft_ray.data.sources import get_source
    >>> get_source("glyphs").Options().samples_per_class
    20
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel

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
    _SOURCES[source.name] = source
    return source


def get_source(name: str) -> Source:
    _load_builtin()
    if name not in _SOURCES:
        raise MtftError(f"unknown data source {name!r}; known: {', '.join(sorted(_SOURCES))}")
    return _SOURCES[name]


def source_names() -> list[str]:
    _load_builtin()
    return sorted(_SOURCES)


def _load_builtin() -> None:
    # Imported lazily so that importing the registry stays cheap and free of cycles.
    from mtft_ray.data.sources import folder, glyphs  # noqa: F401
