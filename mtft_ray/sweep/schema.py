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
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mtft_ray.config.load import set_dotted
from mtft_ray.config.schema import ExperimentConfig, StorageConfig, plain_name
from mtft_ray.errors import MtftError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


SCREEN_TOP = 5  # subsets of a screen file a sweep searches unless it gives top


class Distribution(_Strict):
    """One searched key: exactly one of ``choice``, ``int: [lo, hi]``, ``float: [lo, hi]`` (+ ``log``),
    ``subset: [a, b, ...]`` or ``screen: FILE`` (+ ``top``).

    A ``subset`` searches a non-empty subset of the listed items (``tasks.domains``: which source
    domains to finetune on) through one include flag per item; the trial's value is the list of
    included items, in the listed order.

    A ``screen`` searches only the ``top`` (default 5) best-ranked subsets of a screen file that
    ``mtft-ray screen`` wrote (a path relative to the sweep file). Loading the sweep
    (:func:`mtft_ray.sweep.load.load_sweep`) resolves it into a ``choice`` over those subsets
    (lists of items) and keeps ``screen`` (then absolute) and ``top`` beside it as a record; a
    ``subset`` given with it names the candidate items the screen must have been made for.
    """

    choice: list[Any] | None = None
    int_: tuple[int, int] | None = Field(None, alias="int")
    float_: tuple[float, float] | None = Field(None, alias="float")
    subset: list[str] | None = None
    screen: str | None = None
    top: int | None = Field(None, ge=1)  # with screen: how many of its best subsets (default SCREEN_TOP)
    log: bool = False

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        given = [k for k, v in (("choice", self.choice), ("int", self.int_), ("float", self.float_),
                                ("subset", self.subset), ("screen", self.screen)) if v is not None]
        if self.screen is not None:  # a screen may name its items (subset) and, resolved, its choice
            given = [k for k in given if k not in ("subset", "choice")]
        if len(given) != 1:
            raise ValueError(f"give exactly one of choice / int / float / subset / screen, got {given or 'none'}")
        if self.top is not None and self.screen is None:
            raise ValueError("top applies to screen only (search the top subsets of a screen file)")
        if self.screen is not None and self.choice is not None and any(not isinstance(v, list) for v in self.choice):
            raise ValueError(f"a resolved screen's choice lists subsets (lists of items), got {self.choice}")
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
        """``choice`` (a resolved screen too), ``int``, ``float``, ``subset``, or ``screen`` (unresolved)."""
        for kind, value in (("choice", self.choice), ("int", self.int_), ("float", self.float_)):
            if value is not None:
                return kind
        return "screen" if self.screen is not None else "subset"

    @property
    def screen_top(self) -> int:
        """How many of a screen's best subsets are searched."""
        return SCREEN_TOP if self.top is None else self.top

    def _resolved(self) -> None:
        if self.kind == "screen":
            raise MtftError(f"screen {self.screen} is not resolved yet: load the sweep with load_sweep, which "
                            f"reads the screen file into a choice of its top {self.screen_top} subsets")

    def probe_values(self) -> list[Any]:
        """Values that must each validate: every choice, both ends of a range, or a subset's whole
        list and each item alone."""
        self._resolved()
        if self.subset is not None and self.choice is None:
            return [list(self.subset), *([x] for x in self.subset)]
        return list(self.choice) if self.choice is not None else list(self.int_ or self.float_)

    def grid_values(self) -> list[Any]:
        """What a grid search walks: the choices, or every non-empty subset (smallest first)."""
        self._resolved()
        if self.subset is None or self.choice is not None:
            return list(self.choice or [])
        return [list(c) for size in range(1, len(self.subset) + 1) for c in itertools.combinations(self.subset, size)]

    def describe(self) -> str:
        if self.screen is not None:
            what = f"top {self.screen_top} subsets of screen {self.screen}"
            return what if self.choice is None else f"{what}: {['+'.join(map(str, c)) for c in self.choice]}"
        if self.subset is not None:
            return f"subset of {self.subset} (non-empty, one include flag each)"
        if self.choice is not None:
            return f"choice {self.choice}"
        lo, hi = self.int_ or self.float_
        return f"{self.kind} [{lo}, {hi}]" + (" log" if self.log else "")


class BudgetConfig(_Strict):
    """A cap on the sweep's spend: no new trial starts once the finished trials' spend plus the
    running and the next trial's estimate would exceed any cap given.

    A trial's spend is its wall hours times what it holds: ``gpu_hours`` (GPUs held),
    ``cpu_hours`` (CPUs held), ``dollars`` (hours times the per-trial share of a node's hourly
    price, ``search.price_per_hour``).
    """

    gpu_hours: float | None = Field(None, gt=0)
    cpu_hours: float | None = Field(None, gt=0)
    dollars: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some_cap(self) -> BudgetConfig:
        if not self.caps():
            raise ValueError("give at least one of gpu_hours / cpu_hours / dollars")
        return self

    def caps(self) -> dict[str, float]:
        """The caps given, by the trial metric they limit (``gpu_hours``, ``cpu_hours``, ``dollars``)."""
        return {k: v for k, v in (("gpu_hours", self.gpu_hours), ("cpu_hours", self.cpu_hours),
                                  ("dollars", self.dollars)) if v is not None}


Mode = Literal["max", "min"]


