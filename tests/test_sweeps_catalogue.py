"""Every YAML in sweeps/ opens with a comment and validates."""

from pathlib import Path

import pytest

from mtft_ray.config import config_hash, load_config

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))


def test_catalogue_is_not_empty():
    assert len(SWEEPS) >= 2


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_opens_with_a_comment_and_validates(path):
    text = path.read_text()
    assert text.startswith("#"), f"{path.name} must open with a comment (what it asks, how to launch, cost)"
    assert "Launch:" in text and "Costs:" in text
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_default_yaml_is_the_builtin_default():
    assert config_hash(load_config(SWEEPS[0].parent / "default.yaml")) == config_hash(load_config(None))
