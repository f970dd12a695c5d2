"""What a trial costs and what a sweep may spend: spend metrics, the budget gate, estimates.

A trial's *spend* is its wall hours times what it holds (its driver plus its Ray Train
workers, :class:`mtft_ray.sweep.tuner.TrialPlan`'s ``per_trial``): ``gpu_hours``,
``cpu_hours`` and, when ``search.price_per_hour`` gives the hourly price of a node, ``dollars``:
the hours times the share of a node the trial holds (its GPUs over the node's GPUs if the node
has any, else its CPUs over the node's CPUs). Every trial reports these; the analysis sums them.

``search.budget`` caps the spend: :class:`BudgetGate` lets a new trial start only while the
finished trials' spend plus the running trials' estimate stays under every cap, so the sweep
stops after the trial that reaches it. Before any trial has finished, the estimate is the
dry-run's (a calibration, :mod:`mtft_ray.train.calibration`); after, the mean of the finished
trials' spend.

Example:
    >>> s = spend(1800.0, {"CPU": 2.0}, price_per_hour=0.4, node={"CPU": 8.0})
    >>> s["trial_hours"], s["cpu_hours"], s["gpu_hours"], s["dollars"]
    (0.5, 1.0, 0.0, 0.05)
    >>> gate = BudgetGate({"cpu_hours": 1.5}, estimate={"cpu_hours": 1.0})
    >>> gate.allows(running=0), gate.allows(running=1), gate.allows(running=2)
    (True, True, False)
    >>> gate.finished({"cpu_hours": 1.2}); gate.allows(running=0)
    True
    >>> gate.finished({"cpu_hours": 0.4}); gate.allows(running=0)  # 1.6 spent: the cap is reached
    False
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mtft_ray.errors import MtftError

SPEND_METRICS = ("trial_hours", "gpu_hours", "cpu_hours", "dollars")


def node_share(per_trial: dict[str, float], node: dict[str, float]) -> float:
    """The share of one node a trial holds: GPUs over the node's GPUs if it has any, else CPUs."""
    if node.get("GPU", 0.0) > 0:
        return per_trial.get("GPU", 0.0) / node["GPU"]
    if node.get("CPU", 0.0) > 0:
        return per_trial.get("CPU", 0.0) / node["CPU"]
    raise MtftError(f"search.node {node}: give the node's CPU (and GPU) count to price a trial's share of it")


def spend(seconds: float, per_trial: dict[str, float], price_per_hour: float | None = None,
          node: dict[str, float] | None = None) -> dict[str, float]:
    """A trial's spend metrics (see the module): ``trial_hours``, ``gpu_hours``, ``cpu_hours``,
    and ``dollars`` when priced."""
    hours = max(0.0, float(seconds)) / 3600.0
    out = {"trial_hours": round(hours, 6), "gpu_hours": round(hours * per_trial.get("GPU", 0.0), 6),
           "cpu_hours": round(hours * per_trial.get("CPU", 0.0), 6)}
    if price_per_hour is not None:
        out["dollars"] = round(hours * price_per_hour * node_share(per_trial, node or {}), 6)
    return out


