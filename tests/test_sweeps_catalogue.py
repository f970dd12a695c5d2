"""Every YAML in sweeps/ opens with a comment and validates: sweep files (a top-level ``sweep:`` or
``search:`` key) with the sweep schema, experiment files with ExperimentConfig."""

from pathlib import Path

import pytest
import yaml

from mtft_ray.config import config_hash, load_config
from mtft_ray.sweep.load import load_sweep
from mtft_ray.sweep.space import trial_count

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


def is_sweep_file(path: Path) -> bool:
    raw = yaml.safe_load(path.read_text()) or {}
    return "sweep" in raw or "search" in raw


def test_catalogue_is_not_empty():
    assert len(SWEEPS) >= 2
    assert any(is_sweep_file(p) for p in SWEEPS) and not all(is_sweep_file(p) for p in SWEEPS)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_opens_with_a_comment_and_validates(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} must open with a comment (what it asks, how to launch, cost)"
    assert "Launch:" in text and "Costs:" in text
    if is_sweep_file(path):
        sweep, _ = load_sweep(path)
        assert sweep.name == path.stem and trial_count(sweep) >= 1
        assert f"mtft-ray sweep sweeps/{path.name}" in text
    else:
        cfg = load_config(path)
        assert cfg.name == path.stem


def test_default_yaml_is_the_builtin_default():
    assert config_hash(load_config(SWEEPS[0].parent / "default.yaml")) == config_hash(load_config(None))


def test_quickstart_is_a_small_grid_on_one_target():
    sweep, base = load_sweep(SWEEPS[0].parent / "quickstart.yaml")
    assert sweep.search.algorithm == "grid" and trial_count(sweep) == 6
    assert base.methods == ["multitask"] and base.eval.shots == [1]
    assert base.selection.target_domain == "lao" and base.finetune.epochs == 1


STORES = sorted((Path(__file__).parent.parent / "sweeps" / "stores").glob("*.yaml"))


@pytest.mark.parametrize("path", STORES, ids=lambda p: p.name)
def test_store_file_opens_with_a_comment_and_validates(path):
    text = path.read_text()
    assert text.startswith("#") and "Launch:" in text and "Costs:" in text
    assert f"mtft-ray data prepare sweeps/stores/{path.name}" in text
    cfg = load_config(path)
    assert cfg.name == path.stem and cfg.data.source != "store"


def test_every_sweep_on_a_prepared_store_says_how_to_prepare_it():
    stores = {p.name for p in STORES}
    for path in SWEEPS:
        raw = yaml.safe_load(path.read_text()) or {}
        base = raw.get("base")
        if isinstance(base, dict) and (base.get("data") or {}).get("source") == "store":
            named = [w.split("sweeps/stores/", 1)[1] for w in path.read_text().split() if "sweeps/stores/" in w]
            assert named and set(named) <= stores, path.name
