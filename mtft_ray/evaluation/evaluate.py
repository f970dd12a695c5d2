"""Few-shot evaluation of a backbone on a class split: fixed episodes, cached features.

The episodes are sampled once per (split, seed, shot) and reused for every model evaluated,
so every method in a report is scored on the identical episodes.

Example:
    >>> ev = EpisodeEvaluator(store, split.target, cfg.eval)  # doctest: +SKIP
    >>> ev.evaluate(model)  # [{"n_way": 5, "n_shot": 1, "acc": 0.61, "ci95": 0.01, "episodes": 2000}, ...]  # doctest: +SKIP
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mtft_ray.config.schema import EvalConfig, ExperimentConfig
from mtft_ray.data.sharded import as_rows
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError
from mtft_ray.tasks.episodes import Episodes, episode_accuracy, mean_ci95, sample_episodes, sample_episodes_within
from mtft_ray.evaluation.features import FeatureCache, embed
from mtft_ray.models.state import model_fingerprint


class SplitFeatures:
    """Features of a fixed set of store samples, optionally through the on-disk cache."""

    def __init__(self, store: SampleStore, sample_ids: np.ndarray, *, batch_size: int = 128,
                 device: torch.device | str = "cpu", cache: FeatureCache | None = None, progress: bool = False,
                 name: str = "split") -> None:
        self.sample_ids = np.asarray(sample_ids, np.int64)
        self.images = as_rows(store.images)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.cache, self.progress, self.name = cache, progress, name
        self._data_fp = store.fingerprint()

    def features(self, model: nn.Module, use_cache: bool = False) -> torch.Tensor:
        """``(len(sample_ids), d)`` features; from the cache when ``use_cache`` and present (then stored)."""
        key = None
        if use_cache and self.cache is not None:
            key = FeatureCache.key(model_fingerprint(model), self._data_fp, self.sample_ids)
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        feats = embed(model, self.images, self.sample_ids, self.batch_size, self.device, self.progress,
                      desc=f"embedding {self.name}")
        if key is not None:
            self.cache.put(key, feats)
        return feats


class EpisodeEvaluator:
    """Nearest-centroid few-shot accuracy on the classes ``class_ids`` of a store."""

    def __init__(self, store: SampleStore, class_ids: np.ndarray, cfg: EvalConfig, *, batch_size: int = 128,
                 device: torch.device | str = "cpu", cache: FeatureCache | None = None, progress: bool = False,
                 name: str = "target", max_per_class: int | None = None) -> None:
        sample_ids = np.flatnonzero(np.isin(store.labels, class_ids))
        if max_per_class is not None:  # embed only the first samples of each class (cheaper validation)
            by_class = store.samples_by_class()
            sample_ids = np.sort(np.concatenate([by_class[c][:max_per_class] for c in class_ids]))
        self.split = SplitFeatures(store, sample_ids, batch_size=batch_size, device=device, cache=cache,
                                   progress=progress, name=name)
        self.sample_ids, self.cfg = sample_ids, cfg
        self.labels = store.labels[sample_ids]
        # episode indices point into the rows of this split's feature matrix
        if cfg.within_domain:  # every episode's classes from one domain
            domains = store.class_domain[self.labels]
            self.episodes: dict[int, Episodes] = {
                shot: sample_episodes_within(self.labels, domains, cfg.n_way, shot, cfg.n_query, cfg.episodes,
                                             seed=cfg.seed * 1000 + shot) for shot in cfg.shots}
        else:
            self.episodes = {
                shot: sample_episodes(self.labels, cfg.n_way, shot, cfg.n_query, cfg.episodes, seed=cfg.seed * 1000 + shot)
                for shot in cfg.shots
            }

    def features(self, model: nn.Module, use_cache: bool = False) -> torch.Tensor:
        return self.split.features(model, use_cache)

    def evaluate_features(self, features: torch.Tensor) -> list[dict]:
        out = []
        for shot, eps in self.episodes.items():
            acc, ci = mean_ci95(episode_accuracy(features, eps, prototype=self.cfg.prototype))
            out.append({"n_way": self.cfg.n_way, "n_shot": shot, "acc": acc, "ci95": ci, "episodes": eps.n_episodes})
        return out

    def evaluate(self, model: nn.Module, use_cache: bool = False) -> list[dict]:
        return self.evaluate_features(self.features(model, use_cache))


def validation_evaluator(cfg: ExperimentConfig, store: SampleStore, val_classes: np.ndarray, *,
                         device: torch.device | str = "cpu", cache: FeatureCache | None = None,
                         progress: bool = False) -> EpisodeEvaluator | None:
    """The validation episodes epochs are scored on: the first shot setting, ``val_queries``
    queries per class, and only the samples those need embedded. ``None`` without validation classes.

    Raises:
        MtftError: fewer validation classes with enough samples than ``eval.n_way``.
    """
    if not len(val_classes):
        return None
    ft, n_way = cfg.finetune, cfg.eval.n_way
    need = cfg.eval.shots[0] + ft.val_queries
    counts = np.bincount(store.labels, minlength=store.num_classes)[val_classes]
    usable = int((counts >= need).sum())
    if usable < n_way:
        raise MtftError(
            f"the validation split has {usable} classes with at least {need} samples ({len(val_classes)} classes in "
            f"{_domains_of(store, val_classes)}), fewer than eval.n_way={n_way}: {n_way}-way validation episodes "
            f"cannot be drawn. Give validation more classes (data.split.val_domains / val_fraction), or lower "
            f"eval.n_way or finetune.val_queries")
    val_eval = cfg.eval.model_copy(update={"shots": [cfg.eval.shots[0]], "episodes": ft.val_episodes,
                                           "n_query": ft.val_queries, "seed": cfg.eval.seed + 1})
    return EpisodeEvaluator(store, val_classes, val_eval, name="validation", batch_size=cfg.run.batch_size,
                            device=device, cache=cache, progress=progress,
                            max_per_class=need)


def validation_warnings(cfg: ExperimentConfig, store: SampleStore, val_classes: np.ndarray) -> list[str]:
    """Why the validation split may be too small to tell checkpoints apart (empty when it is not).

    With C usable classes and ``n_way``-way episodes there are C-choose-n_way class sets; with a
    handful (a single 5-class domain gives one) every episode asks the same question, so the
    checkpoint choice and early stopping follow noise in a few classes.
    """
    if not len(val_classes):
        return []
    need = cfg.eval.shots[0] + cfg.finetune.val_queries
    counts = np.bincount(store.labels, minlength=store.num_classes)[val_classes]
    usable = int((counts >= need).sum())
    sets = math.comb(usable, cfg.eval.n_way)
    if sets >= 20:
        return []
    return [f"validation: only {usable} usable classes in {_domains_of(store, val_classes)} for "
            f"{cfg.eval.n_way}-way episodes ({sets} distinct class set{'s' if sets != 1 else ''}): validation can "
            f"hardly tell checkpoints apart; give it more classes (data.split.val_domains / val_fraction)"]


def _domains_of(store: SampleStore, class_ids: np.ndarray) -> str:
    names = sorted({store.domain_names[d] for d in np.unique(store.class_domain[class_ids])})
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
