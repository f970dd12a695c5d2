import pytest
import yaml

from mtft_ray.config import config_hash, load_config, save_resolved
from mtft_ray.config.load import apply_overrides
from mtft_ray.errors import MtftError


def test_default_config_is_valid_and_derives_m():
    cfg = load_config(None)
    assert cfg.tasks.m == cfg.tasks.n_way * (cfg.tasks.n_shot + cfg.tasks.n_query)
    assert cfg.data.source == "glyphs" and cfg.backbone.name == "tf_efficientnet_lite0"


def test_dotted_overrides_are_parsed_as_yaml():
    cfg = load_config(None, ["finetune.lr=1e-4", "eval.shots=[1, 5, 10]", "tasks.within_domain=false"])
    assert cfg.finetune.lr == pytest.approx(1e-4)
    assert cfg.eval.shots == [1, 5, 10]
    assert cfg.tasks.within_domain is False


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({"finetune": {"lrr": 0.1}}))
    with pytest.raises(MtftError) as e:
        load_config(p)
    assert "finetune.lrr" in str(e.value) and str(p) in str(e.value)


def test_unknown_top_level_section_and_bad_value(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("finetun: {lr: 1}\ntasks: {M: 0}\n")
    with pytest.raises(MtftError) as e:
        load_config(p)
    assert "'finetun'" in str(e.value) and "tasks.M" in str(e.value)


def test_unknown_source_option_is_rejected():
    with pytest.raises(MtftError, match="samples_per_clas"):
        load_config(None, ["data.options.samples_per_clas=3"])


def test_unknown_source_is_rejected():
    with pytest.raises(MtftError, match="unknown data source 'nope'"):
        load_config(None, ["data.source=nope"])


def test_bad_override_syntax():
    with pytest.raises(MtftError, match="key.path=value"):
        load_config(None, ["=3"])
    with pytest.raises(MtftError, match="not a section"):
        apply_overrides({"tasks": 3}, ["tasks.M=3"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(MtftError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(MtftError, match="not valid YAML"):
        load_config(bad)


def test_file_weights_need_a_path():
    with pytest.raises(MtftError, match="weights_path"):
        load_config(None, ["backbone.weights=file"])


def test_hash_is_stable_and_sensitive(tmp_path):
    a, b = load_config(None), load_config(None)
    assert config_hash(a) == config_hash(b)
    assert config_hash(load_config(None, ["tasks.M=401"])) != config_hash(a)
    digest = save_resolved(a, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert digest == config_hash(a) and saved["tasks"]["M"] == a.tasks.M
    # the saved resolved config loads back to the same experiment
    assert config_hash(load_config(tmp_path / "config.yaml")) == digest
