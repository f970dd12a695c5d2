"""Ray Tune pieces of a sweep: an Optuna searcher that waits for the final metric, and progress lines.

Trials report once per epoch (``epoch``, ``val_acc``: what ASHA watches) and once at the end
(target accuracy: what the searcher optimises). Imported only when a sweep runs (it imports Ray).

Example:
    >>> lines = TrialLines("acc_1shot", ["tasks.M"])            # doctest: +SKIP
    >>> tune.RunConfig(callbacks=[lines])                       # doctest: +SKIP
"""

from __future__ import annotations

from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch


def _short(v: object) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    return f"{v:.3g}" if isinstance(v, float) else str(v)


class FinalMetricOptuna(OptunaSearch):
    """OptunaSearch that skips per-epoch reports: they carry ``val_acc``, not the sweep's metric."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


class TrialLines(Callback):
    """One concise line per finished, early-stopped or failed trial.

    Args:
        metric: the sweep's metric (``acc_1shot``); its CI is ``ci95_1shot``.
        keys: the searched keys, printed with their sampled values.
    Lines go to stdout. The callback is pickled with the Tuner, so it holds no function.
    """

    def __init__(self, metric: str, keys: list[str]) -> None:
        self.metric, self.keys, self.ended = metric, keys, 0

    @staticmethod
    def echo(line: str) -> None:
        print(line, flush=True)

    def line(self, trial, what: str) -> str:
        r = trial.last_result or {}
        params = " ".join(f"{k}={_short((trial.config or {}).get(k))}" for k in self.keys)
        acc, ci = r.get(self.metric), r.get(self.metric.replace("acc_", "ci95_", 1))
        if isinstance(acc, float):
            score = f"{self.metric} {100 * acc:.2f}" + (f" ± {100 * ci:.2f}" if isinstance(ci, float) else "")
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
