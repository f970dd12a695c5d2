"""Task selection applied to an experiment: pretrained features → selected finetuning tasks.

The selection library (:mod:`mtft_ray.selection.strategies`) works on feature arrays; this
module feeds it the cached pretrained features of the source split (the candidate tasks) and of
a target domain's samples (unlabelled), and turns the result back into a :class:`TaskSet`.

Example:
    >>> chosen = choose_tasks(exp, model, "selected", target_domain="latin")  # doctest: +SKIP
    >>> len(chosen.tasks), chosen.result.k                                    # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mtft_ray.errors import MtftError
from mtft_ray.evaluation.evaluate import SplitFeatures
from mtft_ray.selection.greedy import Pool, SelectionResult
from mtft_ray.selection.strategies import select_from_pool
from mtft_ray.tasks.pool import TaskSet, make_tasks


@dataclass
class Chosen:
    """The finetuning tasks a strategy chose, with the selection that chose them."""

    tasks: TaskSet
    result: SelectionResult
    names: list[str]  # selected domains (domain level) or task ids (task level), in selection order

    def summary(self) -> dict:
        r = self.result
        return {"strategy": r.strategy, "level": r.level, "k": r.k, "selected": self.names,
                "diversity": r.diversity, "coverage": r.coverage, "mean_consistency": r.mean_consistency,
                "M": len(self.tasks)}


def target_domain_classes(exp, domain: str) -> np.ndarray:
    """Class ids of one held-out target domain."""
    names = exp.store.domain_names
    target_domains = sorted({names[d] for d in exp.store.class_domain[exp.split.target]})
    if domain not in target_domains:
        raise MtftError(f"selection target domain {domain!r} is not a held-out target domain; "
                        f"target domains: {target_domains}")
    d = names.index(domain)
    return exp.split.target[exp.store.class_domain[exp.split.target] == d]


def target_domains(exp, spec: list[str] | int) -> list[str]:
    """The target domains an ablation covers: a list as given, or the first ``spec`` (sorted)."""
    names = sorted({exp.store.domain_names[d] for d in exp.store.class_domain[exp.split.target]})
    if isinstance(spec, int):
        return names[:spec]
    for d in spec:
        target_domain_classes(exp, d)
    return list(spec)


class SelectionData:
    """Pretrained features of the source split and a target, computed once (and cached on disk)."""

    def __init__(self, exp, model: torch.nn.Module) -> None:
        self.exp = exp
        sel = exp.cfg.selection
        self._source_ids = exp.split.samples(exp.store, "source")
        self.source_features = SplitFeatures(
            exp.store, self._source_ids, batch_size=exp.cfg.run.batch_size, device=exp.device, cache=exp.cache,
            progress=exp.cfg.run.progress, name="source").features(model, use_cache=True)
        self.pool = make_tasks(exp.store, exp.split.source, exp.cfg.tasks, M=sel.pool_size,
                               start=1_000_000)  # candidates: a task stream apart from the finetuning tasks
        row = np.full(exp.store.num_samples, -1, np.int64)
        row[self._source_ids] = np.arange(len(self._source_ids))
        self.task_rows = np.stack([row[self.pool.episode_samples(i)] for i in range(len(self.pool))])
        self._target_all = exp.target.features(model, use_cache=True)

    def target_features(self, domain: str | None) -> np.ndarray:
        """Features of ``target_samples`` seeded-random samples of the target (one domain or all)."""
        exp, sel = self.exp, self.exp.cfg.selection
        labels = exp.target.labels
        classes = target_domain_classes(exp, domain) if domain else exp.split.target
        rows = np.flatnonzero(np.isin(labels, classes))
        if len(rows) == 0:
            raise MtftError(f"target {domain or 'split'} has no samples")
        rng = np.random.default_rng([sel.seed, 17])
        rows = np.sort(rng.choice(rows, min(sel.target_samples, len(rows)), replace=False))
        return self._target_all[rows].numpy()

    def make_pool(self, domain: str | None) -> Pool:
        sel = self.exp.cfg.selection
        units = self.pool.domains if sel.level == "domain" else None
        return Pool(self.source_features.numpy(), self.task_rows, self.target_features(domain), units, sel.shrinkage)


def choose_tasks(data: SelectionData, strategy: str, domain: str | None, k: int | None = None,
                 pool: Pool | None = None) -> Chosen:
    """Run one strategy and turn its choice into the finetuning task set.

    ``k`` sizes the fixed-size strategies (``random``, ``no_diversity``); without it they take
    ``selection.k``, else the k that ``selected`` finds. Other strategies ignore it.

    Domain level: the M finetuning tasks are drawn (as usual, seeded) from the classes of the
    selected domains only. Task level: the selected candidate tasks themselves.
    """
    exp, sel = data.exp, data.exp.cfg.selection
    pool = pool or data.make_pool(domain)
    if strategy not in ("random", "no_diversity"):
        k = None  # the other strategies size themselves (plateau rule, or the whole pool)
    elif k is None:
        k = sel.k or select_from_pool("selected", pool, **_walk(sel)).k
    result = select_from_pool(strategy, pool, k=k, seed=sel.seed, **_walk(sel))
    if sel.level == "domain":
        domains = [int(u) for u in result.selected]
        classes = exp.split.source[np.isin(exp.store.class_domain[exp.split.source], domains)]
        # the selected domains are already inside tasks.domains (the pool was drawn from them)
        tasks = make_tasks(exp.store, classes, exp.cfg.tasks.model_copy(update={"domains": None}))
        names = [exp.store.domain_names[d] for d in domains]
    else:
        tasks = data.pool.subset(result.selected)
        names = [int(data.pool.ids[i]) for i in result.selected]
    return Chosen(tasks, result, names)


def _walk(sel) -> dict:
    return dict(measure=sel.measure, rel_tol=sel.rel_tol, patience=sel.patience, min_k=sel.min_k, max_k=sel.max_k)
