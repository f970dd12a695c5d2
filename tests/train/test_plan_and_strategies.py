"""Pure pieces of distributed training: step sharding, batch arithmetic, DeepSpeed config,
config validation, checkpoint state and the torch strategy's save/load (no Ray here)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from mtft_ray.config import load_config
from mtft_ray.config.schema import DeepSpeedConfig, ExperimentConfig, FinetuneConfig
from mtft_ray.errors import MtftError
from mtft_ray.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from mtft_ray.train.multitask import epoch_steps, shard_steps, task_order
from mtft_ray.train.plan import batch_plan, format_plan, worker_resources
from mtft_ray.train.strategies import TorchStrategy, build_strategy, deepspeed_config


@pytest.mark.parametrize("M,tps,world", [(10, 1, 1), (10, 2, 3), (7, 2, 2), (5, 1, 4), (64, 3, 5)])
def test_epoch_steps_cover_each_task_once_and_ranks_are_disjoint(M, tps, world):
    cfg = FinetuneConfig(tasks_per_step=tps)
    per_rank = [epoch_steps(M, 3, cfg, world, r) for r in range(world)]
    assert len({len(p) for p in per_rank}) == 1  # every rank takes part in every step
    seen = []
    for s in range(len(per_rank[0])):
        step = [p[s] for p in per_rank]
        n_global = {x.n_global for x in step}
        assert len(n_global) == 1 and sum(len(x.tasks) for x in step) == n_global.pop()
        assert all(1 <= len(x.tasks) <= tps for x in step)
        seen += [int(t) for x in step for t in x.tasks]
    assert len(seen) == len(set(seen))
    dropped = M - len(seen)
    assert 0 <= dropped < world  # only a last step too short to give every rank a task is dropped
    # the same global steps as shard_steps and the seeded epoch order
    order = task_order(M, 3, cfg.seed)
    assert [sorted(int(t) for p in per_rank for t in p[s].tasks) for s in range(len(per_rank[0]))] == \
        [sorted(int(t) for t in g) for g in shard_steps(order, tps * world) if len(g) >= world]


def test_batch_plan_arithmetic():
    cfg = ExperimentConfig.model_validate({
        "tasks": {"M": 10, "n_way": 5, "n_shot": 1, "n_query": 4}, "finetune": {"tasks_per_step": 2, "epochs": 3},
        "train": {"workers": 2, "strategy": "deepspeed", "deepspeed": {"zero_stage": 3}, "cpus_per_worker": 2}})
    p = batch_plan(cfg)
    assert (p.M, p.m, p.workers, p.tasks_per_worker, p.tasks_per_step) == (10, 25, 2, 2, 4)
    assert (p.steps_per_epoch, p.total_steps, p.images_per_step, p.images_per_epoch) == (3, 9, 100, 250)
    assert (p.micro_batch, p.grad_accum, p.train_batch_size, p.zero_stage) == (2, 1, 4, 3)
    assert p.resources_per_worker == {"CPU": 2.0} and p.total_resources == {"CPU": 4.0}
    text = format_plan(p)
    assert "2 task(s) per worker x 2 worker(s) = 4 tasks" in text and "3 steps per epoch, 9 in all" in text
    assert "micro batch 2 x grad accum 1 x world size 2 = 4 tasks" in text and "skipped" not in text
    odd = batch_plan(cfg, M=9)  # steps of 4, 4 and 1: the last cannot give both workers a task
    assert (odd.steps_per_epoch, odd.images_per_epoch) == (2, 8 * 25)
    assert "1 of 9 tasks per epoch fall in a last step" in format_plan(odd)
    # the one-process path: one rank, no DeepSpeed arithmetic, no Ray resources
    local = batch_plan(cfg.model_copy(update={"train": cfg.train.model_copy(update={"workers": 0})}))
    assert (local.workers, local.tasks_per_step, local.steps_per_epoch, local.train_batch_size) == (1, 2, 5, None)
    assert "this process" in format_plan(local)


def test_same_epoch_budget_at_any_scale():
    for workers, tps in [(0, 4), (2, 2), (4, 1)]:
        cfg = ExperimentConfig.model_validate({"tasks": {"M": 40}, "finetune": {"tasks_per_step": tps},
                                               "train": {"workers": workers}})
        p = batch_plan(cfg)
        assert (p.tasks_per_step, p.steps_per_epoch, p.images_per_epoch) == (4, 10, 40 * cfg.tasks.m)


def test_worker_resources():
    cfg = ExperimentConfig.model_validate({"train": {"workers": 2, "use_gpu": True, "cpus_per_worker": 4,
                                                     "resources_per_worker": {"bigmem": 1}}})
    assert worker_resources(cfg.train) == {"CPU": 4.0, "GPU": 1.0, "bigmem": 1.0}
    cfg = ExperimentConfig.model_validate({"train": {"workers": 2, "cpus_per_worker": 1}})
    assert worker_resources(cfg.train) == {"CPU": 1.0}


def test_deepspeed_config_is_derived():
    for stage in (1, 2, 3):
        c = deepspeed_config(DeepSpeedConfig(zero_stage=stage), tasks_per_step=3, world_size=4, use_gpu=True)
        assert c["zero_optimization"]["stage"] == stage
        assert c["train_batch_size"] == c["train_micro_batch_size_per_gpu"] * c["gradient_accumulation_steps"] * 4 == 12
        assert c["bf16"]["enabled"] is True  # bf16 on GPU by default
    cpu = deepspeed_config(DeepSpeedConfig(), tasks_per_step=1, world_size=2, use_gpu=False)
    assert cpu["bf16"]["enabled"] is False and cpu["train_batch_size"] == 2
    forced = deepspeed_config(DeepSpeedConfig(bf16=False), tasks_per_step=1, world_size=1, use_gpu=True)
    assert forced["bf16"]["enabled"] is False


@pytest.mark.parametrize("override,needle", [
    ("train.deepspeed.zero_stage=4", "ZeRO stage must be 1, 2 or 3, got 4"),
    ("train.deepspeed.zero_stage=0", "ZeRO stage must be 1, 2 or 3, got 0"),
    ("train.strategy=fsdp", "train.strategy"),
    ("train.workers=-1", "train.workers"),
    ("train.gpus_per_worker=1", "use_gpu is false"),
    ("train.strategy=deepspeed train.deepspeed.bf16=true", "bf16 needs train.use_gpu"),
    ("storage.path=gs://bucket/x", "s3://bucket/prefix"),
    ("storage.aws_secret_access_key=x", "unknown key 'storage.aws_secret_access_key'"),
])
def test_bad_train_and_storage_config_is_rejected(override, needle):
    with pytest.raises(MtftError) as e:
        load_config(None, override.split())
    assert needle in str(e.value)


def test_unknown_strategy_name():
    net = torch.nn.Linear(2, 2)
    with pytest.raises(MtftError, match="unknown training strategy 'fsdp'"):
        build_strategy("fsdp", net, torch.optim.SGD(net.parameters(), lr=0.1), world_size=1,
                       device=torch.device("cpu"))


def test_torch_checkpoint_round_trip_restores_model_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    s = TorchStrategy(net, opt)
    for _ in range(3):
        s.zero_grad()
        s.backward(s.module(torch.randn(5, 4)).pow(2).sum())
        s.step()
    state = TrainState(epoch=2, global_step=3, history=[{"epoch": 1}, {"epoch": 2}], best_epoch=1, best_score=0.5)
    np.random.seed(7), random.seed(7)
    save_checkpoint(tmp_path, s, net[0], state, rank=0, manifest='{"tasks": []}')
    expect = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert {p.name for p in tmp_path.iterdir()} == {"torch_state.pt", "model.pt", "state.json", "manifest.json", "rng",
                                                  "digests.json"}
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == {"weight", "bias"}  # the given submodule

    torch.manual_seed(1)
    net2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    s2 = TorchStrategy(net2, torch.optim.AdamW(net2.parameters(), lr=0.1))
    got = load_checkpoint(tmp_path, s2, rank=0)
    assert got == state
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), net2.state_dict().values(), strict=True))
    assert s2.optimizer.state_dict()["state"][0]["step"].item() == 3  # optimizer steps survive the round trip
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expect[0], again[0]) and np.array_equal(expect[1], again[1]) and expect[2] == again[2]


def test_loading_a_checkpoint_of_another_strategy_fails_clearly(tmp_path):
    net = torch.nn.Linear(2, 2)
    s = TorchStrategy(net, torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(MtftError, match="not an mtft-ray training checkpoint"):
        load_checkpoint(tmp_path, s, rank=0)
    (tmp_path / "state.json").write_text(json.dumps(TrainState().to_json()))
    with pytest.raises(MtftError, match="not written by the ddp strategy"):
        load_checkpoint(tmp_path, s, rank=0)


def test_a_workers_mtft_error_is_found_through_rays_wrappers():
    from ray.train import WorkerGroupError

    from mtft_ray.train.distributed import _mtft_error_in

    class Wrapped(Exception):  # like Ray's RayTaskError, which keeps the original as .cause
        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    err = WorkerGroupError("training failed", {1: Wrapped(MtftError("bad data on rank 1"))})
    assert str(_mtft_error_in(err)) == "bad data on rank 1"
    assert _mtft_error_in(WorkerGroupError("training failed", {0: RuntimeError("a bug")})) is None


def test_resume_spec_ignores_exactly_the_fields_the_schema_marks_resume_safe():
    from mtft_ray.config.schema import ExperimentConfig, resume_safe_fields
    from mtft_ray.train.distributed import training_spec

    base = ExperimentConfig()
    safe = resume_safe_fields(ExperimentConfig)
    assert {"finetune.epochs", "train.max_failures", "train.fail_at_step", "data.cache_dir"} <= set(safe)
    h = training_spec(base)["hash"]
    for key, value in (("finetune.epochs", 9), ("train.max_failures", 3), ("train.checkpoints_to_keep", 5),
                       ("train.torch_threads", 4), ("data.cache_dir", "/elsewhere")):
        section, field = key.split(".")
        changed = base.model_copy(update={section: getattr(base, section).model_copy(update={field: value})})
        assert training_spec(changed)["hash"] == h, key
    for key, value in (("finetune.lr", 3e-4), ("tasks.M", 7), ("train.strategy", "deepspeed")):
        section, field = key.split(".")
        changed = base.model_copy(update={section: getattr(base, section).model_copy(update={field: value})})
        assert training_spec(changed)["hash"] != h, key


def test_best_epoch_rule_shared_by_both_trainers():
    from mtft_ray.train.checkpoint import TrainState, epoch_score, improves

    state = TrainState()
    for epoch, val in ((1, 0.5), (2, 0.7), (3, 0.7), (4, 0.6)):
        state.offer(epoch, val)
    assert state.best_epoch == 2  # a tie goes to the earlier epoch
    assert epoch_score(3, None) > epoch_score(2, None) and improves(0.1, None) and not improves(0.1, 0.1)
