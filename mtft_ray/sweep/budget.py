"""``search.budget`` inside Ray Tune: search algorithms that stop starting trials at the cap.

:class:`BudgetLimiter` wraps a ``Searcher`` (Optuna behind a ``ConcurrencyLimiter``) and
:class:`BudgetedVariantGenerator` is Tune's random / grid generator; both ask a
:class:`~mtft_ray.sweep.cost.BudgetGate` before each new trial and tell it each finished
trial's spend (``gpu_hours``, ``cpu_hours``, ``dollars``: reported by every trial). Running
trials always finish; once the cap is reached the search reports itself finished and the
sweep ends. Both pickle with Tune's searcher state, so a resumed sweep keeps its spend.
Imported only when a sweep runs (it imports Ray Tune).
"""

from __future__ import annotations

import logging
import os
import pickle

from ray.tune.search import BasicVariantGenerator, Searcher

from mtft_ray.sweep.cost import BudgetGate

log = logging.getLogger("mtft_ray")


def _stop_note(gate: BudgetGate) -> None:
    log.warning("search.budget reached (%s): no new trials start", gate.describe())


class BudgetLimiter(Searcher):
    """A searcher that suggests only while the gate allows one more trial (see the module)."""

    def __init__(self, searcher: Searcher, gate: BudgetGate) -> None:
        self.searcher, self.gate = searcher, gate
        self.live: set[str] = set()
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def suggest(self, trial_id: str):
        if not self.gate.allows(running=len(self.live)):
            if self.gate.stopped:
                _stop_note(self.gate)
                return Searcher.FINISHED
            return None  # the running trials may still leave room: ask again when one ends
        suggestion = self.searcher.suggest(trial_id)
        if suggestion not in (None, Searcher.FINISHED):
            self.live.add(trial_id)
        return suggestion

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)
        if trial_id in self.live:
            self.live.discard(trial_id)
            self.gate.finished(result)

    def get_state(self) -> dict:
        return {"gate": self.gate, "live": set(self.live)}

    def set_state(self, state: dict) -> None:
        self.gate, self.live = state["gate"], state["live"]

    def save(self, checkpoint_path: str) -> None:
        """One file: the wrapped searcher's own checkpoint and the gate (its spend survives a resume)."""
        inner = checkpoint_path + ".inner"
        self.searcher.save(inner)
        with open(inner, "rb") as f:
            blob = f.read()
        os.remove(inner)
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"searcher": blob, **self.get_state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        inner = checkpoint_path + ".inner"
        with open(inner, "wb") as f:
            f.write(state.pop("searcher"))
        try:
            self.searcher.restore(inner)
        finally:
            os.remove(inner)
        self.set_state(state)


class BudgetedVariantGenerator(BasicVariantGenerator):
    """Tune's random / grid generator, stopped by the gate (see the module)."""

    def __init__(self, gate: BudgetGate, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def next_trial(self):
        if not self.gate.allows(running=len(self._live_trials)):
            if self.gate.stopped:
                _stop_note(self.gate)
                self.set_finished()
            return None
        return super().next_trial()

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._live_trials:
            self.gate.finished(result)
        super().on_trial_complete(trial_id, result=result, error=error)
