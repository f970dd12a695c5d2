"""The CLI as a subprocess: a real tiny run end to end, and every kind of bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image


def mtft(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "MTFT_RAY_CACHE": str(cwd / "cache"), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def make_folder_tree(root: Path, domains: int = 3, classes: int = 6, per_class: int = 12, size: int = 40) -> Path:
    """root/<domain>/<class>/<i>.png: each class a distinct coarse colour pattern, plus noise."""
    rng = np.random.default_rng(0)
    for d in range(domains):
        for c in range(classes):
            coarse = rng.integers(0, 255, (4, 4, 3))
            base = np.kron(coarse, np.ones((size // 4, size // 4, 1)))
            folder = root / f"dom{d}" / f"cls{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


def tiny_config(tmp_path: Path, **sections) -> Path:
    cfg = {
        "name": "tiny",
        "data": {"source": "folder", "options": {"root": str(tmp_path / "data")}, "image_size": 32,
                 "split": {"target_domains": 1, "val_domains": 1}},
        "tasks": {"n_way": 3, "n_shot": 1, "n_query": 2, "M": 6},
        "finetune": {"epochs": 2, "tasks_per_step": 2, "val_episodes": 10},
        "standard": {"batch_size": 9},
        "eval": {"n_way": 3, "shots": [1, 5], "n_query": 3, "episodes": 30},
        "run": {"threads": 1},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tree(tmp_path):
    return make_folder_tree(tmp_path / "data")


def test_run_writes_result_json(tmp_path, tree):
    cfg = tiny_config(tmp_path)
    r = mtft("run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "out" / "result.json").read_text())
    assert res["M"] == 6 and res["m"] == 9 and len(res["config_hash"]) == 12
    assert Path(res["manifest"]).is_file()
    manifest = json.loads(Path(res["manifest"]).read_text())
    assert len(manifest["tasks"]) == 6
    rows = {(x["method"], x["n_shot"]): x for x in res["results"]}
    assert set(rows) == {(m, s) for m in ("direct", "standard", "multitask") for s in (1, 5)}
    for row in res["results"]:
        assert 0.0 <= row["acc"] <= 1.0 and row["ci95"] >= 0 and row["episodes"] == 30 and row["n_way"] == 3
    # the classes are separable: the pretrained backbone does far better than chance (1/3)
    assert rows[("direct", 5)]["acc"] > 0.6
    assert (tmp_path / "out" / "config.yaml").is_file() and (tmp_path / "out" / "multitask.pt").is_file()
    assert "multitask" in r.stdout and "5-way" not in r.stdout and "3-way 5-shot" in r.stdout
    # the same config and seeds repeat the same numbers
    r2 = mtft("run", str(cfg), "--out", str(tmp_path / "out2"), "--no-progress", cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    res2 = json.loads((tmp_path / "out2" / "result.json").read_text())
    assert [x["acc"] for x in res2["results"]] == [x["acc"] for x in res["results"]]

    # evaluate a checkpoint and the pretrained backbone alone
    r3 = mtft("evaluate", str(cfg), "--checkpoint", str(tmp_path / "out" / "multitask.pt"), "--out",
              str(tmp_path / "ev"), "--no-progress", cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert [x["acc"] for x in ev["results"]] == [rows[("multitask", s)]["acc"] for s in (1, 5)]


def _assert_clean_failure(r: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert r.returncode != 0
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("mtft-ray: error:"), err
    for n in needles:
        assert n in err, err
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("override,needles", [
    (["finetune.lrr=1"], ["unknown key 'finetune.lrr'"]),
    (["eval.n_way=20"], ["20-way", "classes"]),
    (["tasks.n_way=9"], ["9-way", "classes"]),
    (["data.options.root=/nonexistent/data"], ["data root not found", "/nonexistent/data"]),
    (["backbone.weights=hub"], ["tf_efficientnet_lite0", "hub"]),
])
def test_bad_input_fails_cleanly(tmp_path, tree, override, needles):
    cfg = tiny_config(tmp_path)
    out = tmp_path / "out"
    r = mtft("run", str(cfg), *override, "--out", str(out), "--no-progress", cwd=tmp_path)
    _assert_clean_failure(r, out, *needles)


def test_unreadable_image_is_named(tmp_path, tree):
    bad = tree / "dom0" / "cls0" / "broken.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "out"
    r = mtft("run", str(tiny_config(tmp_path)), "--out", str(out), cwd=tmp_path)
    _assert_clean_failure(r, out, "unreadable image", "broken.png")


def test_no_fonts_found(tmp_path):
    out = tmp_path / "out"
    empty = tmp_path / "nofonts"
    empty.mkdir()
    r = mtft("run", f"data.options.font_dirs=[{empty}]", "--out", str(out), cwd=tmp_path)
    _assert_clean_failure(r, out, "fonts-noto-core")


def test_stale_result_is_removed_on_failure(tmp_path, tree):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text("{}")
    r = mtft("run", str(tiny_config(tmp_path)), "tasks.n_way=9", "--out", str(out), cwd=tmp_path)
    assert r.returncode != 0 and not (out / "result.json").exists()


def test_help_lists_subcommands(tmp_path):
    r = mtft("--help", cwd=tmp_path)
    assert r.returncode == 0 and "run" in r.stdout and "evaluate" in r.stdout


@pytest.fixture
def tree5(tmp_path):
    return make_folder_tree(tmp_path / "data", domains=5, classes=4, per_class=10, size=32)


def test_select_writes_selection_and_plot(tmp_path, tree5):
    cfg = tiny_config(tmp_path, tasks={"n_way": 3, "M": 6},
                      selection={"pool_size": 30, "target_samples": 20, "patience": 1})
    out = tmp_path / "sel"
    r = mtft("select", str(cfg), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "selection.json").read_text())
    assert {"strategy", "k", "selected", "consistency", "diversity_curve"} <= doc.keys()
    assert doc["strategy"] == "selected" and doc["level"] == "unit" and 1 <= doc["k"] <= 3
    assert len(doc["selected_names"]) == doc["k"] and all(n.startswith("dom") for n in doc["selected_names"])
    assert doc["consistency"] == sorted(doc["consistency"], reverse=True)
    assert (out / "selection.png").stat().st_size > 1000
    # finetuning on the chosen domains: the manifest's tasks only use the selected domains
    manifest = json.loads((out / "manifest.json").read_text())
    assert {t["domain"] for t in manifest["tasks"]} <= set(doc["selected_names"])


def test_run_with_a_selection_strategy(tmp_path, tree5):
    cfg = tiny_config(tmp_path, tasks={"n_way": 3, "M": 6}, methods=["multitask"],
                      selection={"strategy": "random", "k": 1, "pool_size": 30, "target_samples": 20})
    out = tmp_path / "out"
    r = mtft("run", str(cfg), "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "result.json").read_text())
    assert res["selection"]["strategy"] == "random" and res["selection"]["k"] == 1
    assert len(res["selection"]["selected"]) == 1 and res["M"] == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert {t["domain"] for t in manifest["tasks"]} == set(res["selection"]["selected"])


def test_ablation_compares_every_strategy_on_the_same_episodes(tmp_path, tree5):
    cfg = tiny_config(tmp_path, tasks={"n_way": 3, "M": 4}, finetune={"epochs": 1, "tasks_per_step": 2},
                      eval={"shots": [1], "episodes": 20},
                      selection={"pool_size": 30, "target_samples": 20, "patience": 1, "ablation_targets": 1})
    out = tmp_path / "abl"
    r = mtft("select", str(cfg), "--ablation", "--out", str(out), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((out / "ablation.json").read_text())
    assert len(doc["targets"]) == 1
    rows = doc["targets"][0]["results"]
    assert [r["strategy"] for r in rows] == ["direct", "selected", "random", "no_consistency", "no_diversity", "all"]
    k = rows[1]["k"]
    assert rows[2]["k"] == rows[4]["k"] == k and rows[5]["k"] == 3  # fixed-size ablations at selected's k
    assert all(r["episodes"] == 20 and 0 <= r["acc"] <= 1 for r in rows)
    assert "selected" in r.stdout and doc["targets"][0]["target"] in r.stdout


def test_select_rejects_unknown_target_domain(tmp_path, tree5):
    cfg = tiny_config(tmp_path, selection={"target_domain": "nope", "pool_size": 30})
    out = tmp_path / "sel"
    r = mtft("select", str(cfg), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 2 and "not a held-out target domain" in r.stderr
