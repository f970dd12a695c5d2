"""Ray Tune pieces of a sweep: an Optuna searcher that waits for the final metrics, its sampler,
and progress lines.

Trials report once per epoch (``epoch``, ``val_acc``: what ASHA watches) and once at the end
(target accuracy, time and spend: what the searcher optimises, one metric or several). Imported
only when a sweep runs (it imports Ray).

Example:
    >>> search = SearchConfig.model_validate({"space": {"tasks.M": {"int": [2, 8]}}, "sampler": "nsga2",
    ...                                       "metric": ["acc_1shot", "seconds"], "mode": ["max", "min"]})
    >>> type(optuna_sampler(search, seed=0)).__name__
    'NSGAIISampler'
    >>> lines = TrialLines(search.metrics, ["tasks.M"])         # doctest: +SKIP
    >>> tune.RunConfig(callbacks=[lines])                       # doctest: +SKIP
"""

from __future__ import annotations

import math

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from mtft_ray.sweep.schema import SearchConfig

NSGA2_POPULATION = (4, 50)  # NSGA-II's population: a quarter of the trials, within these bounds


def optuna_sampler(search: SearchConfig, seed: int | None):
    """The Optuna sampler of ``search.sampler``, seeded: pass it as ``OptunaSearch(sampler=...)``
    with ``seed=None`` (Ray ignores its own seed once a sampler is given, and warns).

    ``tpe`` is exactly the sampler Ray builds by default (``TPESampler(seed=seed)``; Optuna makes
    it MOTPE for several objectives), so single-objective sweeps sample as before. ``nsga2``'s
    population is a quarter of ``num_samples`` within :data:`NSGA2_POPULATION`: with Optuna's
    default of 50 a sweep of 50 trials or fewer would be its random first generation alone.

    >>> s = SearchConfig.model_validate({"space": {"tasks.M": {"int": [2, 8]}}, "num_samples": 40})
    >>> type(optuna_sampler(s, seed=0)).__name__
    'TPESampler'
    >>> optuna_sampler(s.model_copy(update={"sampler": "nsga2"}), seed=0)._population_size
    10
    """
    import optuna

    if search.sampler == "nsga2":
        lo, hi = NSGA2_POPULATION
        return optuna.samplers.NSGAIISampler(population_size=min(hi, max(lo, search.num_samples // 4)), seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _short(v: object) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _metrics(metric: str | list[str]) -> list[str]:
    return list(metric) if isinstance(metric, list) else [metric]


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class FinalMetricOptuna(OptunaSearch):
    """OptunaSearch that skips per-epoch reports: they carry ``val_acc``, not the sweep's metrics.

    With several metrics (a list, and a list of modes), a trial that ends without every one of them
    finite (stopped early, failed) is told to the study as pruned (failed if it raised), not left
    running there: Ray would tell Optuna ``[value, None]``, which Optuna refuses.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if all(m in result for m in _metrics(self.metric)):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if isinstance(self.metric, list) and result and not all(_finite(result.get(m)) for m in self.metric):
            result = None
        super().on_trial_complete(trial_id, result, error)


def _score(name: str, r: dict) -> str:
    """One objective of a trial's report: an accuracy in percent ± its CI, anything else in 4 digits."""
    v = r.get(name)
    if "acc_" in name and name.endswith("shot") and isinstance(v, float):
        ci = r.get(name.replace("acc_", "ci95_", 1))
        return f"{name} {100 * v:.2f}" + (f" ± {100 * ci:.2f}" if isinstance(ci, float) else "")
    return f"{name} {v:.4g}" if _finite(v) else ""


class TrialLines(Callback):
    """One concise line per finished, early-stopped or failed trial.

    Args:
        metric: the sweep's metric (``acc_1shot``; its CI is ``ci95_1shot``), or its metrics
            (``[acc_1shot, gpu_hours]``): each is printed; the first decides "done".
        keys: the searched keys, printed with their sampled values.
    Lines go to stdout. The callback is pickled with the Tuner, so it holds no function.
    """

    def __init__(self, metric: str | list[str], keys: list[str]) -> None:
        self.metrics, self.keys, self.ended = _metrics(metric), keys, 0
        self.metric = self.metrics[0]

    @staticmethod
    def echo(line: str) -> None:
        print(line, flush=True)

    def line(self, trial, what: str) -> str:
        r = trial.last_result or {}
        params = " ".join(f"{k}={_short((trial.config or {}).get(k))}" for k in self.keys)
        if _finite(r.get(self.metric)):
            score = "  ".join(x for x in (_score(m, r) for m in self.metrics) if x)
        elif isinstance(r.get("val_acc"), float):
            score = f"val_acc {r['val_acc']:.3f} at epoch {r.get('epoch')}"
        else:
            score = ""
        sel = [f"{name} {r[key]:.3f}" for name, key in (("diversity", "selection_diversity"),
                                                        ("consistency", "selection_mean_consistency"))
               if isinstance(r.get(key), float)]
        warn = f"WARNING: {r['warnings']}" if r.get("warnings") else ""
        return "  ".join(x for x in (f"[{self.ended}] trial {trial.trial_id} {what}:", params, score, *sel, warn) if x)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.ended += 1
        self.echo(self.line(trial, "done" if self.metric in (trial.last_result or {}) else "stopped early"))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.ended += 1
        self.echo(self.line(trial, "FAILED"))
