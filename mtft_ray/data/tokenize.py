"""Tokenizers for the text sources: found offline first, and texts tokenized once into store rows.

A text source keeps each text as one int32 ``(2, L)`` row of a :class:`~mtft_ray.data.store.SampleStore`:
token ids, then the attention mask (1 for real tokens, 0 for padding), at a fixed ``L``.

Example:
    >>> tok = load_tokenizer("sentence-transformers/all-MiniLM-L6-v2")  # the packaged copy, offline
    >>> rows, truncated = tokenize(["a a a", "a a a a a a a a a"], tok, max_length=8)
    >>> rows.shape, rows.dtype.name, truncated  # [CLS] + 9 tokens + [SEP] does not fit in 8
    ((2, 2, 8), 'int32', 1)
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
import json
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from mtft_ray.errors import MtftError
from mtft_ray.packages import PACKAGED_MODELS, packaged_model_dir
from mtft_ray.progress import progress as progress_bar

__all__ = ["load_tokenizer", "tokenize", "tokenizer_fingerprint"]

_BATCH = 2048  # texts per tokenizer call
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt", ".gguf"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def _is_path(spec: str) -> bool:
    """Whether ``spec`` names a folder on disk rather than a hub id (``org/name``)."""
    return spec.startswith(("/", "./", "../", "~", ".\\")) or os.path.isdir(os.path.expanduser(spec))


def _hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_reachable() -> bool:
    """Whether the hub's host resolves (a proxy is trusted to reach it).

    Checked before an online load because, with no network, ``huggingface_hub`` retries each
    request for about 45 s before it gives up.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (whitespace runs joined), cut to ``limit`` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@functools.cache
