"""Distributed multitask finetuning with the real pieces: a local Ray cluster (2 CPUs), TorchTrainer
with 2 gloo workers, DeepSpeed ZeRO-2/3 on CPU, and S3 served by moto on 127.0.0.1.

One Ray cluster serves the module (each ``TorchTrainer.fit`` still costs ~20-30 s of worker start
here); the CLI runs as a subprocess that joins it through ``RAY_ADDRESS``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from mtft_ray.config import load_config
from mtft_ray.errors import MtftError
from mtft_ray.experiment import run_experiment
from mtft_ray.models.backbones import create_backbone
from mtft_ray.train.plan import batch_plan
from moto_s3 import closed_port, list_keys, moto_s3, recording

pytestmark = pytest.mark.slow

BUCKET = "mtft-runs"
STEPS_PER_EPOCH = 4  # M=8 tasks, 1 task per worker x 2 workers per step
CURVE_TOL = 1e-5  # DDP vs DeepSpeed (fp32 on CPU) and interrupted vs uninterrupted: observed <= 1e-7


def make_folder_tree(root: Path, domains: int = 3, classes: int = 6, per_class: int = 12, size: int = 32) -> None:
    """root/<domain>/<class>/<i>.png, each class a coarse colour pattern plus noise (as in tests/cli)."""
    rng = np.random.default_rng(0)
    for d in range(domains):
        for c in range(classes):
            base = np.kron(rng.integers(0, 255, (4, 4, 3)), np.ones((size // 4, size // 4, 1)))
            folder = root / f"dom{d}" / f"cls{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(
                    folder / f"{i}.png")


@dataclass
class Cluster:
    root: Path
    endpoint: str
    address: str

    def config_file(self) -> Path:
        path = self.root / "tiny.yaml"
        if not path.exists():
            path.write_text(yaml.safe_dump({
                "name": "tiny",
                "data": {"source": "folder", "options": {"root": str(self.root / "data")}, "image_size": 32,
                         "split": {"target_domains": 1, "val_domains": 1}},
                "tasks": {"n_way": 3, "n_shot": 1, "n_query": 2, "M": 8},
                # the training mechanics under test; the pretrained candidate (epoch 0) has its own tests
                "finetune": {"epochs": 2, "tasks_per_step": 1, "val_episodes": 10, "keep_pretrained": False},
                "eval": {"n_way": 3, "shots": [1], "n_query": 3, "episodes": 20},
                "run": {"threads": 1, "progress": False},
                "train": {"workers": 2, "torch_threads": 1, "cpus_per_worker": 1},
                "methods": ["multitask"],
            }))
        return path

    def config(self, *overrides: str):
        return load_config(self.config_file(), list(overrides))

    def cli(self, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        env = {**os.environ, "RAY_ADDRESS": self.address}
        return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("distributed")
    make_folder_tree(root / "data")
    with moto_s3(BUCKET) as endpoint, pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTFT_RAY_CACHE", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        # started after the AWS test credentials are in the environment, so the workers see them
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield Cluster(root, endpoint, ray.get_runtime_context().gcs_address)
        finally:
            ray.shutdown()


def _run_doc(out: Path) -> dict:
    return json.loads((out / "multitask_run.json").read_text())


def _curve(doc: dict) -> list[float]:
    return [x for h in doc["history"] for x in h["step_losses"]]


def _ray_metrics(path: str, fs=None) -> list[dict]:
    """The metrics Ray Train recorded with the run's checkpoints."""
    from ray.train import Result

    df = Result.from_path(path, storage_filesystem=fs).metrics_dataframe
    return df.sort_values("epoch").to_dict("records")


@pytest.fixture(scope="module")
def ddp_run(cluster):
    out = cluster.root / "ddp"
    t0 = time.perf_counter()
    result = run_experiment(cluster.config(), out)
    return out, result, time.perf_counter() - t0


