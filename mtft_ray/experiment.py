"""One experiment end to end: data → tasks → direct / standard / multitask → few-shot report.

Everything a run needs to be repeated is written next to its result: the resolved config and
its hash, the task manifest, the class split, per-epoch histories. ``result.json`` is written
last and atomically, so its presence means the run finished.

Example:
    >>> from mtft_ray.config import load_config
    >>> result = run_experiment(load_config(None, ["tasks.M=50"]), "runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from mtft_ray.config.load import save_resolved
from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.data.load import cache_root, load_store
from mtft_ray.data.splits import ClassSplit, split_classes
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError
from mtft_ray.evaluation.evaluate import EpisodeEvaluator, validation_evaluator
from mtft_ray.evaluation.features import FeatureCache
from mtft_ray.io import atomic_write_json
from mtft_ray.models.backbones import create_backbone
from mtft_ray.selection.apply import Chosen, SelectionData, choose_tasks, target_domain_classes
from mtft_ray.storage import Storage
from mtft_ray.tasks.pool import TaskSet, domain_classes, make_tasks, write_manifest
from mtft_ray.train.distributed import finetune_distributed, open_run_storage, preflight
from mtft_ray.train.standard import finetune_standard
from mtft_ray.train.worker import TrainRun, WorkerData, finetune_local, kept_pretrained_warning

log = logging.getLogger("mtft_ray")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MtftError("run.device is 'cuda' but no CUDA GPU is visible")
    return torch.device(name)


class Experiment:
    """The data side of an experiment (store, split, tasks, evaluators), built once."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        self.device = resolve_device(cfg.run.device)
        self.store: SampleStore = load_store(cfg.data, seed=cfg.seed, progress=cfg.run.progress)
        self.images = torch.from_numpy(self.store.images)
        self.split: ClassSplit = split_classes(self.store, cfg.data.split)
        self.cache = FeatureCache(cache_root(cfg.data))
        domain = cfg.selection.target_domain
        self.target = self.target_evaluator(domain)
        if domain is None:
            make_tasks(self.store, self.split.source, cfg.tasks, M=1)  # fail now, not after minutes, if impossible
        elif cfg.tasks.domains is not None:
            domain_classes(self.store, self.split.source, cfg.tasks.domains)  # names of source domains only
        self.val = validation_evaluator(cfg, self.store, self.split.val, device=self.device, cache=self.cache,
                                        progress=cfg.run.progress)

    def target_evaluator(self, domain: str | None) -> EpisodeEvaluator:
        """Episodes on the whole target split, or on one held-out target domain."""
        classes = self.split.target if domain is None else target_domain_classes(self, domain)
        return EpisodeEvaluator(self.store, classes, self.cfg.eval, name=domain or "target",
                                batch_size=self.cfg.run.batch_size, device=self.device, cache=self.cache,
                                progress=self.cfg.run.progress)

    def finetune_tasks(self, pretrained: torch.nn.Module) -> tuple[TaskSet, Chosen | None]:
        """The M finetuning tasks, chosen by ``cfg.selection``.

        'All' domains needs no choice; with a target domain it still goes through the selection,
        which draws the same tasks and measures their diversity and consistency for the report.
        """
        sel = self.cfg.selection
        if sel.strategy == "all" and sel.level == "domain" and sel.target_domain is None:
            return make_tasks(self.store, self.split.source, self.cfg.tasks), None
        chosen = choose_tasks(SelectionData(self, pretrained), sel.strategy, sel.target_domain)
        return chosen.tasks, chosen

    def backbone(self) -> torch.nn.Module:
        b = self.cfg.backbone
        return create_backbone(b.name, b.weights, b.weights_path).to(self.device)

    def validate(self, model: torch.nn.Module) -> float:
        return self.val.evaluate(model)[0]["acc"]

    def finetune_multitask(self, tasks: TaskSet, *, validate: bool = True,
                           on_epoch: Callable[[dict], None] | None = None) -> TrainRun:
        """Multitask finetuning in this process, on this experiment's data (the one worker function)."""
        data = WorkerData(self.store, self.images, self.val if validate else None)
        return finetune_local(self.cfg, tasks, data, self.device, on_epoch=on_epoch, progress=self.cfg.run.progress)

    def describe(self) -> dict:
        return {"store": {"fingerprint": self.store.fingerprint(), "samples": self.store.num_samples,
                          "classes": self.store.num_classes, "domains": self.store.num_domains},
                "split": self.split.to_json(self.store)}


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path, *, storage: Storage | None = None,
                   on_epoch: Callable[[dict], None] | None = None, train_callbacks: Sequence = ()) -> dict:
    """Run the configured methods and write ``out_dir/result.json``; returns the result.

    Args:
        storage: the run's storage folder, already opened and probed (:func:`open_run_storage`);
            by default it is opened here when multitask finetuning runs on Ray Train workers.
        on_epoch: called with each epoch's metrics of in-process multitask finetuning (a sweep's
            per-epoch report).
        train_callbacks: Ray Train callbacks for multitask finetuning on workers (the sweep's
            ``TuneReportCallback``, which forwards the workers' per-epoch reports to Tune).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").unlink(missing_ok=True)  # a stale result must not look like this run's
    digest = save_resolved(cfg, out)
    distributed = bool(cfg.train.workers) and "multitask" in cfg.methods
    if distributed:
        storage = storage or open_run_storage(cfg, out)
        preflight(cfg, storage)  # resume spec and cluster size fail here, before anything trains
    seed_everything(cfg.seed)
    t_start = time.perf_counter()
    exp = Experiment(cfg)
    pretrained = exp.backbone()
    tasks, chosen = exp.finetune_tasks(pretrained)
    selection = chosen.summary() if chosen else None
    write_manifest(out / "manifest.json", tasks, exp.store, extra={**exp.describe(), "selection": selection})
    if chosen:
        atomic_write_json(out / "selection.json", {**chosen.result.to_json(), "selected_names": chosen.names})
    log.info("data: %s", exp.describe())

    results, histories, timings, warnings = [], {}, {}, []
    for method in cfg.methods:
        t0 = time.perf_counter()
        model = pretrained if method == "direct" else exp.backbone()
        if method == "direct":
            rows = exp.target.evaluate(model, use_cache=True)
        else:
            if method == "multitask" and distributed:
                run = finetune_distributed(cfg, tasks, storage, callbacks=train_callbacks)  # best checkpoint from storage
                atomic_write_json(out / "multitask_run.json", run.summary())
                state, hist = run.best_state, run.history
            elif method == "multitask":  # the same worker function, in this process
                run = exp.finetune_multitask(tasks, on_epoch=on_epoch)
                state, hist = run.best_state, run.history
            else:
                state, hist = finetune_standard(model, tasks, exp.store.labels, exp.images, cfg.standard,
                                                cfg.finetune, validate=exp.validate if exp.val is not None else None,
                                                device=exp.device, progress=cfg.run.progress)
            model.load_state_dict(state)
            histories[method] = [h.to_json() for h in hist]
            warning = kept_pretrained_warning(method, hist)
            if warning:
                warnings.append(warning)
                log.warning(warning)
            rows = exp.target.evaluate(model)
            torch.save(state, out / f"{method}.pt")
        timings[method] = round(time.perf_counter() - t0, 2)
        results += [{"method": method, **r} for r in rows]
        log.info("%s done in %.1fs: %s", method, timings[method], rows)

    result = {
        "config_hash": digest, "M": len(tasks), "m": tasks.m, "selection": selection, "manifest": str((out / "manifest.json").resolve()),
        "results": results, "warnings": warnings, "histories": histories, "seconds": {**timings, "total": round(time.perf_counter() - t_start, 2)},
        **exp.describe(),
    }
    atomic_write_json(out / "result.json", result)
    return result
