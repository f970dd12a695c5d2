"""``mtft-ray cluster check`` on every YAML in cluster/ and on broken copies; the image's pins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from mtft_ray.cluster.check import (
    ClusterReport,
    NodeType,
    check_cluster,
    image_ray_version,
    ray_start_resources,
)
from mtft_ray.errors import MtftError

ROOT = Path(__file__).parents[2]
CLUSTER_YAMLS = sorted((ROOT / "cluster").glob("*.yaml"))
GPU_SWEEP = [str(ROOT / "sweeps" / "quickstart.yaml"), "resources={cpu: 4, gpu: 1}"]


def check(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", "cluster", "check", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def test_cluster_folder_has_aws_and_local_configs():
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in CLUSTER_YAMLS}
    assert {"aws", "local"} <= providers


@pytest.mark.parametrize("path", CLUSTER_YAMLS, ids=lambda p: p.name)
def test_every_cluster_yaml_passes(path):
    r = check(str(path), "--sweep", *GPU_SWEEP)
    assert r.returncode == 0, r.stderr
    assert "OK: valid for Ray's cluster launcher" in r.stdout
    raw = yaml.safe_load(path.read_text())
    for name in raw.get("available_node_types", {}):
        assert re.search(rf"^{re.escape(name)}\s", r.stdout, re.MULTILINE), r.stdout
    assert re.search(r"at most \d+ trials? at a time", r.stdout), r.stdout


def test_aws_yaml_resolves_instance_types_offline():
    """g5.xlarge: 4 vCPU, 1 A10G, 16 GiB from moto's EC2 catalogue; 8 GPU workers at most -> 8 GPU trials."""
    r = check(str(ROOT / "cluster" / "aws.yaml"), "--sweep", *GPU_SWEEP)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.split()}
    assert re.search(r"g5\.xlarge\s+4\s+1 A10G\s+16 GiB\s+0-6\s+spot", rows["gpu_spot"]), rows["gpu_spot"]
    assert re.search(r"g5\.xlarge\s+4\s+1 A10G\s+16 GiB\s+0-2\s+on-demand", rows["gpu_ondemand"])
    assert re.search(r"m5\.2xlarge\s+0 \(of 8 vCPU\)\s+0\s+32 GiB\s+head", rows["ray.head"])
    assert "TRAIN_DRIVER: 8" in rows["ray.head"]
    assert "at full scale: CPU 32, TRAIN_DRIVER 8, GPU 8" in r.stdout
    assert "each trial holds CPU 4, GPU 1; at most 8 trials at a time" in r.stdout
    assert "rayproject" not in r.stdout and "(Ray 2.60.0)" in r.stdout


# ------------------------------------------------------------------------------------ broken copies


def _aws() -> dict:
    return yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())


def _unknown_keys(c: dict) -> None:
    c["max_worker"] = 3
    c["available_node_types"]["gpu_spot"]["min_worker"] = 1


def _head_missing(c: dict) -> None:
    del c["head_node_type"]


def _head_not_a_type(c: dict) -> None:
    c["head_node_type"] = "ray.hed"


def _gpu_type_without_gpus(c: dict) -> None:
    c["available_node_types"]["gpu_spot"]["node_config"]["InstanceType"] = "m5.xlarge"


def _gpu_resources_on_cpu_instance(c: dict) -> None:
    c["available_node_types"]["workers"] = {"resources": {"GPU": 1}, "max_workers": 1,
                                            "node_config": {"InstanceType": "c5.xlarge"}}


def _node_config_typo(c: dict) -> None:
    nc = c["available_node_types"]["gpu_ondemand"]["node_config"]
    nc["InstanceMarketOption"] = nc.pop("BlockDeviceMappings")


def _unknown_instance_type(c: dict) -> None:
    c["available_node_types"]["gpu_spot"]["node_config"]["InstanceType"] = "g5.xlarg"


def _old_ray_image(c: dict) -> None:
    c["docker"]["image"] = "rayproject/ray:2.50.0-py311-cu128"


def _ray_ml_image(c: dict) -> None:
    c["docker"]["image"] = "rayproject/ray-ml:2.60.0-py311-gpu"


def _min_over_max(c: dict) -> None:
    c["available_node_types"]["gpu_spot"]["min_workers"] = 7