def test_ddp_two_workers_complete_report_per_epoch_and_the_checkpoint_reloads(cluster, ddp_run):
    out, result, _ = ddp_run
    assert [r["method"] for r in result["results"]] == ["multitask"] and result["M"] == 8
    assert 0.0 <= result["results"][0]["acc"] <= 1.0
    doc = _run_doc(out)
    assert batch_plan(cluster.config()).steps_per_epoch == STEPS_PER_EPOCH
    assert (doc["world_size"], doc["strategy"], doc["epoch"], doc["resumes"]) == (2, "ddp", 2, 0)
    assert doc["global_step"] == 2 * STEPS_PER_EPOCH
    assert [h["epoch"] for h in doc["history"]] == [1, 2]
    assert all(len(h["step_losses"]) == h["steps"] == STEPS_PER_EPOCH for h in doc["history"])
    assert all(h["images"] == STEPS_PER_EPOCH * 2 * 9 for h in doc["history"])  # both ranks' images, reduced
    assert all(isinstance(h["val_acc"], float) for h in doc["history"])
    assert result["histories"]["multitask"][1]["train_loss"] == pytest.approx(np.mean(doc["history"][1]["step_losses"]))

    # Ray recorded one report per epoch, with the reduced metrics and the global step
    reported = _ray_metrics(str(out / "train"))
    assert [m["epoch"] for m in reported] == [1, 2]
    assert [m["global_step"] for m in reported] == [4, 8]
    assert [m["val_acc"] for m in reported] == [h["val_acc"] for h in doc["history"]]

    # every checkpoint holds both ranks' RNG, the manifest and the state; the best one reloads
    for epoch in (1, 2):
        ck = out / "train" / f"epoch_{epoch:04d}"
        assert {"model.pt", "torch_state.pt", "state.json", "manifest.json"} <= {p.name for p in ck.iterdir()}
        assert sorted(p.name for p in (ck / "rng").iterdir()) == ["rank0.pt", "rank1.pt"]
        assert len(json.loads((ck / "manifest.json").read_text())["tasks"]) == 8
    best = Path(doc["best_checkpoint"])
    assert best.parent == out / "train" and best.name == f"epoch_{doc['best_epoch']:04d}"
    weights = torch.load(best / "model.pt", weights_only=True)
    model = create_backbone("tf_efficientnet_lite0", "package")
    model.load_state_dict(weights)  # the full backbone, loadable as is
    final = torch.load(out / "multitask.pt", weights_only=True)
    assert all(torch.equal(weights[k], final[k]) for k in final)  # the driver evaluated the best checkpoint
    pretrained = create_backbone("tf_efficientnet_lite0", "package").state_dict()
    assert any(not torch.equal(weights[k], pretrained[k]) for k in weights)  # and it was trained
    opt = torch.load(out / "train" / "epoch_0002" / "torch_state.pt", weights_only=True)["optimizer"]
    assert {int(s["step"]) for s in opt["state"].values()} == {8}  # AdamW took exactly 8 steps


def test_in_process_finetuning_is_the_same_worker_function_on_the_same_curve(cluster, ddp_run):
    """train.workers=0 runs the Ray worker's function in this process: with the same global batch
    (2 tasks per step) it follows the 2-worker run's loss curve and picks the same best epoch."""
    from mtft_ray.experiment import Experiment

    cfg = cluster.config("train.workers=0", "finetune.tasks_per_step=2")
    exp = Experiment(cfg)
    tasks, _ = exp.finetune_tasks(exp.backbone())
    epochs = []
    run = exp.finetune_multitask(tasks, on_epoch=epochs.append)
    doc = _run_doc(ddp_run[0])
    assert np.allclose([x for h in run.state.history for x in h["step_losses"]], _curve(doc), atol=CURVE_TOL, rtol=0)
    assert [m["epoch"] for m in epochs] == [1, 2] and [m["global_step"] for m in epochs] == [4, 8]
    assert run.state.best_epoch == doc["best_epoch"] and set(run.best_state) == set(torch.load(
        ddp_run[0] / "multitask.pt", weights_only=True))


@pytest.fixture(scope="module")
def s3_run(cluster, ddp_run):
    """The same run as ``ddp_run``, with S3 storage and a worker failing once in epoch 2."""
    out = cluster.root / "s3out"
    cfg = cluster.config_file()
    with recording(cluster.endpoint) as requests_so_far:
        r = cluster.cli("run", str(cfg), f"storage.path=s3://{BUCKET}/runs", f"storage.endpoint_url={cluster.endpoint}",
                        "train.fail_at_step=6", "train.max_failures=1", "--out", str(out), "--no-progress")
        assert r.returncode == 0, r.stderr[-3000:]
        requests = requests_so_far()
    return out, r, _run_doc(out), list_keys(cluster.endpoint, BUCKET, "runs/s3out/"), requests


