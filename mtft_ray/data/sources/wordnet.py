"""The ``wordnet`` source: the built-in language benchmark, from WordNet 3.0's noun database.

A class is a noun synset with at least ``min_hyponyms`` direct hyponyms (``~`` and instance
hyponyms ``~i``); its texts are those hyponyms' definitions (the gloss with its quoted examples
cut off), and its domain is its lexicographer file (``noun.animal``, ``noun.artifact``, ...). A
class is named by its first word and offset, ``noun.animal/dog.02084071``, so homonyms stay
apart. A hyponym under two classes gives its definition to both (counted in ``meta`` as
``shared_texts``).

``data.noun`` (format ``wndb(5WN)``) is parsed here: no ``nltk``; Debian's ``wordnet-base``
provides it (``./install.sh`` installs it). A line that does not parse stops the build with the
file and line number.

Example:
    data:
      source: wordnet
      options: {min_hyponyms: 10, max_length: 64}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mtft_ray.config.sources import WordNetOptions
from mtft_ray.data.sources.registry import register
from mtft_ray.data.sources.text import seeded_subset, tokenized_store
from mtft_ray.data.store import SampleStore
from mtft_ray.data.tokenize import tokenizer_fingerprint
from mtft_ray.errors import MtftError

__all__ = ["LEXNAMES", "SOURCE", "Synset", "definition", "find_data_noun", "parse_data_noun", "wordnet_rows"]

_VERSION = 1  # bump whenever the store given (options, data.noun, tokenizer) changes
_SYSTEM_DIR = "/usr/share/wordnet"
_HYPONYM = {"~", "~i"}
_EXAMPLE = re.compile(r';\s*"')  # where a gloss's quoted examples begin

# lexnames(5WN): the noun lexicographer files, by lex_filenum
LEXNAMES = {
    3: "noun.Tops", 4: "noun.act", 5: "noun.animal", 6: "noun.artifact", 7: "noun.attribute", 8: "noun.body",
    9: "noun.cognition", 10: "noun.communication", 11: "noun.event", 12: "noun.feeling", 13: "noun.food",
    14: "noun.group", 15: "noun.location", 16: "noun.motive", 17: "noun.object", 18: "noun.person",
    19: "noun.phenomenon", 20: "noun.plant", 21: "noun.possession", 22: "noun.process", 23: "noun.quantity",
    24: "noun.relation", 25: "noun.shape", 26: "noun.state", 27: "noun.substance", 28: "noun.time",
}


@dataclass(frozen=True)
class Synset:
    """One line of ``data.noun``.

    Attributes:
        offset: the synset's offset (its id).
        lexname: its lexicographer file (``noun.animal``).
        words: its words, in order (``hot_dog``: underscores for spaces).
        hyponyms: offsets of its direct hyponyms and instance hyponyms, in file order, no repeats.
        gloss: everything after ``|``: definition, then quoted examples.
        line: its line number in the file (1-based).
    """

    offset: int
    lexname: str
    words: tuple[str, ...]
    hyponyms: tuple[int, ...]
    gloss: str
    line: int


def find_data_noun(path: str | None) -> Path:
    """``data.noun`` in ``path`` (a dict folder, or the file itself), else in ``/usr/share/wordnet``, then ``$WNHOME/dict``.

    Raises:
        MtftError: not found (one line saying where it looked and how to install it).
    """
    if path:
        candidates = [Path(path).expanduser()]
    else:
        candidates = [Path(_SYSTEM_DIR)] + ([Path(os.environ["WNHOME"]).expanduser() / "dict"]
                                           if os.environ.get("WNHOME") else [])
    for c in candidates:
        if c.is_file() and c.name == "data.noun":
            return c
        if (c / "data.noun").is_file():
            return c / "data.noun"
    where = ", ".join(str(c) for c in candidates) + ("" if path or os.environ.get("WNHOME") else " ($WNHOME is not set)")
    raise MtftError(f"WordNet not found: no data.noun in {where}; install it with apt-get install wordnet-base "
                    f"(or ./install.sh), or set data.options.path to WordNet's dict folder")


def _garbled(path: Path, lineno: int, why: str, line: str) -> MtftError:
    shown = line.strip()
    return MtftError(f"{path} line {lineno}: garbled data.noun line ({why}): "
                     f"{shown[:60]!r}{'...' if len(shown) > 60 else ''}")


def _parse_line(line: str, lineno: int, path: Path) -> Synset:
    """One synset line: ``offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} p_cnt (ptr){p_cnt} | gloss``."""
    head, bar, gloss = line.partition("|")
    f = head.split()
    if not bar:
        raise _garbled(path, lineno, "no '|' before the gloss", line)
    try:
        if len(f) < 6:
            raise ValueError("too few fields")
        offset, lex, ss_type = int(f[0]), int(f[1]), f[2]
        if ss_type != "n":
            raise ValueError(f"synset type {ss_type!r}, not 'n'")
        if lex not in LEXNAMES:
            raise ValueError(f"lex_filenum {f[1]} is no noun lexicographer file")
        w_cnt = int(f[3], 16)
        if w_cnt < 1:
            raise ValueError("no words")
        p_at = 4 + 2 * w_cnt
        if len(f) <= p_at:
            raise ValueError(f"{w_cnt} words announced, fewer found")
        p_cnt = int(f[p_at])
        if len(f) != p_at + 1 + 4 * p_cnt:
            raise ValueError(f"{p_cnt} pointers announced, {(len(f) - p_at - 1) / 4:g} found")
        hyponyms: dict[int, None] = {}
        for i in range(p_at + 1, len(f), 4):
            symbol, target, pos = f[i], int(f[i + 1]), f[i + 2]
            if symbol in _HYPONYM and pos == "n":
                hyponyms[target] = None
    except ValueError as e:
        raise _garbled(path, lineno, str(e), line) from None
    return Synset(offset, LEXNAMES[lex], tuple(f[4:p_at:2]), tuple(hyponyms), gloss.strip(), lineno)


def parse_data_noun(path: Path) -> dict[int, Synset]:
    """Every synset of a ``data.noun`` file, by offset (the license header, lines starting with two spaces, skipped).

    Raises:
        MtftError: unreadable, a line that does not parse, a repeated offset, or a hyponym pointer
            to a synset the file does not have (each naming the file and line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MtftError(f"unreadable WordNet file {path}: {e}") from None
    synsets: dict[int, Synset] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith("  ") or not line.strip():
            continue
        s = _parse_line(line, lineno, path)
        if s.offset in synsets:
            raise _garbled(path, lineno, f"offset {s.offset:08d} already on line {synsets[s.offset].line}", line)
        synsets[s.offset] = s
    for s in synsets.values():
        for h in s.hyponyms:
            if h not in synsets:
                raise MtftError(f"{path} line {s.line}: hyponym pointer to synset {h:08d}, which is not in the file "
                                f"(truncated or garbled data.noun?)")
    if not synsets:
        raise MtftError(f"{path}: no synsets (an empty or header-only data.noun)")
    return synsets


def definition(gloss: str) -> str:
    """A gloss without its quoted examples: everything before the first ``; "`` (or nothing, if it
    starts with a quote), trailing semicolons and whitespace removed.

    >>> definition('a member of the genus Canis; "the dog barked all night"; "a dog\\'s life"')
    'a member of the genus Canis'
    """
    gloss = gloss.strip()
    if gloss.startswith('"'):
        return ""
    return _EXAMPLE.split(gloss, 1)[0].rstrip(" ;")


def wordnet_rows(options: WordNetOptions, synsets: dict[int, Synset], seed: int) -> tuple[list[tuple[str, str, str]], dict]:
    """The sorted ``(domain, class, text)`` rows of the classes, and counts: hyponyms left out for an
    empty definition, classes left with no text, texts over ``max_per_class``, and hyponyms whose
    definition went to more than one class (``shared_texts``)."""
    classes = sorted((s for s in synsets.values() if len(s.hyponyms) >= options.min_hyponyms), key=lambda s: s.offset)
    rows: list[tuple[str, str, str]] = []
    empty = over = textless = 0
    uses: Counter[int] = Counter()
    for s in classes:
        name = f"{s.words[0]}.{s.offset:08d}"
        texts = []
        for h in s.hyponyms:
            text = definition(synsets[h].gloss)
            if text:
                texts.append((text, h))
            else:
                empty += 1
        texts.sort()
        textless += not texts
        keep = seeded_subset(len(texts), options.max_per_class, seed, f"{s.lexname}/{name}")
        over += len(texts) - len(keep)
        for i in keep:
            rows.append((s.lexname, name, texts[i][0]))
            uses[texts[i][1]] += 1
    rows.sort()
    counts = {"empty_definitions": empty, "classes_without_text": textless, "over_max_per_class": over,
              "shared_texts": sum(1 for n in uses.values() if n > 1)}
    return rows, counts


class _WordNet:
    name = "wordnet"
    Options = WordNetOptions

    def fingerprint(self, options: WordNetOptions, image_size: int, seed: int) -> str:
        """Hash of the options, ``data.noun``'s path, size and mtime, the tokenizer's stamp, and the seed
        when ``max_per_class`` uses it. ``image_size`` plays no part."""
        path = find_data_noun(options.path).resolve()
        st = path.stat()
        return hashlib.sha256(json.dumps([
            _VERSION, options.model_dump(), str(path), st.st_size, st.st_mtime_ns,
            tokenizer_fingerprint(options.tokenizer), seed if options.max_per_class is not None else None,
        ]).encode()).hexdigest()[:16]

    def build(self, options: WordNetOptions, image_size: int, seed: int, progress: bool = False) -> SampleStore:
        path = find_data_noun(options.path).resolve()
        synsets = parse_data_noun(path)
        rows, counts = wordnet_rows(options, synsets, seed)
        if not rows:
            raise MtftError(f"{path}: no noun synset has min_hyponyms={options.min_hyponyms} direct hyponyms "
                            f"with a definition ({len(synsets)} synsets)")
        meta = {"source": "wordnet", "options": options.model_dump(), "data_noun": str(path),
                "synsets": len(synsets), "dropped": {k: v for k, v in counts.items() if k != "shared_texts"},
                "shared_texts": counts["shared_texts"]}
        return tokenized_store(rows, options.tokenizer, options.max_length, meta, progress)


SOURCE = register(_WordNet())
