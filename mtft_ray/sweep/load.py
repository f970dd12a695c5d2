"""Reading a sweep file: the sweep config, its base experiment (validated once), the space checked.

A ``screen`` distribution (``tasks.domains: {screen: screen.json, top: 5}``) is resolved here,
once: the screen file ``mtft-ray screen`` wrote is read and checked, and the entry becomes a
choice over its ``top`` best subsets (:func:`resolve_screen`).

Example:
    >>> sweep, base = load_sweep("sweeps/quickstart.yaml")   # doctest: +SKIP
    >>> base.tasks.M, list(sweep.search.space)                # doctest: +SKIP
    (400, ['selection.strategy', 'tasks.M'])
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from mtft_ray.config.load import apply_overrides, read_yaml, validate
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.sweep.schema import Distribution, SweepConfig
from mtft_ray.sweep.space import check_space

SCREEN_FILE = "screen.json"  # what 'mtft-ray screen --out DIR' writes in DIR


def resolve_base(sweep: SweepConfig, where: Path | None) -> ExperimentConfig:
    """The base experiment (file or inline, plus ``overrides``), validated once."""
    if isinstance(sweep.base, str):
        path = Path(sweep.base)
        if not path.is_absolute() and where is not None:
            path = where.parent / path
        raw = read_yaml(path)
    else:
        raw = copy.deepcopy(sweep.base)
    apply_overrides(raw, sweep.overrides)
    return validate(ExperimentConfig, raw, f"{where or 'sweep'}: base experiment")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> tuple[SweepConfig, ExperimentConfig]:
    """The sweep config and its resolved base experiment, with the search space checked.

    Args:
        path: the sweep YAML.
        overrides: dotted overrides of the sweep file (``search.num_samples=2``); keys that are not
            sweep sections (``tasks.M=50``) are appended to the base experiment's ``overrides``.

    Raises:
        MtftError: naming the file and the bad key.
    """
    path = Path(path)
    raw = read_yaml(path)
    if "search" not in raw:
        raise MtftError(f"{path}: a sweep file needs a 'search:' section (is this an experiment config? "
                        f"use 'mtft-ray run')")
    own = [o for o in overrides or [] if o.split(".", 1)[0].split("=", 1)[0] in SweepConfig.model_fields]
    raw["overrides"] = list(raw.get("overrides") or []) + [o for o in overrides or [] if o not in own]
    apply_overrides(raw, own)
    sweep = validate(SweepConfig, raw, str(path))
    base = resolve_base(sweep, path)
    sweep = resolve_screen(sweep, base, path)
    check_space(sweep, base, str(path))
    return sweep, base


def read_screen(path: str | Path, key: str, items: list[str] | None, where: str) -> dict[str, Any]:
    """A screen file's document, checked to rank subsets of ``key`` (of ``items``, when given).

    Raises:
        MtftError: a missing or unreadable file, not a screen file, or one made for another key or items.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise MtftError(f"{where}: screen file {path} does not exist (write it with 'mtft-ray screen "
                        f"SWEEP.yaml --out {path.parent}')") from None
    except (OSError, ValueError) as e:
        raise MtftError(f"{where}: screen file {path} is not readable JSON ({str(e)[:80]})") from None
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows or "key" not in doc or not isinstance(doc.get("items"), list) \
            or any(not isinstance(r, dict) or not isinstance(r.get("subset"), list) or "rank" not in r for r in rows):
        raise MtftError(f"{where}: {path} is not a screen file (it needs 'key', 'items' and ranked 'rows' of "
                        f"subsets; 'mtft-ray screen' writes one)")
    if doc["key"] != key:
        raise MtftError(f"{where}: screen file {path} ranks subsets of {doc['key']!r}, not {key!r}")
    if items is not None and sorted(doc["items"]) != sorted(items):
        raise MtftError(f"{where}: screen file {path} was made for the items {doc['items']}, not {items}")
    stray = sorted({x for r in rows for x in r["subset"]} - set(doc["items"]))
    if stray:
        raise MtftError(f"{where}: screen file {path} ranks subsets with {stray}, which are not among its items")
    return doc


def top_subsets(doc: dict[str, Any], top: int) -> list[list[str]]:
    """The ``top`` best-ranked subsets of a screen document (all of them if it has fewer)."""
    return [list(r["subset"]) for r in sorted(doc["rows"], key=lambda r: r["rank"])[:top]]


def resolve_screen(sweep: SweepConfig, base: ExperimentConfig, where: Path | None) -> SweepConfig:
    """The sweep with each ``screen`` entry of its space turned into a choice of the screen's
    ``top`` best subsets (the screen path made absolute, the items recorded as ``subset``).

    The screen must have been made for the same key and items (when the entry names them), the
    same target (``selection.target_domain``) and the same backbone.

    Raises:
        MtftError: naming the sweep file, the key and what does not match.
    """
    space = dict(sweep.search.space)
    for key, d in sweep.search.space.items():
        if d.kind != "screen":
            continue
        label = f"{where or 'sweep'}: search.space.{key}"
        path = Path(d.screen)
        if not path.is_absolute() and where is not None:
            path = where.parent / path
        doc = read_screen(path, key, d.subset, label)
        target = base.selection.target_domain or "target split"
        if doc.get("target") != target:
            raise MtftError(f"{label}: screen file {path} was made for the target {doc.get('target')!r}, but the "
                            f"sweep's target is {target!r} (selection.target_domain)")
        if doc.get("backbone") != base.backbone.name:
            raise MtftError(f"{label}: screen file {path} scored {doc.get('backbone')!r} features, but the sweep "
                            f"finetunes {base.backbone.name!r} (backbone.name)")
        space[key] = Distribution(choice=top_subsets(doc, d.screen_top), screen=str(path.resolve()), top=d.screen_top,
                                  subset=list(doc["items"]))
    if space == sweep.search.space:
        return sweep
    return sweep.model_copy(update={"search": sweep.search.model_copy(update={"space": space})})
