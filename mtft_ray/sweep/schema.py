"""The sweep YAML: a base experiment config, a search space over its dotted keys, and how to search.

Example sweep file::

    name: quickstart
    base: default.yaml            # or an inline experiment mapping
    overrides: [methods=[multitask], eval.shots=[1]]
    search:
      space:
        selection.strategy: {choice: [selected, random, all]}
        tasks.M: {int: [25, 100]}
        finetune.lr: {float: [1.0e-5, 1.0e-3], log: true}
      algorithm: optuna           # optuna (TPE) | random | grid
      metric: acc_1shot
      mode: max
      num_samples: 6
      study_storage: optuna.db    # optional: the Optuna study in SQLite, for optuna-dashboard
    scheduler:
      asha: {grace_period: 1, max_t: 4}   # optional: stop weak trials on per-epoch val_acc
    storage: {path: s3://bucket/sweeps}   # optional: the sweep folder is <path>/<name>

Example:
    >>> s = SweepConfig.model_validate({"search": {"space": {"tasks.M": {"choice": [25, 100]}}}})
    >>> s.search.algorithm, s.search.metric
    ('optuna', 'acc_1shot')
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtft_ray.config.load import set_dotted
from mtft_ray.config.schema import ExperimentConfig, StorageConfig, plain_name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Distribution(_Strict):
    """One searched key: exactly one of ``choice``, ``int: [lo, hi]``, ``float: [lo, hi]`` (+ ``log``),
    or ``subset: [a, b, ...]``.

    A ``subset`` searches a non-empty subset of the listed items (``tasks.domains``: which source
    domains to finetune on) through one include flag per item; the trial's value is the list of
    included items, in the listed order.
    """

    choice: list[Any] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    float_: tuple[float, float] | None = Field(None, alias="float")
    subset: list[str] | None = None
    log: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k, v in (("choice", self.choice), ("int", self.int_), ("float", self.float_),
                                ("subset", self.subset)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice / int / float / subset, got {given or 'none'}")
        if self.choice is not None and not self.choice:
            raise ValueError("choice is empty")
        if self.subset is not None and (len(self.subset) < 2 or len(set(self.subset)) != len(self.subset)):
            raise ValueError(f"subset needs two or more distinct items, got {self.subset}")
        lo_hi = self.int_ or self.float_
        if lo_hi is not None:
            lo, hi = lo_hi
            if lo > hi:
                raise ValueError(f"range [{lo}, {hi}] has lo > hi")
            if self.log and lo <= 0:
                raise ValueError(f"log range [{lo}, {hi}] must be positive")
        elif self.log:
            raise ValueError("log applies to int / float ranges only")
        return self

    @property
    def kind(self) -> str:
        for kind, value in (("choice", self.choice), ("int", self.int_), ("float", self.float_)):
            if value is not None:
                return kind
        return "subset"

    def probe_values(self) -> list[Any]:
        """Values that must each validate: every choice, both ends of a range, or a subset's whole
        list and each item alone."""
        if self.subset is not None:
            return [list(self.subset), *([x] for x in self.subset)]
        return list(self.choice) if self.choice is not None else list(self.int_ or self.float_)

    def grid_values(self) -> list[Any]:
        """What a grid search walks: the choices, or every non-empty subset (smallest first)."""
        if self.subset is None:
            return list(self.choice or [])
        return [list(c) for size in range(1, len(self.subset) + 1) for c in itertools.combinations(self.subset, size)]

    def describe(self) -> str:
        if self.subset is not None:
            return f"subset of {self.subset} (non-empty, one include flag each)"
        if self.choice is not None:
            return f"choice {self.choice}"
        lo, hi = self.int_ or self.float_
        return f"{self.kind} [{lo}, {hi}]" + (" log" if self.log else "")


class SearchConfig(_Strict):
    space: dict[str, Distribution] = Field(min_length=1)
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    metric: str = "acc_1shot"  # target accuracy of the finetuned method, 1-shot
    mode: Literal["max", "min"] = "max"
    num_samples: int = Field(4, ge=1)  # grid: repeats of the whole grid
    # Optuna's study in an RDB, for optuna-dashboard: a file name (SQLite file in a local sweep
    # folder, e.g. optuna.db) or a database URL (sqlite:////abs/study.db, postgresql://...)
    study_storage: str | None = None

    @model_validator(mode="after")
    def _study_needs_optuna(self) -> SearchConfig:
        if self.study_storage and self.algorithm != "optuna":
            raise ValueError(f"study_storage keeps an Optuna study; algorithm is {self.algorithm!r}")
        return self


class AshaConfig(_Strict):
    """Early stopping on the per-epoch validation accuracy (iterations are epochs, plus the final report)."""

    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)
    max_t: int = Field(10, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class SchedulerConfig(_Strict):
    asha: AshaConfig | None = None


class SweepConfig(_Strict):
    name: str = "sweep"  # a plain name: the default sweep folder is runs/sweeps/<name>
    base: str | dict = Field(default_factory=dict)  # experiment YAML path (relative to the sweep file) or mapping
    overrides: list[str] = Field(default_factory=list)  # dotted overrides applied to the base
    search: SearchConfig
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    resources: dict[str, float] | None = None  # per trial driver; default computed from train.workers
    storage: StorageConfig = Field(default_factory=StorageConfig)
    seed: int = 0
    max_failures: int = Field(0, ge=0)  # retries of a failed trial

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)


# The sweep driver's pid, host, start and latest heartbeat (epoch seconds), rewritten every
# HEARTBEAT_S while it runs: the analysis tells a dead sweep from a running one by it
DRIVER_FILE = "driver.json"
HEARTBEAT_S = 60.0


def sweep_hash(sweep: SweepConfig, base: ExperimentConfig) -> str:
    """A short hash of the sweep and its resolved base experiment (what resuming must match)."""
    doc = {"sweep": sweep.model_dump(mode="json", by_alias=True, exclude={"base"}), "base": base.model_dump(mode="json")}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def flag_name(key: str, item: str) -> str:
    """The Optuna parameter that includes ``item`` in the subset searched at ``key``."""
    return f"{key}[{item}]"


def apply_params(raw: dict, params: dict[str, Any]) -> dict:
    """A copy of the raw experiment ``raw`` with each dotted key of ``params`` set.

    A subset's include flags (``tasks.domains[lao]``: Optuna's own parameters, recorded with the
    trial) are skipped: the subset's list itself is in ``params``.
    """
    out = copy.deepcopy(raw)
    for key, value in params.items():
        if not key.endswith("]"):
            set_dotted(out, key, value)
    return out
