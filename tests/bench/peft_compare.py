"""Full finetuning against LoRA adapters on one experiment, in one run: prints JSON.

Each setting runs ``mtft-ray run`` in its own child process (the same config, the same tasks and
episodes; only ``finetune.*`` differs), one after another, and reports from its ``result.json``:
accuracy ± CI per shot for direct and multitask, trainable and total parameters, the training
rate (images/s over the epochs) and its ratio to full finetuning's, the child's peak RSS, and the
size of the finetuned checkpoint (``multitask.pt``).

    python tests/bench/peft_compare.py --out runs/bench-peft               # the default glyph experiment
    python tests/bench/peft_compare.py --out /tmp/p -- tasks.M=50 eval.episodes=200   # smaller

Settings (``--settings``): ``full`` and ``lora-r<R>[@<lr>]`` (e.g. ``lora-r4@1e-3``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import json, resource, sys
from mtft_ray.config import load_config
from mtft_ray.experiment import run_experiment
cfg = load_config(sys.argv[1] if sys.argv[1] != "-" else None, sys.argv[3:])
run_experiment(cfg, sys.argv[2])
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def overrides_for(setting: str) -> list[str]:
    if setting == "full":
        return []
    if not setting.startswith("lora-r"):
        raise SystemExit(f"unknown setting {setting!r}: full or lora-r<R>[@<lr>]")
    rank, _, lr = setting.removeprefix("lora-r").partition("@")
    return [f"finetune.peft.r={int(rank)}", f"finetune.peft.alpha={2 * int(rank)}"] + ([f"finetune.lr={lr}"] if lr else [])


def run_setting(config: str, out: Path, setting: str, extra: list[str]) -> dict:
    folder = out / setting
    cmd = [sys.executable, "-c", CHILD, config, str(folder), "methods=[direct,multitask]", "run.progress=false",
           *extra, *overrides_for(setting)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{setting} failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    result = json.loads((folder / "result.json").read_text())
    hist = [h for h in result["histories"]["multitask"] if h["epoch"] > 0]
    images, seconds = sum(h["images"] for h in hist), sum(h["seconds"] for h in hist)
    training = result["training"]["multitask"]
    acc = {f"{r['method']}_{r['n_shot']}shot": [round(100 * r["acc"], 2), round(100 * r["ci95"], 2)]
           for r in result["results"]}
    return {"setting": setting, "accuracy_pct_ci95": acc, "trainable_params": training["trainable_params"],
            "total_params": training["total_params"], "best_epoch": training["best_epoch"],
            "train_images_per_s": round(images / seconds, 2), "train_seconds": round(seconds, 1),
            "step_seconds": round(seconds / sum(h["steps"] for h in hist), 4),
            "checkpoint_mb": round(os.path.getsize(folder / "multitask.pt") / 1e6, 3),
            "peak_rss_mb": round(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"], 1),
            "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="-", help="experiment YAML (default: the built-in default experiment)")
    p.add_argument("--out", required=True)
    p.add_argument("--settings", nargs="+", default=["full", "lora-r4@1e-3", "lora-r16@1e-3"])
    p.add_argument("overrides", nargs="*", help="config overrides for every setting (after --)")
    ns = p.parse_args()
    rows = [run_setting(ns.config, Path(ns.out), s, ns.overrides) for s in ns.settings]
    base = next((r for r in rows if r["setting"] == "full"), rows[0])
    for r in rows:
        r["train_rate_vs_full"] = round(r["train_images_per_s"] / base["train_images_per_s"], 3)
        r["checkpoint_vs_full"] = round(r["checkpoint_mb"] / base["checkpoint_mb"], 4)
        r["peak_rss_vs_full"] = round(r["peak_rss_mb"] / base["peak_rss_mb"], 3)
    print(json.dumps({"overrides": ns.overrides, "settings": rows,
                      "machine": {"cpus": os.cpu_count(), "load_1m": os.getloadavg()[0]}}, indent=1))


if __name__ == "__main__":
    main()
