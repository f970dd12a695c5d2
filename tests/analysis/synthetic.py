"""Synthetic sweep folders laid out like Ray Tune's (see mtft_ray/sweep/tuner.py), with known trends."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mtft_ray.io import file_digest

BASE = {"name": "synthetic", "backbone": {"name": "tf_efficientnet_lite0"},
        "tasks": {"n_way": 5, "n_shot": 1, "n_query": 4, "M": 100},
        "finetune": {"lr": 1e-4, "epochs": 2}, "selection": {"strategy": "selected", "target_domain": "lao"}}
T0 = 1_790_000_000.0


@dataclass
class Trial:
    """One synthetic trial. ``status``: finished | errored | stopped | running | incomplete | truncated."""

    params: dict[str, Any]
    acc: float = 0.8
    ci: float = 0.01
    M: int = 100
    m: int = 25
    diversity: float | None = -5.0
    consistency: float | None = 0.93
    status: str = "finished"
    epochs: int = 2
    extra: dict[str, Any] = field(default_factory=dict)


def space_of(trials: list[Trial]) -> dict[str, dict]:
    keys = dict.fromkeys(k for t in trials for k in t.params)
    return {k: {"choice": sorted({t.params[k] for t in trials if k in t.params}, key=str)} for k in keys}


def _final(t: Trial, trial_dir: Path, tid: str, when: float) -> dict:
    sel = {} if t.diversity is None else {"selection_k": 6, "selection_diversity": t.diversity,
                                          "selection_coverage": 0.77, "selection_mean_consistency": t.consistency}
    return {"M": t.M, "m": t.m, "Mm": t.M * t.m, "config_hash": tid[-6:], "seconds": 30.0, "method": "multitask",
            "multitask_acc_1shot": t.acc, "multitask_ci95_1shot": t.ci, "acc_1shot": t.acc, "ci95_1shot": t.ci,
            **sel, "train_seconds": 20.0, "images_per_s": 100.0, "val_acc": 0.9,
            "checkpoint": f"/tmp/ray/session_x/artifacts/{trial_dir.name}/run/multitask.pt",
            "timestamp": int(when), "time_total_s": 30.0, "trial_id": tid, "training_iteration": t.epochs + 1,
            "config": t.params, **t.extra}


def _epoch(t: Trial, e: int, tid: str, when: float) -> dict:
    return {"epoch": e, "val_acc": 0.8 + 0.01 * e, "timestamp": int(when), "time_total_s": 10.0 * e,
            "trial_id": tid, "training_iteration": e, "config": t.params}


def _run_result(t: Trial) -> dict:
    sel = None if t.diversity is None else {"strategy": "selected", "level": "unit", "k": 6,
                                            "selected": ["a", "b", "c", "d", "e", "f"], "diversity": t.diversity,
                                            "coverage": 0.77, "mean_consistency": t.consistency, "M": t.M}
    return {"config_hash": "x", "M": t.M, "m": t.m, "selection": sel,
            "results": [{"method": "multitask", "n_way": 5, "n_shot": 1, "acc": t.acc, "ci95": t.ci, "episodes": 500}],
            "histories": {}, "seconds": {"total": 30.0},
            "split": {"source": {"domains": [f"d{i}" for i in range(24)]}}}


def write_trial(root: Path, i: int, t: Trial) -> Path:
    tid = f"abcde_{i:05d}"
    tag = ",".join(f"{k.replace('.', '_')}={v}" for k, v in t.params.items())
    d = root / f"trial_driver_{tid}_{i}_{tag}_2026-01-01_00-00-{i % 60:02d}"
    (d / "run").mkdir(parents=True)
    (d / "params.json").write_text(json.dumps(t.params))
    start = T0 + 60 * i
    lines = [_epoch(t, e, tid, start + 10 * e) for e in range(1, t.epochs + 1)] if t.status != "incomplete" else []
    if t.status in ("finished", "truncated"):
        lines.append(_final(t, d, tid, start + 30))
    text = "".join(json.dumps(x) + "\n" for x in lines)
    if t.status == "truncated":  # the final report cut off mid-write
        text = text[: len(text) - len(json.dumps(lines[-1])) // 2 - 1]
    (d / "result.json").write_text(text)
    if t.status == "errored":
        (d / "error.txt").write_text("Failure # 1\nTraceback (most recent call last):\n  ...\n"
                                     "mtft_ray.errors.MtftError: tasks.n_way=50 exceeds the classes of domain x\n")
    if t.status == "finished":
        (d / "run" / "multitask.pt").write_bytes(b"not really a checkpoint")
        digest = {"file": "multitask.pt", **file_digest(d / "run" / "multitask.pt")}  # as a run records it
        (d / "run" / "result.json").write_text(json.dumps({**_run_result(t), "checkpoints": {"multitask": digest}}))
    return d


def make_sweep(root: Path, trials: list[Trial], *, ended: bool = True, space: dict | None = None,
               name: str = "synthetic", metric: str | list[str] = "acc_1shot", mode: str | list[str] = "max") -> Path:
    """A sweep folder at ``root``: sweep.json, one Tune trial folder per trial, trials.csv when ``ended``.

    ``metric`` / ``mode`` lists make it a multi-objective sweep; a trial's other objectives
    (``seconds``, ``gpu_hours``, ...) go in its ``extra``."""
    root.mkdir(parents=True, exist_ok=True)
    space = space or space_of(trials)
    (root / "sweep.json").write_text(json.dumps({"hash": "0123456789ab", "sweep": {
        "name": name, "search": {"space": space, "algorithm": "optuna", "metric": metric, "mode": mode,
                                 "num_samples": len(trials)}}, "base": BASE}))
    for i, t in enumerate(trials):
        write_trial(root, i, t)
    if ended:
        status = {"finished": "TERMINATED", "errored": "ERROR", "stopped": "TERMINATED"}
        rows = ["trial_id,status"] + [f"abcde_{i:05d},{status.get(t.status, 'INCOMPLETE')}" for i, t in enumerate(trials)]
        (root / "trials.csv").write_text("\n".join(rows) + "\n")
    return root


def trend_trials(n: int = 24, noise: float = 0.004, seed: int = 0) -> list[Trial]:
    """acc = 0.5 + 0.03·ln(M·m) + 0.04·diversity + noise; consistency is unrelated noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        M = [25, 50, 100, 200][i % 4]
        strategy = ["random", "selected", "no_diversity"][(i // 4) % 3]
        div = float(rng.uniform(-6, -4))
        cons = float(rng.uniform(0.90, 0.95))
        acc = 0.5 + 0.03 * math.log(M * 25) + 0.04 * div + float(rng.normal(0, noise))
        out.append(Trial({"selection.strategy": strategy, "tasks.M": M}, acc=acc, ci=0.008, M=M,
                         diversity=div, consistency=cons))
    return out


def noise_trials(n: int = 12, seed: int = 1) -> list[Trial]:
    """Accuracy unrelated to anything."""
    rng = np.random.default_rng(seed)
    return [Trial({"tasks.M": [25, 50, 100][i % 3], "finetune.lr": [1e-4, 3e-4][i % 2]},
                  acc=float(rng.uniform(0.7, 0.8)), M=[25, 50, 100][i % 3], diversity=float(rng.uniform(-6, -4)),
                  consistency=float(rng.uniform(0.9, 0.95))) for i in range(n)]


def subset_trials(n: int = 24, noise: float = 0.004, seed: int = 2) -> list[Trial]:
    """Searched source domains a, b, c: acc = 0.70 + 0.05·[a] − 0.03·[c] + noise; b does nothing.
    The subsets cycle through all seven non-empty ones (params as the sweep records them: lists)."""
    rng = np.random.default_rng(seed)
    subsets = [["a"], ["b"], ["c"], ["a", "b"], ["a", "c"], ["b", "c"], ["a", "b", "c"]]
    out = []
    for i in range(n):
        s = subsets[i % 7]
        acc = 0.70 + 0.05 * ("a" in s) - 0.03 * ("c" in s) + float(rng.normal(0, noise))
        params = {"tasks.domains": s, "tasks.M": [50, 100][i % 2],
                  **{f"tasks.domains[{x}]": x in s for x in "ab" if len(s) > 1 or x in s}}
        out.append(Trial(params, acc=acc, M=params["tasks.M"], diversity=float(rng.uniform(-6, -4))))
    return out
