"""The search space: checked against the experiment schema, turned into Ray Tune domains, applied.

Example:
    >>> with_params(ExperimentConfig(), {"tasks.M": 25}).tasks.M
    25
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from mtft_ray.config.load import validate
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.experiment import Experiment
from mtft_ray.models.backbones import check_backbone_config
from mtft_ray.sweep.schema import Distribution, SweepConfig, apply_params, flag_name
from mtft_ray.tasks.pool import make_tasks

MAX_SUBSETS = 4096  # grid / random enumerate a subset's non-empty subsets: at most 12 items


def with_params(base: ExperimentConfig, params: dict[str, Any], where: str = "") -> ExperimentConfig:
    """The experiment ``base`` with the sampled ``params`` set: a new config, validated once."""
    if not params:
        return base
    return validate(ExperimentConfig, apply_params(base.model_dump(mode="json"), params), where)


def check_space(sweep: SweepConfig, base: ExperimentConfig, where: str) -> None:
    """Fail before any trial if a key is unknown or a value the space can produce is invalid.

    Every choice and both ends of every range are set, one at a time, on the base experiment and
    validated with :class:`ExperimentConfig`; each metric searched must be one that trials report
    (an evaluated shot's accuracy, time, spend, sizes: :func:`_check_metric`).
    Limits that depend on the data (more ways than classes) are :func:`check_data`'s.
    """
    space = sweep.search.space
    for key, dist in space.items():
        for value in dist.probe_values():
            try:
                with_params(base, {key: value})
            except MtftError as e:
                raise MtftError(f"{where}: search.space.{key}={value!r}: {str(e).removeprefix(': ')}") from None
    if sweep.search.algorithm == "grid":
        ranged = [k for k, d in space.items() if d.kind not in ("choice", "subset")]
        if ranged:
            raise MtftError(f"{where}: search.algorithm 'grid' needs choice lists or subsets; ranges at {ranged}")
    for key, d in space.items():
        if d.kind == "subset" and sweep.search.algorithm != "optuna" and 2 ** len(d.subset) - 1 > MAX_SUBSETS:
            raise MtftError(f"{where}: search.space.{key}: {sweep.search.algorithm} search enumerates the "
                            f"{2 ** len(d.subset) - 1:,} non-empty subsets of {len(d.subset)} items (at most "
                            f"{MAX_SUBSETS:,}); use algorithm 'optuna', which samples one include flag per item")
    for metric in sweep.search.metrics:
        _check_metric(metric, sweep, base, where)


# what every finished trial reports beside its accuracies (mtft_ray/sweep/driver.py), and what
# only some do: dollars when priced, val_acc with validation classes, selection_* with a selection
TRIAL_METRICS = ("seconds", "trial_hours", "gpu_hours", "cpu_hours", "dollars", "train_seconds", "images_per_s",
                 "M", "m", "Mm", "val_acc", "selection_k", "selection_diversity", "selection_coverage",
                 "selection_mean_consistency", "trainable_params", "total_params")


def _evaluated_shots(sweep: SweepConfig, base: ExperimentConfig) -> list[int]:
    """The shots every trial evaluates: the base's, narrowed by a searched ``eval.shots``."""
    shots = {int(s) for s in base.eval.shots}
    for s in sweep.search.space.get("eval.shots", Distribution(choice=[None])).choice or []:
        shots &= set(s or shots)
    return sorted(shots)


def _check_metric(metric: str, sweep: SweepConfig, base: ExperimentConfig, where: str) -> None:
    """``metric`` is one trials report: ``[<method>_]acc_<shot>shot`` of an evaluated shot and
    method, or one of :data:`TRIAL_METRICS` (``dollars`` only with ``search.price_per_hour``).

    >>> s = SweepConfig.model_validate({"search": {"space": {"tasks.M": {"int": [2, 8]}}}})
    >>> _check_metric("gpu_hours", s, ExperimentConfig(), "s.yaml")
    >>> _check_metric("acc_2shot", s, ExperimentConfig(), "s.yaml")
    Traceback (most recent call last):
    ...
    mtft_ray.errors.MtftError: s.yaml: search.metric 'acc_2shot' is not reported; eval.shots are [1, 5] (metrics are acc_<shot>shot)
    """
    shots = _evaluated_shots(sweep, base)
    methods = list(base.methods)
    for choice in sweep.search.space.get("methods", Distribution(choice=[None])).choice or []:
        methods += [m for m in choice or [] if m not in methods]
    acc = re.fullmatch(r"(?:(\w+?)_)?acc_(\w*)shot", metric)
    if acc and (acc.group(1) is None or acc.group(1) in methods):
        if not acc.group(2).isdigit() or int(acc.group(2)) not in shots:
            raise MtftError(f"{where}: search.metric {metric!r} is not reported; eval.shots are {shots} "
                            f"(metrics are acc_<shot>shot)")
        return
    if metric == "dollars" and not sweep.search.price_per_hour:
        raise MtftError(f"{where}: search.metric 'dollars' needs search.price_per_hour (what one node costs an hour)")
    if metric not in TRIAL_METRICS:
        reported = [f"{p}acc_{s}shot" for p in ("", *(f"{m}_" for m in methods)) for s in shots]
        reported += [f"{m} (with search.price_per_hour)" if m == "dollars" else m for m in TRIAL_METRICS]
        raise MtftError(f"{where}: search.metric {metric!r} is not reported by trials; they report "
                        f"{', '.join(reported)}")


# keys whose values decide whether episodes and tasks can be drawn from the data at all, or
# whether the backbone exists with the weights asked for
DATA_KEYS = ("data.", "tasks.n_way", "tasks.n_shot", "tasks.n_query", "tasks.domains", "eval.",
             "selection.target_domain", "finetune.val_", "backbone.")


def data_probes(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Parameter sets :func:`check_data` builds: none (the base), each data-key value alone, and
    every numeric data key at its largest value together (the hardest episode shape)."""
    space = {k: d for k, d in sweep.search.space.items() if k.startswith(DATA_KEYS)}
    probes: list[dict[str, Any]] = [{}]
    probes += [{k: v} for k, d in space.items() for v in d.probe_values()]
    corner = {k: max(d.probe_values()) for k, d in space.items()
              if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d.probe_values())}
    if len(corner) > 1:
        probes.append(corner)
    unique = {json.dumps(p, sort_keys=True, default=str): p for p in probes}
    return list(unique.values())


def check_data(sweep: SweepConfig, base: ExperimentConfig, where: str = "sweep") -> None:
    """Fail before any trial if the data cannot serve the space: more ways than classes in the
    finetuning, validation or target classes, an unknown target domain, missing data, or no
    validation classes for an ASHA scheduler that watches ``val_acc``, an unknown timm model or
    packaged weights that are not installed.

    Builds each of :func:`data_probes`' experiments' data side (store, split, episodes): about a
    second each once the store is cached. Finetuning tasks are checked with one draw.
    """
    asha = sweep.scheduler.asha
    for params in data_probes(sweep):
        cfg = with_params(base, {**params, "run.progress": False})
        label = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "the base experiment"
        try:
            check_backbone_config(cfg.backbone)
            exp = Experiment(cfg)
            make_tasks(exp.store, exp.split.source, cfg.tasks, M=1)
        except MtftError as e:
            raise MtftError(f"{where}: with {label}: {e}") from None
        if asha is not None and asha.metric == "val_acc" and exp.val is None:
            raise MtftError(f"{where}: scheduler.asha watches val_acc, but with {label} there are no validation "
                            f"classes (data.split.val_domains / val_fraction)")


def tune_space(sweep: SweepConfig) -> dict[str, Any]:
    """The space as Ray Tune domains for the grid and random searches (keys stay dotted experiment
    keys). Optuna builds its own, define-by-run: :func:`suggest`."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in sweep.search.space.items():
        if d.kind in ("choice", "subset"):
            values = d.grid_values()
            out[key] = tune.grid_search(values) if sweep.search.algorithm == "grid" else tune.choice(values)
        elif d.int_ is not None:
            lo, hi = d.int_
            out[key] = tune.lograndint(lo, hi + 1) if d.log else tune.randint(lo, hi + 1)  # inclusive hi
        else:
            lo, hi = d.float_
            out[key] = tune.loguniform(lo, hi) if d.log else tune.uniform(lo, hi)
    return out


def _primitive(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def suggest(trial, space: dict[str, dict]) -> dict[str, Any]:
    """Optuna's define-by-run space: one trial's values, keyed by dotted experiment keys.

    ``choice`` → a categorical (list-valued choices, such as a screen's top subsets, travel as
    JSON text), ``int`` / ``float`` → ranges. A ``subset`` → one boolean include flag per item
    (:func:`flag_name`); the last item's flag is asked only if an earlier one is on, else it is
    on, so a subset is never empty.

    Args:
        trial: an ``optuna.Trial`` (Ray's OptunaSearch passes a recording wrapper of one).
        space: the sweep's space as plain mappings (``Distribution.model_dump(by_alias=True)``).
    """
    out: dict[str, Any] = {}
    for key, spec in space.items():
        d = Distribution.model_validate(spec)
        if d.kind == "subset":
            flags: list[bool] = []
            for i, item in enumerate(d.subset):
                forced = i == len(d.subset) - 1 and not any(flags)
                flags.append(True if forced else trial.suggest_categorical(flag_name(key, item), [True, False]))
            out[key] = [x for x, on in zip(d.subset, flags) if on]
        elif d.choice is not None:
            if all(_primitive(v) for v in d.choice):
                out[key] = trial.suggest_categorical(key, d.choice)
            else:
                text = [json.dumps(v) for v in d.choice]
                out[key] = d.choice[text.index(trial.suggest_categorical(key, text))]
        elif d.int_ is not None:
            out[key] = trial.suggest_int(key, d.int_[0], d.int_[1], log=d.log)
        else:
            out[key] = trial.suggest_float(key, d.float_[0], d.float_[1], log=d.log)
    return out


def trial_count(sweep: SweepConfig) -> int:
    """Trials the sweep runs: the grid's size times ``num_samples``, else ``num_samples``."""
    if sweep.search.algorithm == "grid":
        return math.prod(len(d.grid_values()) for d in sweep.search.space.values()) * sweep.search.num_samples
    return sweep.search.num_samples


def _mean(d: Distribution) -> float | None:
    if d.subset is not None:
        return None
    if d.choice is not None:
        nums = [v for v in d.choice if isinstance(v, (int, float))]
        return sum(nums) / len(nums) if len(nums) == len(d.choice) else None
    lo, hi = d.int_ or d.float_
    return math.sqrt(lo * hi) if d.log else (lo + hi) / 2


def estimate_minutes(sweep: SweepConfig, base: ExperimentConfig, concurrency: int, rate_img_s: float,
                     overhead_s: float) -> float:
    """Wall minutes of the whole sweep (cache warm): each trial's expected finetuning images at
    ``rate_img_s`` (a calibration: :func:`mtft_ray.train.calibration.train_rate`) plus
    ``overhead_s`` per trial, trials ``concurrency`` at a time.

    >>> s = SweepConfig.model_validate({"search": {"space": {"tasks.M": {"choice": [24, 96]}}, "num_samples": 4}})
    >>> base = ExperimentConfig.model_validate({"methods": ["multitask"], "finetune": {"epochs": 1}})
    >>> round(estimate_minutes(s, base, 2, rate_img_s=120.0, overhead_s=16.0), 2)
    0.95
    """
    return math.ceil(trial_count(sweep) / concurrency) * trial_seconds(sweep, base, rate_img_s, overhead_s) / 60


def trial_seconds(sweep: SweepConfig, base: ExperimentConfig, rate_img_s: float, overhead_s: float) -> float:
    """One trial's expected seconds: its finetuning images at ``rate_img_s`` plus ``overhead_s``."""
    return estimate_images(sweep, base) / rate_img_s + overhead_s


def estimate_images(sweep: SweepConfig, cfg: ExperimentConfig) -> float:
    """Expected finetuning images of one trial: mean M × m × epochs over the space."""
    t, space = cfg.tasks, sweep.search.space
    get = lambda key, default: (_mean(space[key]) if key in space else None) or default
    m = get("tasks.n_way", t.n_way) * (get("tasks.n_shot", t.n_shot) + get("tasks.n_query", t.n_query))
    methods = sum(1 for x in cfg.methods if x != "direct")
    return get("tasks.M", t.M) * m * get("finetune.epochs", cfg.finetune.epochs) * methods
