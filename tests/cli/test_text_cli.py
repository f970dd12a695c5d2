"""Text experiments through the CLI as a subprocess: the packaged all-MiniLM-L6-v2 with LoRA
adapters on a generated CSV of texts, an adapter checkpoint evaluated back, truncation counted,
and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from test_cli import _assert_clean_failure, mtft

TOPICS = {  # domain -> classes -> words texts about that class are made of
    "kitchen": {"baking": "flour oven dough bread yeast", "knives": "blade steel sharpen edge cut",
                "coffee": "espresso bean roast grind brew"},
    "garden": {"roses": "petal thorn bloom red fragrant", "compost": "worm soil rot leaves heap",
               "lawn": "grass mow green blade turf"},
    "sea": {"sailing": "mast wind sail boat rudder", "fishing": "hook net bait catch rod",
            "diving": "oxygen tank reef mask depth"},
}
LONG = 6  # texts of 60+ words: cut at max_length 32 tokens


def write_csv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for domain, classes in TOPICS.items():
        for cls, words in classes.items():
            vocab = words.split()
            for i in range(10):
                n = 60 if len(rows) < LONG else 6
                text = " ".join(rng.choice(vocab + ["the", "a", "with", "and"], size=n))
                rows.append({"domain": domain, "label": cls, "text": f"{text} ({i})"})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def text_config(tmp_path: Path, **options) -> Path:
    cfg = {
        "name": "text-tiny",
        "data": {"source": "text", "options": {"files": [str(write_csv(tmp_path / "texts.csv"))], "max_length": 32,
                                               **options},
                 "split": {"target_domains": ["sea"], "val_domains": ["garden"]}},
        "backbone": {"name": "hf:sentence-transformers/all-MiniLM-L6-v2", "weights": "package"},
        "tasks": {"n_way": 3, "n_shot": 1, "n_query": 2, "M": 6},
        "finetune": {"epochs": 1, "lr": 1e-3, "val_episodes": 10, "peft": {"r": 4}},
        "eval": {"n_way": 3, "shots": [1, 5], "n_query": 3, "episodes": 30},
        "run": {"threads": 1},
        "methods": ["direct", "multitask"],
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_lora_text_run_counts_truncation_and_its_adapter_checkpoint_evaluates_back(tmp_path):
    cfg = text_config(tmp_path)
    r = mtft("run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["store"]["inputs"] == {"kind": "text", "max_length": 32, "truncated": LONG}
    assert f"{LONG} of 90 texts (6.67%) were longer than data.options.max_length=32 tokens" in " ".join(res["warnings"])
    rows = {(x["method"], x["n_shot"]): x["acc"] for x in res["results"]}
    assert rows[("direct", 5)] > 0.6  # the sentence encoder separates the topics well above chance (1/3)
    training = res["training"]["multitask"]
    assert training["peft"]["target_modules"] == ["query", "value"]  # BERT's attention projections
    assert 0 < training["trainable_params"] < training["total_params"] / 100
    adapters = (tmp_path / "out" / "multitask.pt").stat().st_size
    assert adapters < 1e6, adapters  # adapters only: MiniLM itself is 90 MB

    # the adapter checkpoint evaluates back onto the base model: the run's own numbers
    ev = mtft("evaluate", str(cfg), "--checkpoint", str(tmp_path / "out" / "multitask.pt"), "--out",
              str(tmp_path / "ev"), "--no-progress", cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    doc = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert [x["acc"] for x in doc["results"]] == [rows[("multitask", s)] for s in (1, 5)]
    # without the run's finetune.peft the adapters have nowhere to go: one line, exit 2
    bad = mtft("evaluate", str(cfg), "finetune.peft=null", "--checkpoint", str(tmp_path / "out" / "multitask.pt"),
               "--out", str(tmp_path / "ev2"), "--no-progress", cwd=tmp_path)
    assert bad.returncode == 2 and "holds LoRA adapters only" in bad.stderr


def test_text_bad_input_is_one_line_before_anything_trains(tmp_path):
    cfg = text_config(tmp_path, text_column="body")
    r = mtft("run", str(cfg), "--out", str(tmp_path / "out"), cwd=tmp_path)
    _assert_clean_failure(r, tmp_path / "out", "texts.csv", "'body'")
    cfg = text_config(tmp_path)
    r = mtft("run", str(cfg), "finetune.peft.target_modules=[q_proj]", "--out", str(tmp_path / "out2"), cwd=tmp_path)
    # the data's warnings come first (logged as the data loads); the error is one line, before training
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("mtft-ray: error: finetune.peft.target_modules: 'q_proj' matched no")
    assert "query" in last and not (tmp_path / "out2" / "result.json").exists()
    r = mtft("run", str(cfg), "backbone.name=tf_efficientnet_lite0", "--out", str(tmp_path / "out3"), cwd=tmp_path)
    _assert_clean_failure(r, tmp_path / "out3", "gives tokenized text", "image model")
