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
from mtft_ray.config.schema import ExperimentConfig, StorageConfig
from mtft_ray.data.load import cache_root, load_store
from mtft_ray.data.splits import ClassSplit, split_classes
from mtft_ray.data.sharded import as_rows
from mtft_ray.data.store import SampleStore
from mtft_ray.errors import MtftError
from mtft_ray.evaluation.evaluate import EpisodeEvaluator, validation_evaluator, validation_warnings
from mtft_ray.evaluation.features import FeatureCache, embed
from mtft_ray.io import atomic_torch_save, atomic_write_json
from mtft_ray.models.adapters import finetune_backbone, load_finetuned, parameter_counts
from mtft_ray.models.backbones import build_backbone
from mtft_ray.selection.apply import Chosen, SelectionData, choose_tasks, target_domain_classes
from mtft_ray.selection.metrics import consistency, task_means
from mtft_ray.lock import FolderLock
from mtft_ray.storage import Storage, open_storage
from mtft_ray.tasks.pool import TaskSet, domain_classes, make_tasks, write_manifest
from mtft_ray.train.augment import check_augment
from mtft_ray.train.distributed import finetune_distributed, open_run_storage, preflight
from mtft_ray.train.standard import finetune_standard
from mtft_ray.train.lr_probe import probe_lr, with_lr
from mtft_ray.train.multitask import EpochStats
from mtft_ray.train.worker import TrainRun, WorkerData, check_validation_plan, finetune_local, kept_pretrained_warning

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
        check_augment(cfg.finetune.augment, self.store)  # text cannot be augmented: fail before any work
        self.images = as_rows(self.store.images)
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
        self.warnings = validation_warnings(cfg, self.store, self.split.val)
        self.warnings += self.split.short_class_warnings(self.store, cfg)
        self.warnings += truncation_warnings(self.store)

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

    def backbone(self, adapters: bool = False) -> torch.nn.Module:
        """The pretrained backbone on this experiment's device; with ``adapters``, the model
        multitask finetuning trains (LoRA adapters in it when ``finetune.peft`` is set)."""
        b = self.cfg.backbone
        model = finetune_backbone(b, self.cfg.finetune.peft) if adapters else build_backbone(b)
        modality = getattr(model, "modality", "image")
        if (modality == "text") != self.store.is_text:
            data = "tokenized text" if self.store.is_text else "images"
            raise MtftError(f"backbone {b.name!r} encodes {modality}, but data.source {self.cfg.data.source!r} gives "
                            f"{data}: choose a backbone for {data}")
        return model.to(self.device)

    def validate(self, model: torch.nn.Module) -> float:
        return self.val.evaluate(model)[0]["acc"]

    def finetune_multitask(self, tasks: TaskSet, *, validate: bool = True,
                           on_epoch: Callable[[dict], None] | None = None,
                           cfg: ExperimentConfig | None = None) -> TrainRun:
        """Multitask finetuning in this process, on this experiment's data (the one worker function).

        Args:
            cfg: the experiment's config with its learning rate resolved (default: the experiment's).
        """
        data = WorkerData(self.store, self.images, self.val if validate else None)
        return finetune_local(cfg or self.cfg, tasks, data, self.device, on_epoch=on_epoch,
                              progress=self.cfg.run.progress)

    def describe(self) -> dict:
        inputs = ({"kind": "text", "max_length": self.store.image_shape[-1],
                   "truncated": int(self.store.meta.get("truncated", 0))} if self.store.is_text
                  else {"kind": "image", "shape": list(self.store.image_shape)})
        return {"store": {"fingerprint": self.store.fingerprint(), "samples": self.store.num_samples,
                          "classes": self.store.num_classes, "domains": self.store.num_domains, "inputs": inputs},
                "split": self.split.to_json(self.store)}


def truncation_warnings(store: SampleStore) -> list[str]:
    """Texts cut at the store's fixed token length, counted (never silently); none for images."""
    cut = int(store.meta.get("truncated", 0)) if store.is_text else 0
    if not cut:
        return []
    length = store.image_shape[-1]
    return [f"{cut} of {store.num_samples} texts ({100 * cut / store.num_samples:.2f}%) were longer than "
            f"data.options.max_length={length} tokens and were cut to {length}"]


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
    with FolderLock(open_storage(StorageConfig(path=str(out))), "run"):  # a second run here exits naming this one
        return _run_experiment(cfg, out, storage, on_epoch, train_callbacks)


