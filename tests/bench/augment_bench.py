"""The cost of ``finetune.augment: dinov2`` on the device, against a plain uint8 -> float copy: prints JSON.

Both run on the same uint8 ``(B, H, W, 3)`` batch already on the device (CUDA when available, else
CPU), interleaved, ``--repeats`` times each after ``--warmup`` untimed calls; medians are
reported. ``ratio`` is augmentation time over copy time (how many plain copies one augmented
batch costs); the copy stands in for the normalisation the training loop does anyway.

    python tests/bench/augment_bench.py                      # 64 x 224 x 224 x 3
    python tests/bench/augment_bench.py --batch 16 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from mtft_ray.train.augment import BatchAugment


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (args.batch, args.size, args.size, 3), dtype=torch.uint8, generator=g).to(device)
    aug = BatchAugment("dinov2", seed=0)
    steps = iter(range(1, 10**9))
    load_before = os.getloadavg()[0]

    def run_aug() -> None:
        aug(batch, epoch=1, step=next(steps))

    def run_copy() -> None:
        batch.float().div_(255)

    for _ in range(args.warmup):
        run_aug()
        run_copy()
    t_aug, t_copy = [], []
    for _ in range(args.repeats):
        t_aug.append(_timed(run_aug, device))
        t_copy.append(_timed(run_copy, device))
    aug_s, copy_s = statistics.median(t_aug), statistics.median(t_copy)
    print(json.dumps({
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch": list(batch.shape), "repeats": args.repeats,
        "augment_s": aug_s, "copy_s": copy_s,
        "augment_images_per_s": args.batch / aug_s, "copy_images_per_s": args.batch / copy_s,
        "ratio": aug_s / copy_s,
        "machine": {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_before": load_before, "load_after": os.getloadavg()[0],
                    "torch": torch.__version__},
    }, indent=1))


if __name__ == "__main__":
    main()
