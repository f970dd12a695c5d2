"""Benchmark of task selection on synthetic clustered features; prints JSON.

Measures, on one pool: preparing it (validation, task means, consistency, ranking), the greedy
walk with each stopping measure, and every ablation at the k Algorithm 1 found. Features are
generated, not timed.

Example:
    python -m mtft_ray.selection.bench --n-tasks 2000 --dim 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from mtft_ray.selection.greedy import Pool, run_plateau
from mtft_ray.selection.strategies import select_from_pool

__all__ = ["synthetic_pool", "bench_selection"]


def synthetic_pool(n_tasks: int, m: int, dim: int, n_target: int, seed: int = 0, *,
                   n_samples: int | None = None, n_clusters: int = 40,
                   target_clusters: int = 3, n_units: int = 20
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Clustered features, tasks mixing 1–3 clusters, a target near a few clusters.

    Every feature = shared offset (the direction all backbone features share) + its cluster's
    centre + within-cluster variation on a 32-d subspace of the cluster + isotropic noise. The
    target's samples come from new "classes" next to the first ``target_clusters`` clusters.
    A task's unit ("domain") is its first cluster modulo ``n_units``.

    Returns:
        ``(features (n_samples, dim) float32, task_samples (n_tasks, m) int64,
        target (n_target, dim) float32, task_units (n_tasks,) int64)``.
    """
    rng = np.random.default_rng(seed)
    n_samples = n_samples or min(50_000, n_tasks * m)
    n_clusters = min(n_clusters, n_samples)
    offset = 3.0 * rng.standard_normal(dim, dtype=np.float32) / np.sqrt(dim)
    centers = rng.standard_normal((n_clusters, dim), dtype=np.float32) / np.sqrt(dim)
    bases = rng.standard_normal((n_clusters, 32, dim), dtype=np.float32) / np.sqrt(dim)

    def draw(cluster: np.ndarray, jitter: np.ndarray | None = None) -> np.ndarray:
        x = rng.standard_normal((len(cluster), dim), dtype=np.float32) * np.float32(0.3 / np.sqrt(dim))
        x += offset + centers[cluster]
        if jitter is not None:
            x += jitter
        coef = rng.standard_normal((len(cluster), 32), dtype=np.float32) * np.float32(0.5)
        for c in np.unique(cluster):
            rows = np.flatnonzero(cluster == c)
            x[rows] += coef[rows] @ bases[c]
        return x

    labels = np.sort(rng.integers(0, n_clusters, n_samples))
    features = draw(labels)
    start = np.searchsorted(labels, np.arange(n_clusters))
    size = np.bincount(labels, minlength=n_clusters)
    task_clusters = rng.integers(0, n_clusters, (n_tasks, 3))
    n_mix = rng.integers(1, 4, n_tasks)  # each task mixes 1, 2 or 3 clusters
    slot = np.minimum(rng.integers(0, 3, (n_tasks, m)), n_mix[:, None] - 1)
    cl = np.take_along_axis(task_clusters, slot, axis=1)
    cl = np.where(size[cl] > 0, cl, np.argmax(size))  # a cluster nobody drew: use the largest
    task_samples = start[cl] + (rng.random((n_tasks, m)) * size[cl]).astype(np.int64)
    tc = np.arange(n_target) % min(target_clusters, n_clusters)
    shift = 0.5 * rng.standard_normal((min(target_clusters, n_clusters), dim), dtype=np.float32) / np.sqrt(dim)
    target = draw(tc, shift[tc])
    return features, task_samples.astype(np.int64), target, task_clusters[:, 0] % n_units


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 4)


def _machine() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0], "numpy": np.__version__, "torch": torch.__version__,
            "platform": platform.platform()}


