"""Finetuning tasks: fixed, seeded N-way episodes, and the manifest that records them.

Task ``i`` is drawn from its own generator seeded by ``(seed, i)``, so it is always the same
classes and samples, whatever M is: the first 200 tasks of M=400 are the tasks of M=200, and
"M tasks × m samples" is an exact, reproducible budget.

Example:
    >>> tasks = make_tasks(store, split.source, TaskConfig(M=100))  # doctest: +SKIP
    >>> tasks.support.shape  # (M, n_way, n_shot)                    # doctest: +SKIP
    (100, 5, 1)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtft_ray.config.schema import TaskConfig
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError
from mtft_ray.tasks.episodes import Episodes
from mtft_ray.io import atomic_write_text


@dataclass(frozen=True)
class TaskSet(Episodes):
    """M finetuning tasks: fixed episodes whose sample ids index the store.

    Attributes (beyond :class:`Episodes`' ``support``, ``query``, ``classes``):
        domains: ``(M,)`` domain id of each task (-1 when a task mixes domains).
        ids: ``(M,)`` the task index each task was seeded with.
    """

    domains: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return self.n_episodes

    @property
    def m(self) -> int:
        return self.n_way * (self.n_shot + self.n_query)

    def subset(self, index: np.ndarray | list[int]) -> "TaskSet":
        index = np.asarray(index, np.int64)
        return TaskSet(support=self.support[index], query=self.query[index], classes=self.classes[index],
                       domains=self.domains[index], ids=self.ids[index])

    def episode_samples(self, i: int) -> np.ndarray:
        """Sample ids of task ``i`` in forward order: supports class-major, then queries class-major."""
        return np.concatenate([self.support[i].reshape(-1), self.query[i].reshape(-1)])

    def all_samples(self) -> np.ndarray:
        """Every distinct sample id the tasks use (the standard-finetuning baseline trains on these)."""
        return np.unique(np.concatenate([self.support.reshape(-1), self.query.reshape(-1)]))


def _eligible_classes(store: SampleStore, class_ids: np.ndarray, need: int) -> np.ndarray:
    counts = np.bincount(store.labels, minlength=store.num_classes)
    return class_ids[counts[class_ids] >= need]


def domain_classes(store: SampleStore, class_ids: np.ndarray, domains: list[str]) -> np.ndarray:
    """The classes of ``class_ids`` that live in the named domains.

    Raises:
        MtftError: a name that is no domain of the data, or that holds none of ``class_ids``
            (a held-out target or validation domain named as a finetuning domain).
    """
    class_ids = np.asarray(class_ids, np.int64)
    present = sorted({store.domain_names[d] for d in store.class_domain[class_ids]})
    outside = [d for d in domains if d not in present]
    if outside:
        known = set(store.domain_names)
        what = ", ".join(f"{d!r} ({'held out: a target or validation domain' if d in known else 'unknown'})"
                         for d in outside)
        raise MtftError(f"tasks.domains: {what} is not a source domain; source domains: {', '.join(present)}")
    ids = [store.domain_names.index(d) for d in domains]
    return class_ids[np.isin(store.class_domain[class_ids], ids)]


def make_tasks(store: SampleStore, class_ids: np.ndarray, cfg: TaskConfig, M: int | None = None,
               start: int = 0) -> TaskSet:
    """Draw tasks ``start .. start+M-1`` from the given classes (default ``M = cfg.M``).

    With ``cfg.within_domain`` every task's classes come from one domain, chosen with
    probability proportional to its number of eligible classes (each class equally likely).
    ``cfg.domains`` keeps the classes of those domains only (the task subset a sweep searches).
    ``cfg.max_classes`` keeps a seeded subset of the eligible classes, the first N of one fixed
    permutation, so a smaller subset is always inside a larger one.

    Raises:
        MtftError: when no domain (or the pool) has ``n_way`` classes with enough samples, or
            ``cfg.domains`` names a domain without any of ``class_ids``.
    """
    M = cfg.M if M is None else M
    need = cfg.n_shot + cfg.n_query
    class_ids = np.asarray(class_ids, np.int64)
    if cfg.domains is not None:
        class_ids = domain_classes(store, class_ids, cfg.domains)
    eligible = _eligible_classes(store, class_ids, need)
    if cfg.max_classes is not None and cfg.max_classes < len(eligible):
        keep = np.random.default_rng([cfg.seed, 7919]).permutation(eligible)[: cfg.max_classes]
        eligible = np.sort(keep)
    by_class = store.samples_by_class()
    if cfg.within_domain:
        groups = [eligible[store.class_domain[eligible] == d] for d in range(store.num_domains)]
        groups = [(d, g) for d, g in enumerate(groups) if len(g) >= cfg.n_way]
    else:
        groups = [(-1, eligible)] if len(eligible) >= cfg.n_way else []
    if not groups:
        where = "any single domain" if cfg.within_domain else "the finetuning classes"
        raise MtftError(
            f"{cfg.n_way}-way tasks with {cfg.n_shot}+{cfg.n_query} samples per class need {cfg.n_way} classes "
            f"with >= {need} samples in {where}; only {len(eligible)} of {len(class_ids)} finetuning classes "
            f"have enough samples")
    weights = np.array([len(g) for _, g in groups], np.float64)
    weights /= weights.sum()
    classes = np.empty((M, cfg.n_way), np.int64)
    samples = np.empty((M, cfg.n_way, need), np.int64)
    domains = np.empty(M, np.int64)
    for row, i in enumerate(range(start, start + M)):
        rng = np.random.default_rng([cfg.seed, i])
        d, group = groups[rng.choice(len(groups), p=weights)]
        chosen = np.sort(rng.choice(group, cfg.n_way, replace=False))
        classes[row], domains[row] = chosen, d
        for j, c in enumerate(chosen):
            samples[row, j] = rng.choice(by_class[c], need, replace=False)
    return TaskSet(support=samples[:, :, : cfg.n_shot].copy(), query=samples[:, :, cfg.n_shot :].copy(),
                   classes=classes, domains=domains, ids=np.arange(start, start + M))


def write_manifest(path: str | Path, tasks: TaskSet, store: SampleStore, extra: dict | None = None) -> None:
    """Write exactly which tasks a run used (classes by name, sample ids) as JSON, atomically."""
    doc = {
        "store_fingerprint": store.fingerprint(),
        "M": len(tasks), "m": tasks.m, "n_way": tasks.n_way, "n_shot": tasks.n_shot, "n_query": tasks.n_query,
        **(extra or {}),
        "tasks": [
            {"id": int(tasks.ids[i]),
             "domain": store.domain_names[tasks.domains[i]] if tasks.domains[i] >= 0 else None,
             "classes": [store.class_names[c] for c in tasks.classes[i]],
             "support": tasks.support[i].tolist(), "query": tasks.query[i].tolist()}
            for i in range(len(tasks))
        ],
    }
    atomic_write_text(path, json.dumps(doc))


def read_manifest(path: str | Path, store: SampleStore) -> TaskSet:
    """The tasks of a manifest, checked against the store they were drawn from."""
    doc = json.loads(Path(path).read_text())
    if doc["store_fingerprint"] != store.fingerprint():
        raise MtftError(f"manifest {path} was written for another data store ({doc['store_fingerprint']})")
    cls_id = {n: i for i, n in enumerate(store.class_names)}
    dom_id = {n: i for i, n in enumerate(store.domain_names)}
    t = doc["tasks"]
    return TaskSet(
        classes=np.array([[cls_id[c] for c in x["classes"]] for x in t], np.int64),
        support=np.array([x["support"] for x in t], np.int64),
        query=np.array([x["query"] for x in t], np.int64),
        domains=np.array([dom_id[x["domain"]] if x["domain"] else -1 for x in t], np.int64),
        ids=np.array([x["id"] for x in t], np.int64),
    )