def test_failure_in_epoch_2_resumes_from_the_s3_checkpoint_without_losing_or_repeating_steps(cluster, ddp_run, s3_run):
    out, r, doc, keys, _ = s3_run
    assert "runs/s3out/fail_hook/step6.done" in keys  # the hook fired (once: the run then completed)
    assert (doc["resumes"], doc["epoch"], doc["global_step"]) == (1, 2, 2 * STEPS_PER_EPOCH)
    assert [h["epoch"] for h in doc["history"]] == [1, 2]
    assert [h["global_step"] for h in doc["history"]] == [4, 8]
    # the restarted epoch 2 continued the exact trajectory of the uninterrupted run
    assert np.allclose(_curve(doc), _curve(_run_doc(ddp_run[0])), atol=CURVE_TOL, rtol=0)

    import pyarrow.fs

    fs = pyarrow.fs.S3FileSystem(endpoint_override=cluster.endpoint)
    reported = _ray_metrics(f"{BUCKET}/runs/s3out/train", fs)
    assert [m["epoch"] for m in reported] == [1, 2] and [m["global_step"] for m in reported] == [4, 8]
    assert [m["resumes"] for m in reported] == [0, 1]
    with fs.open_input_stream(f"{BUCKET}/runs/s3out/train/epoch_0002/torch_state.pt") as f:
        import io

        opt = torch.load(io.BytesIO(f.read()), weights_only=True)["optimizer"]
    assert {int(s["step"]) for s in opt["state"].values()} == {8}


def test_the_run_probes_its_storage_once(s3_run):
    """One write+delete probe for the whole `run --workers 2` (CLI, preflight and trainer share it)."""
    requests = s3_run[-1]
    probes = [(q["method"], q["url"].split("?")[0].split("/")[-1]) for q in requests if ".mtft-probe-" in q["url"]]
    assert [m for m, _ in probes].count("PUT") == 1, probes
    assert len({name for _, name in probes}) == 1
    assert any("/runs/s3out/train/epoch_0002/" in q["url"] for q in requests)  # the recording saw the run


def test_checkpoints_and_results_land_in_s3(cluster, s3_run):
    out, r, doc, keys, _ = s3_run
    for key in ("result.json", "config.yaml", "manifest.json", "multitask.pt", "multitask_run.json",
                "train_spec.json", "train/checkpoint_manager_snapshot.json", "train/epoch_0001/model.pt",
                "train/epoch_0002/torch_state.pt", "train/epoch_0002/rng/rank1.pt"):
        assert f"runs/s3out/{key}" in keys, key
    assert doc["best_checkpoint"].startswith(f"s3://{BUCKET}/runs/s3out/train/epoch_000")
    assert f"result files to s3://{BUCKET}/runs/s3out" in r.stdout
    assert "mtft-test-secret" not in r.stdout + r.stderr  # credentials never logged


