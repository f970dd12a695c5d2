"""Disjoint class splits: finetuning (source) / validation / target.

Example:
    >>> from mtft_ray.config.schema import SplitConfig
    >>> split = split_classes(store, SplitConfig(target_domains=["greek"], val_domains=1))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtft_ray.config.schema import ExperimentConfig, SplitConfig
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError


@dataclass(frozen=True)
class ClassSplit:
    """Class ids of each split, sorted; disjoint by construction."""

    source: np.ndarray
    val: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        s, v, t = (set(a.tolist()) for a in (self.source, self.val, self.target))
        if s & v or s & t or v & t:
            raise AssertionError("class splits overlap")

    def to_json(self, store: SampleStore) -> dict:
        out = {}
        for name in ("source", "val", "target"):
            ids = getattr(self, name)
            out[name] = {"domains": sorted({store.domain_names[d] for d in store.class_domain[ids]}),
                         "n_classes": int(len(ids))}
        return out

    def samples(self, store: SampleStore, which: str) -> np.ndarray:
        """Sample ids (sorted) of every class in split ``which``."""
        return np.flatnonzero(np.isin(store.labels, getattr(self, which)))

    def short_class_warnings(self, store: SampleStore, cfg: ExperimentConfig) -> list[str]:
        """One warning per split with classes that have fewer samples than its episodes draw per
        class: those episodes never draw such a class, though the split counts it.

        Finetuning tasks draw ``tasks.n_shot + tasks.n_query`` samples per class, validation
        episodes ``eval.shots[0] + finetune.val_queries``, target episodes ``shot + eval.n_query``
        per shot. Too few classes left for an episode is an error where the episodes are drawn.
        """
        counts = np.bincount(store.labels, minlength=store.num_classes)
        t, e = cfg.tasks, cfg.eval
        needs = {"finetuning": (self.source, {"tasks": t.n_shot + t.n_query}),
                 "validation": (self.val, {"validation episodes": e.shots[0] + cfg.finetune.val_queries}),
                 "target": (self.target, {f"{s}-shot episodes": s + e.n_query for s in sorted(set(e.shots))})}
        out = []
        for name, (ids, by_episode) in needs.items():
            left = {what: ids[counts[ids] < need] for what, need in by_episode.items()}
            parts = [f"{len(c)} from {what} (fewer than {by_episode[what]} samples)" for what, c in left.items() if len(c)]
            if parts:
                short = np.unique(np.concatenate(list(left.values())))
                doms = sorted({store.domain_names[d] for d in store.class_domain[short]})
                out.append(f"{name} split: {len(short)} of {len(ids)} classes have too few samples for an episode and "
                           f"are left out: {'; '.join(parts)}; in domain(s) {', '.join(doms[:5])}"
                           + (f" and {len(doms) - 5} more" if len(doms) > 5 else ""))
        return out


def _pick_domains(names: list[str], spec: list[str] | int, taken: set[str], rng: np.random.Generator,
                  what: str) -> list[str]:
    if isinstance(spec, list):
        unknown = [d for d in spec if d not in names]
        if unknown:
            raise MtftError(f"data.split.{what}: unknown domain(s) {unknown}; available: {names}")
        clash = taken & set(spec)
        if clash:
            raise MtftError(f"data.split.{what}: domain(s) {sorted(clash)} are already in another split")
        return list(spec)
    free = [d for d in names if d not in taken]
    if spec > len(free) - 1:
        raise MtftError(f"data.split.{what}={spec}: only {len(names)} domains, at least one must stay for finetuning")
    return [free[i] for i in sorted(rng.permutation(len(free))[:spec])]


def split_classes(store: SampleStore, cfg: SplitConfig) -> ClassSplit:
    """Split the store's classes; whole domains (``by: domain``) or within each domain (``by: class``)."""
    rng = np.random.default_rng(cfg.seed)
    if cfg.by == "domain":
        names = store.domain_names
        explicit = [d for d in (cfg.target_domains, cfg.val_domains) if isinstance(d, list)]
        taken = set().union(*explicit) if explicit else set()
        if isinstance(cfg.target_domains, list):
            target = _pick_domains(names, cfg.target_domains, set(), rng, "target_domains")
        else:
            target = _pick_domains(names, cfg.target_domains, taken, rng, "target_domains")
        val = _pick_domains(names, cfg.val_domains, set(target), rng, "val_domains")
        dom = {n: i for i, n in enumerate(names)}
        t_ids, v_ids = [dom[d] for d in target], [dom[d] for d in val]
        classes = np.arange(store.num_classes)
        t = classes[np.isin(store.class_domain, t_ids)]
        v = classes[np.isin(store.class_domain, v_ids)]
        s = classes[~np.isin(store.class_domain, t_ids + v_ids)]
        if len(s) == 0:
            raise MtftError("data.split leaves no domain for finetuning")
        return ClassSplit(np.sort(s), np.sort(v), np.sort(t))
    parts: dict[str, list[int]] = {"source": [], "val": [], "target": []}
    for d in range(store.num_domains):
        cls = np.flatnonzero(store.class_domain == d)
        cls = cls[rng.permutation(len(cls))]
        n_t = int(round(cfg.target_fraction * len(cls)))
        n_v = int(round(cfg.val_fraction * len(cls)))
        parts["target"] += cls[:n_t].tolist()
        parts["val"] += cls[n_t : n_t + n_v].tolist()
        parts["source"] += cls[n_t + n_v :].tolist()
    if not parts["source"] or not parts["target"]:
        raise MtftError(f"data.split by class leaves an empty split ({store.num_classes} classes)")
    return ClassSplit(*(np.sort(np.array(parts[k], np.int64)) for k in ("source", "val", "target")))
