"""Benchmark of few-shot evaluation: cached features, a per-episode loop, per-episode re-encoding.

Three ways to score the same episodes, timed in one run so their ratios are comparable:

1. ``cached``: :func:`~mtft_ray.tasks.episodes.episode_accuracy` on cached features.
2. ``loop``: a plain per-episode Python loop over the same cached features (``_loop_accuracy``
   below), the baseline the vectorised path must equal.
3. ``reencode``: every episode's images through the backbone again, as the paper's code does
   (``tf_efficientnet_lite0``, random init, 64x64 RGB), for a few episodes, extrapolated.

Example:
    >>> r = bench_episodes(n_episodes=20, n_way=3, n_shot=1, n_query=2, n_classes=4,
    ...                    per_class=10, dim=32, reencode_episodes=0, repeats=1)
    >>> r["max_abs_diff"], r["reencode_s"]
    (0.0, None)

From a shell (full size, about 15 s on 2 idle cores): ``python -m mtft_ray.evaluation.bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np
import torch

from mtft_ray.errors import MtftError
from mtft_ray.tasks.episodes import Episodes, episode_accuracy, mean_ci95, sample_episodes

# Class-mean scale against unit noise: 15-way 5-shot accuracy lands near 0.72, far from 0 and 1.
_SIGNAL = 0.18
_REENCODE_MODEL = "tf_efficientnet_lite0"
_REENCODE_SIZE = 64


def bench_episodes(n_episodes: int = 3000, n_way: int = 15, n_shot: int = 5, n_query: int = 15,
                   n_classes: int = 20, per_class: int = 600, dim: int = 1280, reencode_episodes: int = 3,
                   seed: int = 0, repeats: int = 3) -> dict:
    """Times cached, loop and re-encoding evaluation of the same episodes.

    Args:
        n_episodes: episodes to score.
        n_way: classes per episode.
        n_shot: support samples per class.
        n_query: query samples per class.
        n_classes: classes in the synthetic evaluation split.
        per_class: samples per class.
        dim: feature dimension of the synthetic cached features.
        reencode_episodes: episodes actually re-encoded (the time is extrapolated to
            ``n_episodes``); 0 skips re-encoding.
        seed: seed of features, episodes and images.
        repeats: timed repeats of the cached and loop paths (the median is reported).

    Returns:
        A JSON-serialisable dict: seconds per path, speedups, accuracy agreement, machine.

    Raises:
        MtftError: ``repeats`` below 1, ``reencode_episodes`` below 0, or episodes that cannot
            be drawn from the synthetic split.
    """
    if repeats < 1 or reencode_episodes < 0:
        raise MtftError(f"repeats must be >= 1 and reencode_episodes >= 0, got {repeats} and {reencode_episodes}")
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    means = rng.standard_normal((n_classes, dim), dtype=np.float32) * _SIGNAL
    features = torch.from_numpy(means[labels] + rng.standard_normal((labels.size, dim), dtype=np.float32))

    start = time.perf_counter()
    episodes = sample_episodes(labels, n_way, n_shot, n_query, n_episodes, seed=seed)
    sample_s = time.perf_counter() - start

    cached_runs, loop_runs = [], []
    for _ in range(repeats):                         # interleaved: both see the same machine load
        cached_acc, t = _timed(lambda: episode_accuracy(features, episodes))
        cached_runs.append(t)
        loop_acc, t = _timed(lambda: _loop_accuracy(features, episodes))
        loop_runs.append(t)
    cached_s, loop_s = statistics.median(cached_runs), statistics.median(loop_runs)
    mean, ci95 = mean_ci95(cached_acc)

    result = {
        "n_episodes": n_episodes, "n_way": n_way, "n_shot": n_shot, "n_query": n_query,
        "n_classes": n_classes, "per_class": per_class, "dim": dim, "repeats": repeats,
        "sample_s": round(sample_s, 4),
        "cached_s": round(cached_s, 4), "cached_runs_s": [round(t, 4) for t in cached_runs],
        "loop_s": round(loop_s, 4), "loop_runs_s": [round(t, 4) for t in loop_runs],
        "speedup_vs_loop": round(loop_s / cached_s, 2),
        "mean_accuracy": round(mean, 6), "ci95": round(ci95, 6),
        "loop_mean_accuracy": round(float(loop_acc.mean()), 6),
        "same_accuracy": bool(np.array_equal(cached_acc, loop_acc)),
        "max_abs_diff": float(np.abs(cached_acc - loop_acc).max()),
        "reencode_model": _REENCODE_MODEL, "reencode_image_size": _REENCODE_SIZE,
        "reencode_episodes": reencode_episodes, "reencode_extrapolated": 0 < reencode_episodes < n_episodes,
        "reencode_per_episode_s": None, "reencode_s": None, "speedup_vs_reencode": None,
        "encode_split_s": None, "speedup_vs_reencode_incl_encode": None,
    }
    if reencode_episodes > 0:
        per_episode = _time_reencode(episodes, min(reencode_episodes, n_episodes), seed)
        reencode_s = per_episode * n_episodes
        # Caching is not free: the split is encoded once per checkpoint. At the measured
        # per-image rate that is this many seconds, to be added to the cached path.
        encode_split_s = per_episode / (n_way * (n_shot + n_query)) * labels.size
        result.update({
            "reencode_per_episode_s": round(per_episode, 4), "reencode_s": round(reencode_s, 2),
            "speedup_vs_reencode": round(reencode_s / cached_s, 1),
            "encode_split_s": round(encode_split_s, 2),
            "speedup_vs_reencode_incl_encode": round(reencode_s / (encode_split_s + cached_s), 1),
        })
    result["machine"] = {
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "processor": platform.processor() or platform.machine(),
        "load_avg_1m_before": round(load_before, 2), "load_avg_1m_after": round(os.getloadavg()[0], 2),
    }
    return result


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _loop_accuracy(features: torch.Tensor, episodes: Episodes) -> np.ndarray:
    """The baseline: nearest centroid (cosine, raw-mean prototypes), one episode at a time."""
    unit = features / features.norm(dim=1, keepdim=True)
    target = torch.arange(episodes.n_way).repeat_interleave(episodes.n_query)
    acc = np.empty(episodes.n_episodes)
    for e in range(episodes.n_episodes):
        acc[e] = _nearest_centroid(features[torch.from_numpy(episodes.support[e])],
                                   unit[torch.from_numpy(episodes.query[e].reshape(-1))], target)
    return acc


def _nearest_centroid(support: torch.Tensor, queries: torch.Tensor, target: torch.Tensor) -> float:
    """Accuracy of one episode from raw ``(N, K, D)`` shots and unit-norm ``(N*Q, D)`` queries."""
    centroids = support.mean(dim=1)
    centroids = centroids / centroids.norm(dim=1, keepdim=True)
    pred = (queries @ centroids.T).argmax(dim=1)
    return (pred == target).double().mean().item()


def _time_reencode(episodes: Episodes, n: int, seed: int) -> float:
    """Seconds per episode to encode its images and score it, as the paper's code does."""
    import timm  # heavy import, only needed here

    model = timm.create_model(_REENCODE_MODEL, pretrained=False, num_classes=0).eval()
    way, shot, query = episodes.n_way, episodes.n_shot, episodes.n_query
    gen = torch.Generator().manual_seed(seed)
    # Random images stand in for decoded, transformed ones (decoding is not timed: it flatters
    # re-encoding). Support first, then queries, as in an episode's batch.
    shape = (way * (shot + query), 3, _REENCODE_SIZE, _REENCODE_SIZE)
    images = [torch.rand(shape, generator=gen) for _ in range(n)]
    target = torch.arange(way).repeat_interleave(query)
    with torch.no_grad():
        model(images[0][:2])                          # warm-up, not timed
        start = time.perf_counter()
        for batch in images:
            feats = model(batch)
            unit = feats / feats.norm(dim=1, keepdim=True)
            _nearest_centroid(feats[:way * shot].view(way, shot, -1), unit[way * shot:], target)
        return (time.perf_counter() - start) / n


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = dict(n_episodes=3000, n_way=15, n_shot=5, n_query=15, n_classes=20, per_class=600, dim=1280,
                    reencode_episodes=3, seed=0, repeats=3)
    for name, value in defaults.items():
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=value)
    print(json.dumps(bench_episodes(**vars(parser.parse_args())), indent=2))


if __name__ == "__main__":
    _main()