def load_tokenizer(spec: str):
    """The fast ``transformers`` tokenizer ``spec`` names, loaded once per process.

    Looked for in this order: a packaged model (:data:`mtft_ray.packages.PACKAGED_MODELS`, offline),
    a local folder, the Hugging Face cache (offline), then the hub itself (when it can be reached
    and ``HF_HUB_OFFLINE`` is not set). A cached hub id is used as cached, without asking the hub
    for a newer revision, so a store does not change under a cache key.

    Args:
        spec: ``"sentence-transformers/all-MiniLM-L6-v2"``, any hub id, or a folder path.

    Raises:
        MtftError: the tokenizer is nowhere to be found (one line naming it and where it looked), or
            it cannot pad (no padding token).
    """
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    if spec in PACKAGED_MODELS:
        tok = AutoTokenizer.from_pretrained(packaged_model_dir(spec))
    elif _is_path(spec):
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise MtftError(f"tokenizer folder not found: {folder.resolve()} (data.options.tokenizer: {spec!r})")
        try:
            tok = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
            raise MtftError(f"no usable tokenizer in {folder} (data.options.tokenizer): {_one_line(e)}") from None
    else:
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the misses below are expected; the error we raise says it all
        try:
            try:
                tok = AutoTokenizer.from_pretrained(spec, local_files_only=True)
            except (OSError, ValueError):
                if _hub_offline() or not hub_reachable():
                    why = "HF_HUB_OFFLINE is set" if _hub_offline() else "the hub cannot be reached (offline)"
                    raise MtftError(
                        f"tokenizer {spec!r} not found: not a packaged model or a local folder, not in the Hugging Face "
                        f"cache {_hub_cache()}, and {why}; set data.options.tokenizer to a local model folder or a "
                        f"packaged model ({', '.join(PACKAGED_MODELS)})") from None
                try:
                    tok = AutoTokenizer.from_pretrained(spec)
                except (OSError, ValueError) as e:
                    raise MtftError(
                        f"tokenizer {spec!r} could not be loaded from the Hugging Face hub ({_one_line(e)}; cache "
                        f"{_hub_cache()}); set data.options.tokenizer to a local model folder or a packaged model "
                        f"({', '.join(PACKAGED_MODELS)})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
    if not getattr(tok, "is_fast", False):
        raise MtftError(f"tokenizer {spec!r} has no fast (Rust) implementation: give a folder with a tokenizer.json")
    if tok.pad_token is None:
        raise MtftError(f"tokenizer {spec!r} has no padding token, so texts cannot be padded to one length")
    return tok


def tokenizer_fingerprint(spec: str) -> str:
    """A cheap stamp of the tokenizer ``spec`` resolves to, without loading it (for source fingerprints).

    It names the package version (packaged models), the size and mtime of the tokenizer files
    (local folders), or the cached revision (hub ids), plus the ``transformers`` and
    ``tokenizers`` versions.
    """
    parts = [spec] + [_version(d) for d in ("transformers", "tokenizers")]
    if spec in PACKAGED_MODELS:
        parts += [_version(PACKAGED_MODELS[spec].package), _files_stamp(packaged_model_dir(spec))]
    elif _is_path(spec):
        parts.append(_files_stamp(Path(spec).expanduser()))
    else:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(spec, "tokenizer_config.json")
        parts.append(Path(hit).parent.name if isinstance(hit, str) else "not cached")
    return "|".join(parts)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _files_stamp(folder: Path) -> str:
    """Name, size and mtime of a model folder's files other than weights (``-`` if it is not a folder)."""
    if not folder.is_dir():
        return "-"
    stamps = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix not in _WEIGHT_SUFFIXES:
            st = p.stat()
            stamps.append(f"{p.name}:{st.st_size}:{st.st_mtime_ns}")
    return ",".join(stamps)


def _backend(tokenizer, max_length: int, pad: bool):
    """A copy of the tokenizer's Rust backend that truncates (and pads) to ``max_length`` as
    ``tokenizer(..., truncation=True, padding="max_length")`` would; the shared one is left as it is."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    backend.enable_truncation(max_length, direction=getattr(tokenizer, "truncation_side", "right"))
    if pad:
        backend.enable_padding(length=max_length, direction=getattr(tokenizer, "padding_side", "right"),
                               pad_id=tokenizer.pad_token_id, pad_type_id=getattr(tokenizer, "pad_token_type_id", 0),
                               pad_token=tokenizer.pad_token)
    else:
        backend.no_padding()
    return backend


def tokenize(texts: list[str], tokenizer, max_length: int, progress: bool = False) -> tuple[np.ndarray, int]:
    """Token ids and attention masks of ``texts``, padded and truncated to ``max_length``.

    The same ids and mask as ``tokenizer(texts, padding="max_length", truncation=True,
    max_length=max_length)``, through the tokenizer's Rust backend in batches (faster: no Python
    objects per token).

    Args:
        texts: the texts, in store order.
        tokenizer: a fast ``transformers`` tokenizer (:func:`load_tokenizer`).
        max_length: tokens per row, the tokenizer's special tokens (``[CLS]``, ``[SEP]``) included.
        progress: show a progress bar (on a terminal).

    Returns:
        ``(rows, truncated)``: int32 ``(len(texts), 2, max_length)`` with ids in ``[:, 0]`` and the
        mask in ``[:, 1]``, and how many texts had more than ``max_length`` tokens (and lost the
        rest). A text counts as truncated only if it did not fit: one of exactly ``max_length``
        tokens is whole.
    """
    padded, longer = _backend(tokenizer, max_length, pad=True), _backend(tokenizer, max_length + 1, pad=False)
    rows = np.zeros((len(texts), 2, max_length), np.int32)
    truncated = 0
    starts = range(0, len(texts), _BATCH)
    for start in progress_bar(starts, progress and len(texts) > _BATCH, desc="tokenizing", unit="batch"):
        batch = list(texts[start : start + _BATCH])
        encs = padded.encode_batch(batch)
        rows[start : start + len(batch), 0] = [e.ids for e in encs]
        rows[start : start + len(batch), 1] = [e.attention_mask for e in encs]
        # only a text that fills every position can have been cut: encode those again with one
        # more position, and it was cut iff it fills that one too
        full = np.flatnonzero(rows[start : start + len(batch), 1].sum(axis=1) == max_length)
        if len(full):
            truncated += sum(len(e.ids) > max_length for e in longer.encode_batch([batch[i] for i in full]))
    return rows, int(truncated)