def test_rerun_resumes_from_s3_and_adds_only_the_new_epoch(cluster, s3_run):
    out = s3_run[0]
    before = s3_run[2]
    cfg = cluster.config_file()
    common = [f"storage.path=s3://{BUCKET}/runs", f"storage.endpoint_url={cluster.endpoint}"]
    # another training config in the same run folder: refused before anything trains
    t0 = time.perf_counter()
    bad = cluster.cli("run", str(cfg), *common, "finetune.lr=0.5", "--out", str(out), "--no-progress")
    assert bad.returncode == 2 and "holds a run of another training config" in bad.stderr
    assert time.perf_counter() - t0 < 60
    r = cluster.cli("run", str(cfg), *common, "finetune.epochs=3", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = _run_doc(out)
    assert (doc["resumes"], doc["epoch"], doc["global_step"]) == (2, 3, 3 * STEPS_PER_EPOCH)
    assert [h["epoch"] for h in doc["history"]] == [1, 2, 3]
    assert _curve(doc)[: 2 * STEPS_PER_EPOCH] == _curve(before)  # epochs 1-2 kept, not retrained
    assert "runs/s3out/train/epoch_0003/model.pt" in list_keys(cluster.endpoint, BUCKET, "runs/s3out/")


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_steps_and_sharded_checkpoint_reloads_after_a_failure(cluster, ddp_run, stage):
    out = cluster.root / f"zero{stage}"
    cfg = cluster.config("train.strategy=deepspeed", f"train.deepspeed.zero_stage={stage}", "train.fail_at_step=6",
                         "train.max_failures=1")
    run_experiment(cfg, out)
    doc = _run_doc(out)
    assert (doc["strategy"], doc["resumes"], doc["global_step"]) == ("deepspeed", 1, 2 * STEPS_PER_EPOCH)
    # restarted from the epoch-1 ZeRO shards and matched DDP's curve step for step
    assert np.allclose(_curve(doc), _curve(_run_doc(ddp_run[0])), atol=CURVE_TOL, rtol=0)
    shards = out / "train" / "epoch_0002" / "deepspeed" / "state"
    names = {p.name for p in shards.iterdir()}
    assert {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)} <= names
    if stage == 3:  # parameters are partitioned too
        assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in (0, 1)} <= names
    states = torch.load(shards / sorted(n for n in names if "model_states" in n)[0], map_location="cpu",
                        weights_only=False)
    assert states["global_steps"] == 2 * STEPS_PER_EPOCH  # DeepSpeed's own optimizer-step count
    weights = torch.load(Path(doc["best_checkpoint"]) / "model.pt", weights_only=True)
    model = create_backbone("tf_efficientnet_lite0", "package")
    model.load_state_dict(weights)  # gathered to full tensors even under ZeRO-3
    final = torch.load(out / "multitask.pt", weights_only=True)
    assert all(torch.equal(weights[k], final[k]) for k in final)


def test_more_workers_than_the_cluster_can_hold_fails_at_once(cluster):
    cfg = cluster.config("train.workers=64")
    out = cluster.root / "too-many"
    t0 = time.perf_counter()
    with pytest.raises(MtftError) as e:
        run_experiment(cfg, out)
    assert time.perf_counter() - t0 < 30
    assert "64 workers" in str(e.value) and "room for 2 worker(s)" in str(e.value)
    assert not (out / "result.json").exists()
    cfg = cluster.config("train.use_gpu=true")  # no GPU on this cluster: never placeable either
    with pytest.raises(MtftError, match="GPU"):
        run_experiment(cfg, cluster.root / "gpu")


def test_unreachable_storage_fails_before_training(cluster):
    out = cluster.root / "unreachable"
    t0 = time.perf_counter()
    r = cluster.cli("run", str(cluster.config_file()), f"storage.path=s3://{BUCKET}/runs",
                    f"storage.endpoint_url=http://127.0.0.1:{closed_port()}", "--out", str(out))
    assert r.returncode == 2 and time.perf_counter() - t0 < 60
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mtft-ray: error: storage s3://mtft-runs/runs/unreachable")
    assert "not usable" in err and not out.exists()  # nothing written, nothing trained
    # the same through the library: preflight fails before the data is even loaded
    cfg = cluster.config(f"storage.path=s3://{BUCKET}/runs", f"storage.endpoint_url=http://127.0.0.1:{closed_port()}")
    with pytest.raises(MtftError, match="not usable"):
        run_experiment(cfg, out)
    assert not (out / "manifest.json").exists()


