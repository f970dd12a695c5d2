"""A sweep's past: the finished trials in its folder, its segments, and replaying them into Optuna.

A sweep folder may hold several *segments*: the first run, then each extension (a rerun with a
larger ``search.num_samples``, or ``--add N``) runs its own Tuner in the same Tune experiment
folder. ``sweep.json`` lists them; an extension's searcher starts warm with every finished
trial (:func:`replay`), and ``trials.csv`` lists the trials of every segment once.

A finished trial is read from its own folder: ``params.json`` (what Tune gave the trial: the
dotted keys and, for a subset, Optuna's include flags) and the last line of ``result.json``
that carries every metric searched.

Example:
    >>> import optuna
    >>> study = optuna.create_study(direction="maximize")
    >>> past = [PastTrial("t1", {"tasks.M": 25}, [0.5]), PastTrial("t2", {"tasks.M": 999}, [0.9])]
    >>> replay(study, past, {"tasks.M": {"choice": [25, 100]}})  # 999 is not in this space
    (1, ['t2'])
    >>> [t.params for t in study.trials], study.best_value
    ([{'tasks.M': 25}], 0.5)
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from mtft_ray.errors import MtftError
from mtft_ray.storage import Storage
from mtft_ray.sweep.schema import Distribution, flag_name
from mtft_ray.sweep.space import suggest

log = logging.getLogger("mtft_ray")


@dataclass(frozen=True)
class PastTrial:
    """One finished trial: its folder name, its Tune config and its metric values (in order)."""

    name: str
    params: dict[str, Any]
    values: list[float]


def trial_folders(storage: Storage) -> list[str]:
    """Names of the trial folders directly under the sweep folder (those with a ``params.json``)."""
    import pyarrow.fs as pafs

    entries = storage.filesystem.get_file_info(pafs.FileSelector(storage.root, allow_not_found=True))
    dirs = sorted(PurePosixPath(e.path).name for e in entries if e.type == pafs.FileType.Directory)
    return [d for d in dirs if storage.exists(d, "params.json")]


def _final(lines: bytes, metrics: list[str]) -> dict | None:
    for line in reversed(lines.decode(errors="replace").splitlines()):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and all(_number(doc.get(m)) for m in metrics):
            return doc
    return None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def finished_trials(storage: Storage, metrics: list[str]) -> list[PastTrial]:
    """Every trial in the sweep folder that reported all ``metrics`` (folder order)."""
    out = []
    for name in trial_folders(storage):
        try:
            params = json.loads(storage.read_bytes(name, "params.json"))
            final = _final(storage.read_bytes(name, "result.json"), metrics) if storage.exists(name, "result.json") \
                else None
        except (OSError, ValueError) as e:
            log.warning("skipping trial %s of %s: %s", name, storage.uri(), e)
            continue
        if final is not None and isinstance(params, dict):
            out.append(PastTrial(name, params, [float(final[m]) for m in metrics]))
    return out


def optuna_params(params: dict[str, Any], space: dict[str, dict]) -> dict[str, Any] | None:
    """The values Optuna suggested for a trial's ``params`` (include flags for a subset, JSON text
    for a list-valued choice), or None when they do not fit ``space``."""
    fixed: dict[str, Any] = {}
    for key, spec in space.items():
        d = Distribution.model_validate(spec)
        if d.subset is not None:
            chosen = params.get(key)
            if not isinstance(chosen, list) or not chosen or not set(chosen) <= set(d.subset):
                return None
            fixed.update({flag_name(key, item): item in chosen for item in d.subset})
            continue
        if key not in params:
            return None
        v = params[key]
        if d.choice is not None:
            if v not in d.choice:
                return None
            fixed[key] = v if all(x is None or isinstance(x, (bool, int, float, str)) for x in d.choice) \
                else json.dumps(v)
        else:
            lo, hi = d.int_ or d.float_
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not lo <= v <= hi:
                return None
            fixed[key] = v
    return fixed


def replay(study, trials: list[PastTrial], space: dict[str, dict]) -> tuple[int, list[str]]:
    """Add each past trial to an Optuna ``study`` as a complete trial of this ``space``.

    Returns:
        ``(added, skipped)``: how many were added, and the names of those whose values do not
        fit the space (another range, a choice no longer offered).
    """
    import optuna

    added, skipped = 0, []
    for past in trials:
        fixed = optuna_params(past.params, space)
        if fixed is None:
            skipped.append(past.name)
            continue
        study.enqueue_trial(fixed, skip_if_exists=False)
        trial = study.ask()
        suggest(trial, space)
        if any(trial.params.get(k) != v for k, v in fixed.items() if k in trial.params):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)  # Optuna refused a fixed value
            skipped.append(past.name)
            continue
        study.tell(trial, past.values if len(past.values) > 1 else past.values[0])
        added += 1
    return added, skipped


def read_sweep_doc(storage: Storage) -> dict:
    """``sweep.json`` of a sweep folder.

    Raises:
        MtftError: it is missing or not JSON.
    """
    try:
        doc = json.loads(storage.read_bytes("sweep.json"))
    except FileNotFoundError:
        raise MtftError(f"{storage.uri()} holds no sweep.json: not a sweep folder") from None
    except (OSError, ValueError) as e:
        raise MtftError(f"{storage.uri('sweep.json')} cannot be read: {e}") from None
    if not isinstance(doc, dict) or "sweep" not in doc:
        raise MtftError(f"{storage.uri('sweep.json')} is not a sweep's record (no 'sweep' key)")
    return doc
