"""Calibrations: stored per machine kind, found exactly or scaled by pixel count, the stated
default where none exists, and one real (tiny) measurement by ``bench_train``."""

from __future__ import annotations

import re

import pytest

from mtft_ray.config.schema import ExperimentConfig
from mtft_ray.errors import MtftError
from mtft_ray.io import atomic_write_text
from mtft_ray.train.bench import bench_train
from mtft_ray.train.calibration import (DEFAULT_TRAIN_RATE_IMG_S, Calibration, calibration_dir, find_calibration,
                                        machine_kind, save_calibration, train_rate)

BACKBONE = "tf_efficientnet_lite0"


def calib(image_size: int = 64, images_per_s: float = 100.0, kind: str = "cpu-2c", **kw) -> Calibration:
    fields = dict(machine_kind=kind, backbone=BACKBONE, image_size=image_size, precision="fp32", strategy="ddp",
                  workers=0, images_per_s=images_per_s, peak_rss_mb=800.0, peak_gpu_mb=None, steps=30,
                  measured_at="2026-12-01T10:00:00+00:00", mtft_ray_version="0.1.0", torch_version="2.14.1")
    return Calibration(**{**fields, **kw})


@pytest.fixture
def cal_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MTFT_RAY_CALIBRATIONS", str(tmp_path))
    return tmp_path


def test_save_find_round_trip_in_the_env_directory(cal_dir):
    c = calib(peak_gpu_mb=1234.5, kind="gpu-h200-x1", precision="bf16")
    path = save_calibration(c)
    assert path.parent == cal_dir == calibration_dir()
    assert find_calibration("gpu-h200-x1", BACKBONE, 64, precision="bf16") == c
    assert Calibration.from_json(c.to_json()) == c
    # another precision, strategy, worker count or machine kind is another calibration
    assert find_calibration("gpu-h200-x1", BACKBONE, 64) is None
    assert find_calibration("gpu-h200-x1", BACKBONE, 64, "bf16", "deepspeed") is None
    assert find_calibration("gpu-h200-x1", BACKBONE, 64, "bf16", workers=2) is None
    assert find_calibration("cpu-2c", BACKBONE, 64, "bf16") is None


def test_calibration_dir_defaults_under_the_cache_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MTFT_RAY_CALIBRATIONS", raising=False)
    monkeypatch.setenv("MTFT_RAY_CACHE", str(tmp_path))
    assert calibration_dir() == tmp_path / "calibrations"


def test_exact_match_beats_scaled(cal_dir):
    save_calibration(calib(64, 100.0))
    save_calibration(calib(128, 30.0))  # slower than 100 * (64/128)^2 = 25: no scaling applied
    exact = find_calibration("cpu-2c", BACKBONE, 128)
    assert (exact.images_per_s, exact.scaled_from) == (30.0, None)
    rate, why = train_rate("cpu-2c", BACKBONE, 128)
    assert rate == 30.0 and why == "measured on cpu-2c 2026-12-01 (mtft-ray bench train)"


def test_other_size_is_scaled_by_pixel_count(cal_dir):
    save_calibration(calib(64, 100.0))
    c = find_calibration("cpu-2c", BACKBONE, 128)
    assert c.images_per_s == pytest.approx(25.0) and (c.image_size, c.scaled_from) == (128, 64)
    assert find_calibration("cpu-2c", BACKBONE, 32).images_per_s == pytest.approx(400.0)
    rate, why = train_rate("cpu-2c", BACKBONE, 128)
    assert rate == pytest.approx(25.0) and "scaled" in why and "64 px" in why and "cpu-2c 2026-12-01" in why
    # the nearest measured size is the one scaled
    save_calibration(calib(224, 10.0))
    assert find_calibration("cpu-2c", BACKBONE, 192).scaled_from == 224
    with pytest.raises(MtftError, match="scaled"):
        save_calibration(c)  # only measurements are stored


def test_unknown_kind_falls_back_to_the_stated_default(cal_dir):
    save_calibration(calib(64, 100.0))
    rate, why = train_rate("cpu-96c", BACKBONE, 64)
    assert rate == DEFAULT_TRAIN_RATE_IMG_S == 120.0
    assert why.startswith(f"no calibration for cpu-96c/{BACKBONE}/64 px: stated default 120 img/s")
    assert "2-core CPU" in why and "`mtft-ray bench train`" in why


def test_a_file_that_is_not_json_is_named(cal_dir):
    path = save_calibration(calib(64))
    atomic_write_text(path, "{not json")
    with pytest.raises(MtftError, match=re.escape(str(path))):
        find_calibration("cpu-2c", BACKBONE, 64)
    with pytest.raises(MtftError, match=re.escape(path.name)):  # also when it would be scaled
        train_rate("cpu-2c", BACKBONE, 128)
    atomic_write_text(path, '{"machine_kind": "cpu-2c"}')
    with pytest.raises(MtftError, match=f"{re.escape(path.name)}: missing backbone"):
        find_calibration("cpu-2c", BACKBONE, 64)


def test_a_file_whose_content_disagrees_with_its_name_is_refused(cal_dir):
    path = save_calibration(calib(64))
    path.rename(cal_dir / path.name.replace("64px", "96px"))
    with pytest.raises(MtftError, match="name and content disagree"):
        find_calibration("cpu-2c", BACKBONE, 96)


def test_machine_kind_names_the_cpu_count_or_the_gpu():
    assert re.fullmatch(r"cpu-\d+c", machine_kind("cpu"))
    assert re.fullmatch(r"cpu-\d+c|gpu-[a-z0-9-]+-x\d+", machine_kind())


def test_bench_train_measures_real_steps(cal_dir):
    cfg = ExperimentConfig.model_validate({"backbone": {"weights": "none"}, "data": {"image_size": 32},
                                           "tasks": {"n_way": 2, "n_shot": 1, "n_query": 1},
                                           "run": {"device": "cpu"}})
    r = bench_train(cfg, steps=3, warmup=1, save=True)
    c = Calibration.from_json(r["calibration"])
    assert c.images_per_s > 0 and r["baseline"]["images_per_s"] > 0
    assert 0 < r["baseline"]["ratio"] <= 2
    assert (c.machine_kind, c.backbone, c.image_size, c.precision, c.strategy, c.workers, c.steps) == \
        (machine_kind("cpu"), BACKBONE, 32, "fp32", "ddp", 0, 3)
    assert c.peak_rss_mb > 0 and c.peak_gpu_mb is None and c.scaled_from is None
    assert r["baseline"]["images_per_step"] == 4
    assert find_calibration(c.machine_kind, BACKBONE, 32) == c and r["saved_to"].startswith(str(cal_dir))