def test_dry_run_prints_the_arithmetic_and_trains_nothing(cluster):
    out = cluster.root / "dry"
    r = cluster.cli("run", str(cluster.config_file()), "train.strategy=deepspeed", "finetune.tasks_per_step=2",
                    "--workers", "3", "--dry-run", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "3 Ray Train worker(s), {'CPU': 1.0} each, {'CPU': 3.0} in all" in r.stdout
    assert "M=8 tasks x m=9 samples" in r.stdout
    assert "2 task(s) per worker x 3 worker(s) = 6 tasks (54 images) per step; 1 steps per epoch, 2 in all" in r.stdout
    assert "2 of 8 tasks per epoch fall in a last step with fewer tasks than workers" in r.stdout
    assert "train_batch_size = micro batch 2 x grad accum 1 x world size 3 = 6 tasks" in r.stdout
    assert not out.exists()
    bad = cluster.cli("run", str(cluster.config_file()), "train.deepspeed.zero_stage=5", "--dry-run")
    assert bad.returncode == 2 and "ZeRO stage must be 1, 2 or 3, got 5" in bad.stderr



# ---- LoRA adapters (finetune.peft) under DDP and DeepSpeed ZeRO-2/3 inside TorchTrainer -------------

LORA = ("finetune.peft.r=4", "finetune.peft.alpha=8")


@pytest.fixture(scope="module")
def lora_single(cluster):
    """LoRA in this process, 2 tasks per step: the curve the 2-worker runs must follow."""
    from mtft_ray.experiment import Experiment

    exp = Experiment(cluster.config(*LORA, "train.workers=0", "finetune.tasks_per_step=2"))
    tasks, _ = exp.finetune_tasks(exp.backbone())
    return exp.finetune_multitask(tasks)


@pytest.mark.parametrize("strategy,stage", [("ddp", None), ("deepspeed", 2), ("deepspeed", 3)])
def test_lora_on_two_workers_resumes_from_an_adapter_only_checkpoint_on_the_single_process_curve(
        cluster, lora_single, strategy, stage):
    from mtft_ray.models.adapters import finetune_backbone, load_finetuned, parameter_counts

    out = cluster.root / f"lora-{strategy}{stage or ''}"
    extra = [f"train.strategy={strategy}"] + ([f"train.deepspeed.zero_stage={stage}"] if stage else [])
    cfg = cluster.config(*LORA, *extra, "train.fail_at_step=6", "train.max_failures=1")
    result = run_experiment(cfg, out)
    doc = _run_doc(out)
    assert (doc["strategy"], doc["resumes"], doc["global_step"]) == (strategy, 1, 2 * STEPS_PER_EPOCH)
    # failed once in epoch 2, resumed from the epoch-1 adapter checkpoint: 1 worker and 2 give one curve
    single = [x for h in lora_single.state.history for x in h["step_losses"]]
    assert np.allclose(_curve(doc), single, atol=CURVE_TOL, rtol=0), (_curve(doc), single)

    # model.pt and the run's multitask.pt hold the adapters only, and they load back onto the base model
    weights = torch.load(Path(doc["best_checkpoint"]) / "model.pt", weights_only=True)
    assert weights and all(".lora_A." in k or ".lora_B." in k for k in weights)
    model = load_finetuned(finetune_backbone(cfg.backbone, cfg.finetune.peft), weights)
    counts = parameter_counts(model)
    assert sum(v.numel() for v in weights.values()) == counts["trainable"] < counts["total"] / 10
    training = result["training"]["multitask"]
    assert (training["trainable_params"], training["total_params"]) == (counts["trainable"], counts["total"])
    assert training["peft"]["target_modules"] == ["conv_head", "conv_pw", "conv_pwl"]
    final = torch.load(out / "multitask.pt", weights_only=True)
    assert set(final) == set(weights) and all(torch.equal(weights[k], final[k]) for k in final)
    assert any(bool(v.abs().sum()) for k, v in weights.items() if ".lora_B." in k)  # B starts at 0: it trained

    # the training state holds no frozen weight: only adapters and the temperature (+ optimizer state)
    ck = out / "train" / "epoch_0002"
    if strategy == "ddp":
        state = torch.load(ck / "torch_state.pt", weights_only=True)
        assert all(".lora_" in k or k == "head.temperature" for k in state["model"])
        assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {8}
    else:
        shards = ck / "deepspeed" / "state"
        module = torch.load(next(shards.glob("*model_states.pt")), map_location="cpu", weights_only=False)["module"]
        buffers = ("running_mean", "running_var", "num_batches_tracked")  # DeepSpeed keeps buffers (BN statistics)
        assert module is None or all(".lora_" in k or k.endswith(("temperature", *buffers)) for k in module)
    size = sum(p.stat().st_size for p in ck.rglob("*") if p.is_file())
    assert size < 3e6, f"an adapter checkpoint of {size / 1e6:.1f} MB: frozen weights were saved"
