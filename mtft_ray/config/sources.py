"""The options of each data source (``data.options``), validated with the experiment config.

They live in the config layer so that a config is checked whole when it is loaded, before any
data is touched; a data source (:mod:`mtft_ray.data.sources`) names its options model here with
:func:`register_options` (its ``register`` does it).

Example:
    >>> options_model("glyphs")(samples_per_class=4).samples_per_class
    4
"""

from __future__ import annotations

from typing import Annotated, Literal

from PIL import ImageColor
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from mtft_ray.errors import MtftError

DEFAULT_FONT_DIRS = ["/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts"]


class GlyphOptions(BaseModel):
    """Options of the ``glyphs`` source (``data.options`` in an experiment's YAML).

    Augmentation strengths are maxima: each sample draws its own value uniformly in
    ``[-x, x]`` (``[0, x]`` for blur).
    """

    model_config = ConfigDict(extra="forbid")

    samples_per_class: int = Field(20, ge=1)
    min_designs: int = Field(3, ge=1)  # font faces that must draw a letter for it to be a class
    min_classes_per_script: int = Field(10, ge=1)
    # seeded random subset of bigger scripts, so the two big syllabaries (Canadian 699, Ethiopic 453)
    # do not make up 40% of all classes; None keeps every class
    max_classes_per_script: int | None = Field(60, ge=1)
    scripts: list[str] | None = Field(None, min_length=1)  # only these scripts (names as in list_scripts)
    font_dirs: list[str] = Field(default_factory=lambda: list(DEFAULT_FONT_DIRS))
    rotation_deg: float = Field(10.0, ge=0)
    shear: float = Field(0.2, ge=0)  # x-shear factor
    scale_jitter: float = Field(0.15, ge=0, lt=1)  # relative size change
    translate: float = Field(0.08, ge=0, le=0.5)  # shift, as a fraction of the image size
    stroke_jitter: float = Field(0.015, ge=0, le=0.1)  # stroke half-width change, fraction of image size
    blur_sigma: float = Field(0.6, ge=0)  # Gaussian blur, in output pixels
    # Rendering processes (0: one per CPU). Any count gives the same store, so it is not part of
    # the fingerprint. More than 1 spawns processes: a calling script needs `if __name__ == "__main__":`.
    workers: int = Field(1, ge=0)


def _rgb(value: object) -> object:
    """A colour name or string PIL knows (``"white"``, ``"#808080"``) as its ``(r, g, b)``; anything else as given."""
    if not isinstance(value, str):
        return value
    try:
        return ImageColor.getrgb(value)
    except ValueError:
        raise ValueError(f"unknown colour {value!r}: give a name PIL knows (white, black, gray, ...), "
                         f"'#rrggbb' or [r, g, b] in 0-255") from None


_Channel = Annotated[int, Field(ge=0, le=255)]


