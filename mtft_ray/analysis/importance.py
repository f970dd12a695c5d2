"""Optuna's parameter importance over a sweep's finished trials (an in-memory study, no Ray).

The distributions come from the sweep's search space (``choice`` → categorical, ``int`` /
``float`` → ranges, with ``log``); the evaluator is Optuna's fANOVA (a seeded random forest:
the share of the metric's variance each parameter explains), which stays sensible on the handful
of trials a small sweep has; PED-ANOVA, which compares a "good" top quantile with the rest, called
the selection strategy unimportant on the 6-trial quickstart, where it clearly matters.

Example:
    >>> imp = param_importance(data.finished(), data.space, "acc_1shot", "max")   # doctest: +SKIP
    >>> imp.values                                                                 # doctest: +SKIP
    {'tasks.M': 0.71, 'selection.strategy': 0.29}
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtft_ray.sweep.schema import flag_name

MIN_TRIALS = 4


@dataclass(frozen=True)
class Importance:
    """Importances (sum 1) of the searched keys that vary, or why there are none."""

    values: dict[str, float] = field(default_factory=dict)
    note: str = ""
    n: int = 0


def _primitive(v: Any) -> Any:
    """Optuna's categorical choices must be None, bool, int, float or str."""
    v = v.item() if isinstance(v, np.generic) else v
    return v if v is None or isinstance(v, (bool, int, float, str)) else json.dumps(v)


def _value(spec: dict, v: Any) -> Any:
    v = _primitive(v)
    return int(v) if "int" in spec else float(v) if "float" in spec else v


def _distribution(spec: dict, values: pd.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if "int" in spec:
        lo, hi = spec["int"]
        return IntDistribution(int(lo), int(hi), log=bool(spec.get("log")))
    if "float" in spec:
        lo, hi = spec["float"]
        return FloatDistribution(float(lo), float(hi), log=bool(spec.get("log")))
    choices = spec.get("choice") or sorted(values.map(_primitive).unique(), key=str)
    return CategoricalDistribution([_primitive(c) for c in choices])


def _flag_space(space: dict[str, dict]) -> dict[str, dict]:
    """A searched subset stands for its include flags (``tasks.domains[lao]``: true / false)."""
    out: dict[str, dict] = {}
    for key, spec in space.items():
        if "subset" in spec:
            out.update({flag_name(key, item): {"choice": [True, False]} for item in spec["subset"]})
        else:
            out[key] = spec
    return out


def param_importance(trials: pd.DataFrame, space: dict[str, dict], metric: str, mode: str) -> Importance:
    """fANOVA importance of each searched key that takes two or more values among ``trials``; a
    searched subset is judged item by item, through its include flags."""
    space = _flag_space(space)
    varying = [k for k in space if k in trials and trials[k].map(_primitive).nunique() > 1]
    if len(trials) < MIN_TRIALS:
        return Importance(note=f"needs ≥ {MIN_TRIALS} finished trials, the sweep has {len(trials)}", n=len(trials))
    if len(varying) < 2:
        return Importance(note=f"needs ≥ 2 searched parameters that vary; {len(varying)} do ({', '.join(varying) or 'none'})",
                          n=len(trials))
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    dists = {k: _distribution(space[k], trials[k]) for k in varying}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            for _, row in trials.iterrows():
                params = {k: _value(space[k], row[k]) for k in varying}
                study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(row[metric])))
            values = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        return Importance(note=f"Optuna could not compute it: {str(e).splitlines()[0][:200]}", n=len(trials))
    finally:
        optuna.logging.set_verbosity(verbosity)
    return Importance({k: float(v) for k, v in values.items()}, n=len(trials))