def _run_experiment(cfg: ExperimentConfig, out: Path, storage: Storage | None, on_epoch: Callable[[dict], None] | None,
                    train_callbacks: Sequence) -> dict:
    for stale in ("result.json", "scores.json"):  # a stale result must not look like this run's
        (out / stale).unlink(missing_ok=True)
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
    if "multitask" in cfg.methods:
        check_validation_plan(cfg, len(tasks), max(1, cfg.train.workers))
    write_manifest(out / "manifest.json", tasks, exp.store, extra={**exp.describe(), "selection": selection})
    if chosen:
        atomic_write_json(out / "selection.json", {**chosen.result.to_json(), "selected_names": chosen.names})
    log.info("data: %s", exp.describe())

    results, histories, timings, warnings, training = [], {}, {}, list(exp.warnings), {}
    lr_probe, checkpoints = None, {}
    for w in warnings:
        log.warning(w)
    for method in cfg.methods:
        t0 = time.perf_counter()
        model = pretrained if method == "direct" else exp.backbone(adapters=method == "multitask")
        if method == "direct":
            rows = exp.target.evaluate(model, use_cache=True)
        else:
            if method == "multitask":
                run_cfg = cfg
                if cfg.finetune.lr == "auto":
                    lr_probe = probe_lr(cfg, tasks, WorkerData(exp.store, exp.images, exp.val), exp.device,
                                        progress=cfg.run.progress)
                    run_cfg = with_lr(cfg, lr_probe["chosen"])
                    log.info("finetune.lr=auto: probe chose %g: %s", lr_probe["chosen"], lr_probe["candidates"])
                if distributed:  # best checkpoint from storage
                    run = finetune_distributed(run_cfg, tasks, storage, callbacks=train_callbacks)
                    atomic_write_json(out / "multitask_run.json", run.summary())
                else:  # the same worker function, in this process
                    run = exp.finetune_multitask(tasks, on_epoch=on_epoch, cfg=run_cfg)
                state, hist, st = run.best_state, run.history, run.state
                counts = parameter_counts(model)
                training[method] = {"best_epoch": st.best_epoch, "best_step": st.best_step,
                                    "global_step": st.global_step, "stopped_early": st.stopped_early,
                                    "trainable_params": counts["trainable"], "total_params": counts["total"],
                                    "peft": peft_summary(cfg, model)}
            else:
                state, hist = finetune_standard(model, tasks, exp.store.labels, exp.images, cfg.standard,
                                                cfg.finetune, validate=exp.validate if exp.val is not None else None,
                                                device=exp.device, progress=cfg.run.progress)
            load_finetuned(model, state)
            histories[method] = [h.to_json() for h in hist]
            warning = kept_pretrained_warning(method, hist)
            if warning:
                warnings.append(warning)
                log.warning(warning)
            rows = exp.target.evaluate(model)
        timings[method] = round(time.perf_counter() - t0, 2)
        results += [{"method": method, **r} for r in rows]
        log.info("%s done in %.1fs: %s", method, timings[method], rows)
        kept = keep_scores(out, results)  # the small file first: a full disk loses no accuracy
        if method != "direct":
            try:
                checkpoints[method] = {"file": f"{method}.pt", **atomic_torch_save(state, out / f"{method}.pt")}
            except MtftError as e:
                raise MtftError(f"{e}; {kept}") from None

    diagnosis = finetuning_hurt(results, histories.get("multitask"), tasks, exp, pretrained)
    if diagnosis:
        warnings.append(diagnosis["warning"])
        log.warning(diagnosis["warning"])
    result = {
        "config_hash": digest, "M": len(tasks), "m": tasks.m, "selection": selection, "manifest": str((out / "manifest.json").resolve()),
        "protocol": protocol(cfg), "results": results, "warnings": warnings, "diagnosis": diagnosis,
        "training": training, "lr_probe": lr_probe, "checkpoints": checkpoints, "histories": histories,
        "seconds": {**timings, "total": round(time.perf_counter() - t_start, 2)}, **exp.describe(),
    }
    atomic_write_json(out / "result.json", result)
    (out / "scores.json").unlink(missing_ok=True)  # result.json holds them now
    return result


def peft_summary(cfg: ExperimentConfig, model: torch.nn.Module) -> dict | None:
    """The adapters a multitask run trained (its ``finetune.peft`` and the layer names LoRA
    resolved to), or None for full finetuning."""
    p = cfg.finetune.peft
    if p is None:
        return None
    return {**p.model_dump(), "target_modules": list(getattr(model, "peft_targets", p.target_modules or []))}