BROKEN = {
    "unknown key": (_unknown_keys, ["unknown key 'max_worker' at the top level; did you mean 'max_workers'?",
                                    "unknown key 'min_worker' in available_node_types.gpu_spot"]),
    "head type missing": (_head_missing, ["head_node_type is missing", "gpu_ondemand, gpu_spot, ray.head"]),
    "head type not a node type": (_head_not_a_type, ["head_node_type 'ray.hed' is not one of available_node_types",
                                                     "did you mean 'ray.head'?"]),
    "GPU type without GPUs": (_gpu_type_without_gpus, ["node type 'gpu_spot' is meant for GPUs (its name says GPU)",
                                                       "m5.xlarge has no GPU", "g5.xlarge"]),
    "GPU resources on a CPU instance": (_gpu_resources_on_cpu_instance,
                                        ["node type 'workers' is meant for GPUs (its resources say GPU: 1)",
                                         "c5.xlarge has no GPU"]),
    "node_config typo": (_node_config_typo, [
        "unknown key 'InstanceMarketOption' in available_node_types.gpu_ondemand.node_config", "RunInstances",
        "did you mean 'InstanceMarketOptions'?"]),
    "unknown instance type": (_unknown_instance_type, ["unknown EC2 instance type 'g5.xlarg'", "g5.xlarge"]),
    "old Ray image": (_old_ray_image, ["runs Ray 2.50.0 but this project pins Ray 2.60.0"]),
    "ray-ml image": (_ray_ml_image, ["ray-ml images are no longer published"]),
    "min over max workers": (_min_over_max, ["gpu_spot: min_workers 7 > max_workers 6"]),
}
CLI_CASES = ("unknown key", "head type missing", "GPU type without GPUs")


@pytest.mark.parametrize("case", CLI_CASES)
def test_broken_yaml_fails_with_a_clear_message(tmp_path, case):
    """Through the CLI: exit 2, one line on stderr that names the problem."""
    breaker, needles = BROKEN[case]
    c = _aws()
    breaker(c)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(c))
    r = check(str(path))
    assert r.returncode == 2, r.stdout
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"mtft-ray: error: {path}: "), err
    for n in needles:
        assert n in err, err
    assert "OK" not in r.stdout


@pytest.mark.parametrize("case", [c for c in BROKEN if c not in CLI_CASES])
def test_broken_yaml_problems_are_named(tmp_path, case):
    breaker, needles = BROKEN[case]
    c = _aws()
    breaker(c)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(c))
    with pytest.raises(MtftError) as e:
        check_cluster(path)
    for n in needles:
        assert n in str(e.value), str(e.value)


def test_schema_error_in_local_yaml_is_named(tmp_path):
    """An unquoted ': ' turns a start command into a mapping; Ray's schema names the path."""
    raw = yaml.safe_load((ROOT / "cluster" / "local.yaml").read_text())
    raw["head_start_ray_commands"][1] = {"ray start --resources='{\"TRAIN_DRIVER\"": "8}'"}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(MtftError, match=r"head_start_ray_commands\.1: .* is not of type 'string'"):
        check_cluster(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(MtftError, match="cluster config not found"):
        check_cluster(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(MtftError, match="a cluster config is a mapping"):
        check_cluster(tmp_path / "list.yaml")


# ------------------------------------------------------------------------------ sweeps on clusters


def test_sweep_that_fits_no_node_is_refused():
    with pytest.raises(MtftError, match=r"no node type holds \{'CPU': 4.0, 'GPU': 2.0\} on one node"):
        check_cluster(ROOT / "cluster" / "aws.yaml", GPU_SWEEP[0], ["resources={cpu: 4, gpu: 2}"])


def test_train_workers_need_train_driver(tmp_path):
    """Trials on Ray Train workers hold TRAIN_DRIVER: without it on the head the sweep cannot run."""
    c = _aws()
    c["available_node_types"]["ray.head"]["resources"] = {"CPU": 0}
    path = tmp_path / "aws.yaml"
    path.write_text(yaml.safe_dump(c))
    overrides = ["train.workers=2", "train.use_gpu=true"]
    report = check_cluster(ROOT / "cluster" / "aws.yaml", GPU_SWEEP[0], overrides)
    assert report.sweep["per_trial"] == {"TRAIN_DRIVER": 1.0, "CPU": 2.0, "GPU": 2.0}
    assert report.sweep["concurrency"] == 4  # 8 GPUs / 2 per trial
    with pytest.raises(MtftError, match=r"short of \['TRAIN_DRIVER'\]"):
        check_cluster(path, GPU_SWEEP[0], overrides)
    assert any("TRAIN_DRIVER" in n for n in check_cluster(path).notes)


def test_full_scale_respects_the_global_worker_cap():
    def t(name: str, n: int, head: bool = False) -> NodeType:
        return NodeType(name, head, None, {"CPU": 4.0, "GPU": 0.0 if head else 1.0}, None, None, None, 0, n, "-")

    report = ClusterReport("x", "aws", None, "c", 5, None, [t("h", 0, head=True), t("a", 4), t("b", 4)])
    assert report.full_scale() == {"CPU": 24.0, "GPU": 5.0}  # head + 4 a + 1 b


def test_autoscaling_capacity_reads_the_bootstrap_config(tmp_path):
    """What an autoscaling cluster grows to, from the config `ray up` leaves on the head."""
    from mtft_ray.cluster.aws import fill_resources
    from mtft_ray.cluster.check import _prepare
    from mtft_ray.ray_cluster import autoscaling_capacity

    bootstrap = fill_resources(_prepare(_aws(), Path("aws.yaml")))  # as Ray writes it: resources filled
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    capacity = autoscaling_capacity(path)
    assert {k: capacity[k] for k in ("CPU", "GPU", "TRAIN_DRIVER")} == {"CPU": 32.0, "GPU": 8.0, "TRAIN_DRIVER": 8.0}
    assert autoscaling_capacity(tmp_path / "absent.yaml") is None
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump({"provider": {"type": "local"}, "available_node_types": {}}))
    assert autoscaling_capacity(local) is None


def test_ray_start_resources_and_image_versions():
    assert ray_start_resources(["ray start --address=x --num-gpus=2 --num-cpus 16"]) == {"CPU": 16.0, "GPU": 2.0}
    assert ray_start_resources(["ray start --head"]) is None  # Ray detects them at start: unknown offline
    assert image_ray_version("rayproject/ray:2.60.0-py311-cu128") == "2.60.0"
    assert image_ray_version("123.dkr.ecr.us-east-1.amazonaws.com/mtft-ray:0.1.0-ray2.60.0-py311-cu128") == "2.60.0"
    assert image_ray_version("rayproject/ray:latest-gpu") is None


# ------------------------------------------------------------------------- files and their pins


def _pinned_ray() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'"ray\[[^\]]*\]==([\d.]+)"', text).group(1)


