"""Data sources, by name: each decodes its raw data once into a :class:`SampleStore`.

A source is a small object with a pydantic ``Options`` model (unknown keys rejected; the models
live in :mod:`mtft_ray.config.sources`), a cheap ``fingerprint`` that says what ``build`` would
produce (used as the on-disk cache key), and ``build`` itself. Register new ones with
:func:`register`.

Example:
    >>> get_source("glyphs").Options().samples_per_class
    20
"""

from mtft_ray.data.sources import (  # the built-in sources register themselves
    domainnet, folder, glyphs, metadataset, miniimagenet, store, text, tieredimagenet, wordnet)  # noqa: F401
from mtft_ray.data.sources.registry import FileSource, Source, get_source, is_file_source, register, source_names

__all__ = ["FileSource", "Source", "get_source", "is_file_source", "register", "source_names"]
