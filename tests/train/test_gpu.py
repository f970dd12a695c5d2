"""GPU paths of distributed finetuning (NCCL, bf16): skipped without a CUDA GPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mtft_ray.experiment import run_experiment
from test_distributed import Cluster, _run_doc, make_folder_tree

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("strategy", ["ddp", "deepspeed"])
def test_gpu_worker_trains_with_bf16(tmp_path, strategy):
    """One GPU worker (NCCL, bf16 autocast; DeepSpeed ZeRO-2 in bf16): completes and learns."""
    import ray

    make_folder_tree(tmp_path / "data")
    cfg = Cluster(tmp_path, "", "").config("train.workers=1", "train.use_gpu=true", f"train.strategy={strategy}",
                                           "run.device=cuda")
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MTFT_RAY_CACHE", str(tmp_path / "cache"))
            run_experiment(cfg, tmp_path / "out")
    finally:
        if started:
            ray.shutdown()
    doc = _run_doc(tmp_path / "out")
    assert doc["global_step"] == 2 * 8 and doc["world_size"] == 1
    assert all(np.isfinite(h["step_losses"]).all() for h in doc["history"])
    tuned = [h for h in doc["history"] if h["epoch"] > 0]  # epoch 0: the pretrained model's validation
    assert tuned[1]["train_loss"] < tuned[0]["train_loss"]