def test_dockerfile_pins_match_the_project():
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=([\d.]+)$", dockerfile, re.MULTILINE).group(1)
    assert ray_version == _pinned_ray() == ray.__version__
    py = re.search(r"^ARG PYTHON_TAG=(py3\d+)$", dockerfile, re.MULTILINE).group(1)
    cuda = re.search(r"^ARG CUDA_TAG=(cu12\d)$", dockerfile, re.MULTILINE).group(1)
    assert "FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}" in dockerfile
    for pkg in ("torch", "torchvision"):  # the optional CUDA-index install matches the pins
        pin = re.search(rf'"{pkg}==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
        assert f"{pkg}=={pin}" in dockerfile
    fonts = re.search(r'^FONTS="([^"]+)"', (ROOT / "install.sh").read_text(), re.MULTILINE).group(1).split()
    apt = re.search(r"apt-get install[^\n]*\n\s*([^\n]+)", dockerfile).group(1).split()
    assert apt[:len(fonts)] == fonts
    image = _aws()["docker"]["image"]
    assert image.endswith(f":0.1.0-ray{ray_version}-{py}-{cuda}") and f"ray{ray_version}-{py}-{cuda}" in dockerfile


def test_every_cluster_file_opens_with_launch_cost_and_teardown():
    for path in [*CLUSTER_YAMLS, ROOT / "cluster" / "Dockerfile"]:
        head = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            head.append(line)
        text = "\n".join(head).lower()
        assert head and "launches" in text and "cost" in text and "/h" in text, path
        assert "tear down" in text, path


def test_a_sweep_on_a_fresh_autoscaling_head_plans_for_the_grown_cluster(tmp_path, monkeypatch):
    """Right after `ray up` only the CPU-0 head is live: GPU trials must still be planned (8 at a time)."""
    import ray

    from mtft_ray.cluster.aws import fill_resources
    from mtft_ray.cluster.check import _prepare
    from mtft_ray.sweep.schema import SweepConfig
    from mtft_ray.config.schema import ExperimentConfig
    from mtft_ray.ray_cluster import cluster_capacity
    from mtft_ray.sweep.tuner import trial_plan

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0, "TRAIN_DRIVER": 8.0, "memory": 1e10})
    sweep = SweepConfig.model_validate({"search": {"space": {"seed": {"choice": [0]}}}, "resources": {"cpu": 4, "gpu": 1}})
    with pytest.raises(MtftError, match="short of"):
        trial_plan(sweep, ExperimentConfig(), cluster_capacity())  # no bootstrap config: live resources only
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(fill_resources(_prepare(_aws(), Path("aws.yaml")))))
    assert trial_plan(sweep, ExperimentConfig(), cluster_capacity()).concurrency == 8
