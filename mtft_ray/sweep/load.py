"""Reading a sweep file: the sweep config, its base experiment (validated once), the space checked.

Example:
    >>> sweep, base = load_sweep("sweeps/quickstart.yaml")   # doctest: +SKIP
    >>> base.tasks.M, list(sweep.search.space)                # doctest: +SKIP
    (400, ['selection.strategy', 'tasks.M'])
"""

from __future__ import annotations

import copy
from pathlib import Path

from mtft_ray.config.load import apply_overrides, read_yaml, validate
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.sweep.schema import SweepConfig
from mtft_ray.sweep.space import check_space


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
    check_space(sweep, base, str(path))
    return sweep, base