def bench_selection(n_tasks: int = 10_000, m: int = 75, dim: int = 1280, n_target: int = 75,
                    seed: int = 0, *, n_samples: int | None = None, rel_tol: float = 0.01,
                    patience: int = 3, threads: int | None = None, forced_steps: int = 200,
                    n_units: int = 20) -> dict:
    """Time selection over ``n_tasks`` synthetic candidates.

    Args:
        n_tasks, m, dim, n_target: pool and target sizes.
        seed: seed of the synthetic data and of the random ablations.
        n_samples: distinct pool samples (default ``min(50000, n_tasks·m)``).
        rel_tol, patience: plateau rule.
        threads: torch threads for the run (default: leave as is).
        forced_steps: length of an extra walk that ignores the plateau (per-step cost).
        n_units: units ("domains") for the unit-level run; 0 skips it.

    Returns:
        seconds per part, k and walk length per strategy, machine info.
    """
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        (features, tasks, target, units), t_data = _timed(
            lambda: synthetic_pool(n_tasks, m, dim, n_target, seed, n_samples=n_samples, n_units=n_units))
        pool, t_pool = _timed(lambda: Pool(features, tasks, target))
        walk = dict(rel_tol=rel_tol, patience=patience, min_k=1, max_k=None)
        seconds = {"generate_data (not timed)": t_data, "prepare_pool": t_pool}
        runs = {}
        for measure in ("mahalanobis", "coverage"):
            res, t = _timed(lambda: run_plateau(pool, "selected", pool.ranking(), measure=measure, **walk))
            runs[f"selected[{measure}]"] = res
            seconds[f"walk_selected[{measure}]"] = t
            seconds[f"total_selected[{measure}]"] = round(t_pool + t, 4)
        # worst case for the per-step cost: a walk the plateau rule never stops early
        forced = dict(rel_tol=0.0, patience=10**9, min_k=1, max_k=min(forced_steps, len(pool)))
        res, t = _timed(lambda: run_plateau(pool, "selected", pool.ranking(), measure="mahalanobis", **forced))
        seconds[f"walk_forced_{forced['max_k']}_steps"] = t
        forced_ms = round(1e3 * t / len(res.diversity_curve), 2)
        if n_units:
            upool, t = _timed(lambda: Pool(features, tasks, target, units))
            seconds["prepare_unit_pool"] = t
            res, t = _timed(lambda: run_plateau(upool, "selected", upool.ranking(), measure="mahalanobis", **walk))
            runs["selected_units[mahalanobis]"] = res
            seconds["walk_selected_units[mahalanobis]"] = t
        k = runs["selected[mahalanobis]"].k
        for name, kk in (("no_consistency", None), ("random", k), ("no_diversity", k), ("all", None)):
            res, t = _timed(lambda: select_from_pool(name, pool, k=kk, seed=seed, measure="mahalanobis", **walk))
            runs[name] = res
            seconds[name] = t
        summary = {name: {"k": r.k, "walked": len(r.diversity_curve), "diversity": round(r.diversity, 4),
                          "coverage": round(r.coverage, 4), "mean_consistency": round(r.mean_consistency, 4),
                          "shrinkage": round(r.shrinkage, 4)} for name, r in runs.items()}
        walked = sum(len(runs[f"selected[{x}]"].diversity_curve) for x in ("mahalanobis", "coverage"))
        walk_s = seconds["walk_selected[mahalanobis]"] + seconds["walk_selected[coverage]"]
        return {
            "params": {"n_tasks": n_tasks, "m": m, "dim": dim, "n_target": n_target, "seed": seed,
                       "n_samples": len(features), "n_units": n_units, "rel_tol": rel_tol,
                       "patience": patience, "forced_steps": forced_steps},
            "seconds": seconds,
            "ms_per_step": round(1e3 * walk_s / max(walked, 1), 2),
            "ms_per_step_forced_walk": forced_ms,
            "target_s": 5.0,
            "meets_target": seconds["total_selected[mahalanobis]"] < 5.0,
            "results": summary,
            "machine": _machine(),
        }
    finally:
        torch.set_num_threads(old_threads)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-tasks", type=int, default=10_000)
    p.add_argument("--m", type=int, default=75)
    p.add_argument("--dim", type=int, default=1280)
    p.add_argument("--n-target", type=int, default=75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-samples", type=int, default=None)
    p.add_argument("--rel-tol", type=float, default=0.01)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--forced-steps", type=int, default=200)
    p.add_argument("--n-units", type=int, default=20)
    a = p.parse_args(argv)
    out = bench_selection(a.n_tasks, a.m, a.dim, a.n_target, a.seed, n_samples=a.n_samples,
                          rel_tol=a.rel_tol, patience=a.patience, threads=a.threads,
                          forced_steps=a.forced_steps, n_units=a.n_units)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