class SearchConfig(_Strict):
    space: dict[str, Distribution] = Field(min_length=1)
    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    # one metric (target accuracy of the finetuned method, 1-shot, by default) or a list of them:
    # a multi-objective Optuna search (``[acc_1shot, gpu_hours]`` with ``mode: [max, min]``)
    metric: str | list[str] = "acc_1shot"
    mode: Mode | list[Mode] = "max"
    # Optuna's sampler: TPE (single- and multi-objective) or NSGA-II (multi-objective)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    num_samples: int = Field(4, ge=1)  # grid: repeats of the whole grid
    # Optuna's study in an RDB, for optuna-dashboard: a file name (SQLite file in a local sweep
    # folder, e.g. optuna.db) or a database URL (sqlite:////abs/study.db, postgresql://...)
    study_storage: str | None = None
    # an earlier sweep folder (local or s3://) whose finished trials seed this sweep's searcher
    warm_start: str | None = None
    budget: BudgetConfig | None = None
    # hourly price of one node that trials run on, for ``dollars`` (spend and budget); a trial
    # pays the share of the node it holds (GPUs if the node has any, else CPUs)
    price_per_hour: float | None = Field(None, gt=0)
    node: dict[str, float] | None = None  # that node's resources ({CPU: 4, GPU: 1}); default: this machine

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.study_storage and self.algorithm != "optuna":
            raise ValueError(f"study_storage keeps an Optuna study; algorithm is {self.algorithm!r}")
        if isinstance(self.metric, list) or isinstance(self.mode, list):
            metrics, modes = self.metrics, self.modes
            if isinstance(self.metric, str) or (isinstance(self.mode, list) and len(modes) != len(metrics)):
                raise ValueError(f"metric {self.metric} and mode {self.mode}: give one mode per metric")
            if len(set(metrics)) != len(metrics) or not metrics:
                raise ValueError(f"metric {self.metric}: give distinct metrics")
            if len(metrics) > 1 and self.algorithm != "optuna":
                raise ValueError(f"a multi-objective search ({metrics}) needs algorithm 'optuna', "
                                 f"not {self.algorithm!r}")
        if self.sampler == "nsga2" and self.algorithm != "optuna":
            raise ValueError(f"sampler 'nsga2' is Optuna's; algorithm is {self.algorithm!r}")
        return self

    @property
    def metrics(self) -> list[str]:
        """The metrics searched, as a list (one for a single-objective search)."""
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        """One mode per metric."""
        return list(self.mode) if isinstance(self.mode, list) else [self.mode] * len(self.metrics)

    @property
    def primary(self) -> str:
        """The first metric: what tables sort by and single-metric tools read."""
        return self.metrics[0]

    @property
    def multi(self) -> bool:
        return len(self.metrics) > 1


class AshaConfig(_Strict):
    """Early stopping on the per-epoch validation accuracy (iterations are epochs, plus the final report)."""

    metric: str = "val_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: int = Field(1, ge=1)
    max_t: int = Field(10, ge=1)
    reduction_factor: float = Field(3.0, gt=1)


class SchedulerConfig(_Strict):
    asha: AshaConfig | None = None


def has_credentials(uri: str) -> bool:
    """True when ``uri`` carries a user or password (``https://user:secret@host``).

    >>> has_credentials("http://u:p@127.0.0.1:5000"), has_credentials("http://127.0.0.1:5000")
    (True, False)
    """
    return "@" in urlsplit(uri).netloc


class MlflowTracking(_Strict):
    """One MLflow run per trial on a tracking server; credentials only from MLflow's own environment
    variables (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``)."""

    tracking_uri: str | None = None  # default: env MLFLOW_TRACKING_URI (else the sweep refuses to start)
    experiment: str | None = None  # default: the sweep's name

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, v: str | None) -> str | None:
        if v is not None and has_credentials(v):
            raise ValueError("holds credentials (user:password@): set MLFLOW_TRACKING_USERNAME / "
                             "MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead")
        return v


class WandbTracking(_Strict):
    """One W&B run per trial; entity, API key and host from W&B's own environment (``WANDB_ENTITY``,
    ``WANDB_API_KEY`` or ``wandb login``, ``WANDB_BASE_URL``)."""

    project: str
    mode: Literal["online", "offline"] = "online"  # offline: run files in <sweep>/wandb, `wandb sync` later
    group: str | None = None  # default: the sweep's name


class TrackingConfig(_Strict):
    """Experiment trackers fed by Ray Tune's logger callbacks (:mod:`mtft_ray.sweep.tracking`)."""

    mlflow: MlflowTracking | None = None
    wandb: WandbTracking | None = None
    tensorboard: bool = False  # TensorBoard event files in each trial's folder
    # true: a tracker that cannot be reached is a warning and is dropped; false: the sweep
    # refuses to start, naming it
    best_effort: bool = False


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
    tracking: TrackingConfig | None = None  # MLflow / W&B / TensorBoard, one run per trial

    @field_validator("name")
    @classmethod
    def _plain(cls, v: str) -> str:
        return plain_name(v)


# The sweep driver's pid, host, start and latest heartbeat (epoch seconds), rewritten every
# HEARTBEAT_S while it runs: the analysis tells a dead sweep from a running one by it
DRIVER_FILE = "driver.json"
HEARTBEAT_S = 60.0


# keys a finished sweep may change and still be the same sweep, extended (more samples, more budget)
EXTENDABLE = {"num_samples", "budget"}


def sweep_hash(sweep: SweepConfig, base: ExperimentConfig) -> str:
    """A short hash of the sweep and its resolved base experiment (what resuming must match), without
    :data:`EXTENDABLE` keys."""
    doc = {"sweep": sweep.model_dump(mode="json", by_alias=True, exclude={"base": True, "search": EXTENDABLE}),
           "base": base.model_dump(mode="json")}
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
