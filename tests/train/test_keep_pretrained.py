"""The pretrained model is epoch 0: validated first, kept (with a warning) when finetuning only hurts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_store

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.evaluation.evaluate import validation_evaluator
from mtft_ray.tasks.pool import make_tasks
from mtft_ray.train.multitask import EpochStats
from mtft_ray.train.standard import finetune_standard
from mtft_ray.train.worker import WorkerData, finetune_local, kept_pretrained_warning, pretrained_state


def _setup(lr: float, keep: bool = True):
    store = make_store(n_domains=2, classes_per_domain=6, per_class=8, size=32)
    cfg = ExperimentConfig.model_validate({
        "tasks": {"n_way": 3, "n_shot": 1, "n_query": 2, "M": 6},
        "finetune": {"epochs": 2, "optimizer": "sgd", "lr": lr, "val_episodes": 30, "val_queries": 3,
                     "keep_pretrained": keep},
        "eval": {"n_way": 3, "shots": [1], "episodes": 30}, "run": {"progress": False}})
    source, val = np.arange(6), np.arange(6, 12)  # domain d0 trains, d1 validates
    tasks = make_tasks(store, source, cfg.tasks)
    data = WorkerData(store, torch.from_numpy(store.images), validation_evaluator(cfg, store, val))
    return cfg, tasks, data


def test_a_validation_curve_that_only_falls_keeps_the_pretrained_weights_and_warns():
    cfg, tasks, data = _setup(lr=5.0)  # SGD at 5.0 wrecks the pretrained features
    run = finetune_local(cfg, tasks, data, torch.device("cpu"))
    pre, *tuned = run.history
    assert pre.epoch == 0 and pre.steps == 0 and pre.train_loss is None and [h.epoch for h in tuned] == [1, 2]
    assert all(h.val_acc <= pre.val_acc for h in tuned), [h.val_acc for h in run.history]
    assert run.state.best_epoch == 0
    expected = pretrained_state(cfg)
    assert all(torch.equal(run.best_state[k], v) for k, v in expected.items())
    warning = kept_pretrained_warning("multitask", run.history)
    assert warning.startswith("multitask: no finetuned epoch beat the pretrained weights on validation (pretrained ")
    assert f"{100 * pre.val_acc:.2f}%" in warning and "kept the pretrained weights" in warning


def test_without_keep_pretrained_the_best_finetuned_epoch_is_kept():
    cfg, tasks, data = _setup(lr=5.0, keep=False)
    run = finetune_local(cfg, tasks, data, torch.device("cpu"))
    assert [h.epoch for h in run.history] == [1, 2] and run.state.best_epoch in (1, 2)
    assert kept_pretrained_warning("multitask", run.history) is None


def test_standard_finetuning_has_the_same_epoch_0():
    cfg, tasks, data = _setup(lr=5.0)
    model = pretrained_state(cfg)
    from mtft_ray.models.backbones import create_backbone

    net = create_backbone(cfg.backbone.name, cfg.backbone.weights, cfg.backbone.weights_path)
    std = cfg.standard.model_copy(update={"lr": 5.0, "head_lr": 5.0, "batch_size": 6})
    state, hist = finetune_standard(net, tasks, data.store.labels, data.images, std, cfg.finetune,
                                    validate=lambda m: data.val.evaluate(m)[0]["acc"])
    assert [h.epoch for h in hist] == [0, 1, 2] and all(h.val_acc <= hist[0].val_acc for h in hist[1:])
    assert all(torch.equal(state[k], model[k]) for k in model)
    assert kept_pretrained_warning("standard", hist).startswith("standard: no finetuned epoch beat")


@pytest.mark.parametrize(("vals", "warns"), [((0.5, 0.4, 0.3), True), ((0.5, 0.5, 0.4), True),
                                             ((0.5, 0.6, 0.4), False), ((None, 0.4, 0.3), False)])
def test_the_warning_needs_every_finetuned_epoch_at_or_below_epoch_0(vals, warns):
    hist = [EpochStats(e, None if e == 0 else 1.0, None if e == 0 else 0.5, v, 10.0, 0, 0, 1.0)
            for e, v in enumerate(vals)]
    if vals[0] is None:
        hist = hist[1:]
    assert (kept_pretrained_warning("multitask", hist) is not None) == warns