@dataclass
class BudgetGate:
    """Whether another trial may start under ``caps`` (by spend metric).

    Attributes:
        caps: ``{"gpu_hours": 2.0, ...}``: what may be spent in all (``search.budget``).
        estimate: one trial's expected spend before any has finished.
        spent: the finished trials' spend so far, by metric (earlier segments of an extended
            sweep included).
        n_finished: trials whose spend is in ``spent``.
    """

    caps: dict[str, float]
    estimate: dict[str, float]
    spent: dict[str, float] = field(default_factory=dict)
    n_finished: int = 0
    stopped: bool = False

    def finished(self, trial_spend: dict[str, float] | None) -> None:
        """Add a finished (or failed) trial's spend; a trial that reported none counts as estimated."""
        got = trial_spend or {}
        for k in self.caps:
            v = got.get(k)
            self.spent[k] = self.spent.get(k, 0.0) + (float(v) if _finite(v) else self.estimate.get(k, 0.0))
        self.n_finished += 1

    def per_trial(self) -> dict[str, float]:
        """The expected spend of one more trial: the finished trials' mean, else the estimate."""
        if self.n_finished:
            return {k: self.spent.get(k, 0.0) / self.n_finished for k in self.caps}
        return {k: self.estimate.get(k, 0.0) for k in self.caps}

    def allows(self, running: int) -> bool:
        """True while the spend so far plus ``running`` trials' expected spend is under every cap."""
        if self.stopped:
            return False
        each = self.per_trial()
        ok = all(self.spent.get(k, 0.0) + running * each[k] < cap for k, cap in self.caps.items())
        self.stopped = not ok and running == 0  # nothing running and no room: this sweep is done
        return ok

    def describe(self) -> str:
        return ", ".join(f"{k} {self.spent.get(k, 0.0):.4g} of {cap:g}" for k, cap in self.caps.items())


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def estimate_trial(sweep, base, per_trial: dict[str, float], kind: str | None = None,
                   price_per_hour: float | None = None, node: dict[str, float] | None = None,
                   directory=None) -> tuple[dict[str, float], list[str]]:
    """One trial's expected spend (and ``seconds``, from ``rate_img_s`` and ``overhead_s``) on a machine
    kind, and where the figures came from.

    The seconds are the trial's expected finetuning images (:func:`~mtft_ray.sweep.space.estimate_images`)
    at the kind's calibrated rate plus the per-trial overhead (:mod:`mtft_ray.train.calibration`).

    Args:
        sweep, base: the sweep and its base experiment.
        per_trial: what one trial holds (``TrialPlan.per_trial``).
        kind: the machine kind trials run on (default: this machine's).
        price_per_hour, node: as in :func:`spend` (default: ``search.price_per_hour`` / ``search.node``).
    """
    from mtft_ray.sweep.space import trial_seconds
    from mtft_ray.train.calibration import machine_kind, train_rate, trial_overhead

    kind = kind or machine_kind()
    rate, rate_from = train_rate(kind, base.backbone.name, base.data.image_size, strategy=base.train.strategy,
                                 workers=base.train.workers, directory=directory)
    overhead, overhead_from = trial_overhead(kind)
    seconds = trial_seconds(sweep, base, rate, overhead)
    price = price_per_hour if price_per_hour is not None else sweep.search.price_per_hour
    node = node or sweep.search.node or {"CPU": float(per_trial.get("CPU", 1.0)) or 1.0, "GPU": per_trial.get("GPU", 0.0)}
    return {"seconds": seconds, "rate_img_s": rate, "overhead_s": overhead, **spend(seconds, per_trial, price, node)}, [
        f"rate {rate:.0f} img/s: {rate_from}", f"overhead {overhead:.0f} s: {overhead_from}"]


def check_budget(caps: dict[str, float], one_trial: dict[str, float], where: str) -> None:
    """Refuse a budget that cannot pay for one trial of the estimate.

    Raises:
        MtftError: naming the cap, the estimate and where it came from.
    """
    short = [f"budget.{k} {cap:g} < one trial's ~{one_trial.get(k, 0.0):.4g}" for k, cap in caps.items()
             if one_trial.get(k, 0.0) > cap]
    if short:
        raise MtftError(f"{where}: search.budget is smaller than one trial ({'; '.join(short)}): raise it, or "
                        f"shrink the trial (tasks.M, finetune.epochs)")
    zero = [k for k in caps if one_trial.get(k, 0.0) <= 0]
    if zero:
        raise MtftError(f"{where}: search.budget.{zero[0]} caps a spend these trials never incur (they hold "
                        f"no {'GPU' if zero[0] == 'gpu_hours' else 'priced resource'}); cap cpu_hours or dollars")