class FolderOptions(BaseModel):
    """Options of the ``folder`` source: a tree ``root/<domain>/<class>/<image files>``.

    ``background`` is the colour transparent pixels are composited onto; a name is kept as its
    ``(r, g, b)``, so ``white`` and ``[255, 255, 255]`` are one store.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = ""
    extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".webp"])
    max_per_class: int | None = Field(None, ge=1)  # first N files per class in sorted order
    background: Annotated[tuple[_Channel, _Channel, _Channel], BeforeValidator(_rgb)] = Field(
        "white", validate_default=True)
    workers: int = Field(8, ge=1)  # decoding threads

DEFAULT_TOKENIZER = "sentence-transformers/all-MiniLM-L6-v2"


class _TokenizedOptions(BaseModel):
    """The tokenizer fields every text source shares: texts are tokenized once, at ``max_length``."""

    model_config = ConfigDict(extra="forbid")

    # a Hugging Face hub id, a packaged model (mtft_ray.packages) or a local folder with a tokenizer
    tokenizer: str = Field(DEFAULT_TOKENIZER, min_length=1)
    max_length: int = Field(64, ge=8, le=512)  # tokens per text, special tokens included; longer ones are cut


class TextOptions(_TokenizedOptions):
    """Options of the ``text`` source: labelled texts in ``.csv``, ``.jsonl``/``.json``, ``.parquet``
    files or Hugging Face ``save_to_disk`` folders.

    ``files`` takes paths and globs (``data/*.csv``); ``domain_column: null`` puts every row in one
    domain named ``all``. Classes with fewer than ``min_per_class`` texts are dropped (and counted);
    ``max_per_class`` keeps a seeded random subset of bigger classes.
    """

    files: list[str] = Field(default_factory=list)
    text_column: str = Field("text", min_length=1)
    class_column: str = Field("label", min_length=1)
    domain_column: str | None = Field("domain", min_length=1)
    max_per_class: int | None = Field(None, ge=1)
    min_per_class: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _check_caps(self) -> TextOptions:
        if self.max_per_class is not None and self.max_per_class < self.min_per_class:
            raise ValueError(f"max_per_class ({self.max_per_class}) is below min_per_class ({self.min_per_class})")
        return self


class WordNetOptions(_TokenizedOptions):
    """Options of the ``wordnet`` source: a class per noun synset with at least ``min_hyponyms``
    direct hyponyms, whose texts are those hyponyms' definitions.

    ``path`` is WordNet's dict folder (the one holding ``data.noun``); ``None`` looks in
    ``/usr/share/wordnet`` (Debian's ``wordnet-base``), then ``$WNHOME/dict``. ``max_per_class``
    keeps a seeded random subset of bigger classes.
    """

    path: str | None = Field(None, min_length=1)
    min_hyponyms: int = Field(10, ge=2)
    max_per_class: int | None = Field(None, ge=1)


class StoreOptions(BaseModel):
    """Options of the ``store`` source: a store made by ``mtft-ray data prepare``.

    ``uri`` is a local folder or ``s3://bucket/prefix``; an S3 store is copied once per node into
    the cache (``data.cache_dir``) and memory-mapped from there by every trial and worker. The S3
    endpoint and region are ``endpoint_url`` / ``region``, else the AWS SDK's environment
    (``$AWS_ENDPOINT_URL_S3``, ``$AWS_REGION``); credentials only ever come from the AWS chain.
    """

    model_config = ConfigDict(extra="forbid")

    uri: str = Field(min_length=1)
    endpoint_url: str | None = None
    region: str | None = None


class DomainNetOptions(BaseModel):
    """Options of the ``domainnet`` source: DomainNet as published, ``root/<domain>/<class>/<images>``
    with the split lists ``root/<domain>_train.txt`` and ``root/<domain>_test.txt``.

    The lists say which images exist (files on disk that no list names are ignored). ``images``
    picks the lists read: ``train``, ``test`` or ``all`` (both); ``domains: null`` takes every
    domain that has those lists. ``max_per_class`` keeps the first N listed files of a class in
    sorted order; ``background`` and ``workers`` are as in ``folder``.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = ""
    domains: list[str] | None = Field(None, min_length=1)  # clipart, infograph, painting, quickdraw, real, sketch
    images: Literal["train", "test", "all"] = "all"
    max_per_class: int | None = Field(None, ge=1)
    background: Annotated[tuple[_Channel, _Channel, _Channel], BeforeValidator(_rgb)] = Field(
        "white", validate_default=True)
    workers: int = Field(8, ge=1)  # decoding threads; any count gives the same store


class MiniImageNetOptions(BaseModel):
    """Options of the ``miniimagenet`` source, in either published layout: Ravi & Larochelle's
    ``train.csv``, ``val.csv``, ``test.csv`` with ``images/`` (``format: csv``), or the pickles
    ``mini-imagenet-cache-{train,val,test}.pkl`` (``format: pkl``); ``auto`` takes the csv layout
    when a csv is there, else the pickles. ``max_per_class`` keeps the first N images of a class.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = ""
    format: Literal["auto", "csv", "pkl"] = "auto"
    max_per_class: int | None = Field(None, ge=1)
    workers: int = Field(8, ge=1)  # decoding threads (csv layout); any count gives the same store


class TieredImageNetOptions(BaseModel):
    """Options of the ``tieredimagenet`` source: Ren et al.'s ``{train,val,test}_images_png.pkl``
    and ``{train,val,test}_labels.pkl`` in ``root``. ``max_per_class`` keeps the first N images
    of a class in file order.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = ""
    max_per_class: int | None = Field(None, ge=1)
    workers: int = Field(8, ge=1)  # PNG decoding threads; any count gives the same store


class MetaDatasetOptions(BaseModel):
    """Options of the ``metadataset`` source: Meta-Dataset's converted records, one folder per
    source (``root/<source>/dataset_spec.json`` and ``root/<source>/<class id>.tfrecords``).

    ``sources: null`` takes every folder of ``root`` with a ``dataset_spec.json``.
    ``max_per_class`` keeps the first N records of a class in file order.
    """

    model_config = ConfigDict(extra="forbid")

    root: str = ""
    sources: list[str] | None = Field(None, min_length=1)  # omniglot, aircraft, cu_birds, ... (folder names)
    max_per_class: int | None = Field(None, ge=1)
    workers: int = Field(8, ge=1)  # decoding threads; any count gives the same store


_OPTIONS: dict[str, type[BaseModel]] = {"glyphs": GlyphOptions, "folder": FolderOptions, "text": TextOptions,
                                        "wordnet": WordNetOptions, "store": StoreOptions,
                                        "domainnet": DomainNetOptions, "miniimagenet": MiniImageNetOptions,
                                        "tieredimagenet": TieredImageNetOptions, "metadataset": MetaDatasetOptions}


def register_options(name: str, model: type[BaseModel]) -> None:
    """Name the options model of data source ``name`` (a plug-in source calls it through ``register``)."""
    _OPTIONS[name] = model


def options_model(name: str) -> type[BaseModel]:
    """The options model of data source ``name``.

    Raises:
        MtftError: no source of that name is registered.
    """
    if name not in _OPTIONS:
        raise MtftError(f"unknown data source {name!r}; known: {', '.join(sorted(_OPTIONS))}")
    return _OPTIONS[name]