def keep_scores(out: Path, results: list[dict]) -> str:
    """Write the accuracies so far to the small ``scores.json`` (before any large file); returns
    where they are, with the numbers themselves when even that file could not be written."""
    text = ", ".join(f"{r['method']} {r['n_shot']}-shot {100 * r['acc']:.2f} ± {100 * r['ci95']:.2f}%" for r in results)
    try:
        atomic_write_json(out / "scores.json", {"complete": False, "results": results})
    except MtftError:
        return f"accuracies computed so far (not saved): {text}"
    return f"accuracies computed so far are in {out / 'scores.json'}: {text}"


def protocol(cfg: ExperimentConfig) -> dict:
    """The choices that make numbers comparable with the paper's (or not), named in ``result.json``."""
    ft = cfg.finetune
    return {"eval_prototype": cfg.eval.prototype, "temperature_group": ft.temperature_group,
            "task_order": ft.task_order, "keep_pretrained": ft.keep_pretrained}


def finetuning_hurt(results: list[dict], history: list[dict] | None, tasks: TaskSet, exp: Experiment,
                    pretrained: torch.nn.Module) -> dict | None:
    """Where multitask finetuning scored below direct adaptation beyond both CIs, what the tool
    knows about why; None otherwise.

    Gives, for the shots where it lost: the gap; the consistency of the finetuning tasks with the
    target (Algorithm 1's measure: cosine of each task's mean pretrained feature with the target's,
    averaged over tasks); train vs validation accuracy of the kept epoch (overfitting); and how
    often the M x m budget revisits each distinct source image per epoch.
    """
    by = {(r["method"], r["n_shot"]): r for r in results}
    lost = []
    for (method, shot), mt in by.items():
        d = by.get(("direct", shot))
        if method == "multitask" and d and mt["acc"] + mt["ci95"] < d["acc"] - d["ci95"]:
            lost.append((shot, mt, d))
    if not lost:
        return None
    cfg = exp.cfg
    target = exp.target.features(pretrained, use_cache=True)
    source_ids = tasks.all_samples()
    source = embed(pretrained, exp.images, source_ids, cfg.run.batch_size, exp.device)
    rows = np.searchsorted(source_ids, np.concatenate([tasks.support.reshape(len(tasks), -1),
                                                       tasks.query.reshape(len(tasks), -1)], axis=1))
    cons = float(consistency(task_means(source.numpy(), rows), target.mean(0).numpy()).mean())
    seen = len(tasks) * tasks.m / len(source_ids)
    stats = [EpochStats.from_json(h) for h in history or []]
    tuned = [h for h in stats if h.epoch > 0 and h.val_acc is not None]
    pre = next((h.val_acc for h in stats if h.epoch == 0), None)
    gaps = ", ".join(f"{cfg.eval.n_way}-way {shot}-shot {100 * mt['acc']:.2f} ± {100 * mt['ci95']:.2f}% vs direct "
                     f"{100 * d['acc']:.2f} ± {100 * d['ci95']:.2f}%" for shot, mt, d in lost)
    why = [f"the {len(tasks)} finetuning tasks' consistency with the target is {cons:.3f} (Algorithm 1's measure; "
           f"selection.strategy=selected ranks tasks by it)",
           f"{len(source_ids)} distinct source images, each seen {seen:.1f} times per epoch by M x m = "
           f"{len(tasks)} x {tasks.m}"]
    doc = {"shots": [shot for shot, _, _ in lost], "consistency": round(cons, 4),
           "distinct_source_images": int(len(source_ids)), "times_seen_per_epoch": round(seen, 2)}
    if tuned:
        last = tuned[-1]
        why.append(f"train accuracy {100 * last.train_acc:.1f}% vs validation {100 * last.val_acc:.1f}% at the last "
                   f"validation (epoch {last.epoch})" + (f", pretrained validation {100 * pre:.1f}%" if pre else ""))
        doc.update(train_acc=last.train_acc, val_acc=last.val_acc, pretrained_val_acc=pre)
    doc["warning"] = (f"multitask finetuning scored below direct adaptation beyond the CIs ({gaps}): " + "; ".join(why)
                      + ". Try a lower finetune.lr, finetune.patience / val_every, fewer tasks or more source images")
    return doc
