"""EC2 facts the cluster launcher needs, answered offline: instance types from moto's mock EC2.

``ray up`` asks EC2's ``describe_instance_types`` for each node type's vCPUs, memory and GPUs;
moto ships the same catalogue (GpuInfo included: g5 A10G, g6 L4, g6e L40S, p4d A100, p5 H100), so
:func:`describe_instance_types` answers it with no credentials and no network, and
:func:`fill_resources` runs Ray's own resource autofill
(``AWSNodeProvider.fillout_available_node_types_resources``) on those answers.

Example:
    >>> t = describe_instance_types("us-east-1", ("g5.xlarge",))["g5.xlarge"]  # doctest: +SKIP
    >>> gpus(t), t["VCpuInfo"]["DefaultVCpus"]                              # doctest: +SKIP
    (1, 4)
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
from typing import Any

from mtft_ray.errors import MtftError

# node_config keys Ray consumes itself before calling RunInstances
_RAY_NODE_CONFIG_KEYS = {"SubnetIds"}


@functools.lru_cache(maxsize=16)
def describe_instance_types(region: str, names: tuple[str, ...]) -> dict[str, dict]:
    """The ``describe_instance_types`` records of ``names`` that exist, by name (moto, offline)."""
    import boto3
    from botocore.exceptions import ClientError
    from moto import mock_aws

    found = {}
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=region)
        for name in names:
            try:
                records = ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]
            except ClientError:  # InvalidInstanceType
                continue
            found.update({t["InstanceType"]: t for t in records})
    return found


@functools.lru_cache(maxsize=4)
def instance_type_names(region: str) -> list[str]:
    """Every EC2 instance type moto knows (for suggestions; a few seconds, so only on a typo)."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        ec2 = boto3.client("ec2", region_name=region)
        page = ec2.describe_instance_types()
        names = [t["InstanceType"] for t in page["InstanceTypes"]]
        while "NextToken" in page:
            page = ec2.describe_instance_types(NextToken=page["NextToken"])
            names += [t["InstanceType"] for t in page["InstanceTypes"]]
    return names


def gpus(record: dict) -> int:
    """GPUs of one ``describe_instance_types`` record (0 without GpuInfo)."""
    return sum(int(g.get("Count", 0)) for g in (record.get("GpuInfo") or {}).get("Gpus", []))


def gpu_model(record: dict) -> str | None:
    names = [g.get("Name") for g in (record.get("GpuInfo") or {}).get("Gpus", []) if g.get("Name")]
    return "/".join(names) or None


def gpu_instance_examples(region: str, n: int = 4) -> list[str]:
    preferred = ("g5.xlarge", "g6.xlarge", "g6e.xlarge", "g5.12xlarge", "p4d.24xlarge", "p5.48xlarge")
    known = describe_instance_types(region, preferred)
    return [t for t in preferred if t in known and gpus(known[t])][:n]


def check_instance_type(name: Any, known: dict[str, dict], region: str, where: str) -> str | None:
    """A problem message when ``name`` is no EC2 instance type (``known`` are the ones that
    exist), with close matches; else None."""
    if not isinstance(name, str) or not name:
        return f"{where}.InstanceType is missing (an EC2 instance type such as m5.2xlarge or g5.xlarge)"
    if name in known:
        return None
    close = difflib.get_close_matches(name, instance_type_names(region), n=3, cutoff=0.7)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{where}.InstanceType: unknown EC2 instance type {name!r}{hint}"


def node_config_problems(node_config: dict, where: str) -> list[str]:
    """Keys of a node_config that RunInstances does not take (checked against botocore's model)."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("ec2")
    shape = model.operation_model("RunInstances").input_shape
    return _shape_problems(node_config, shape, where, top=True)


def _shape_problems(value: Any, shape, where: str, top: bool = False) -> list[str]:
    if shape.type_name == "structure" and isinstance(value, dict):
        problems = []
        for key, sub in value.items():
            if key in shape.members:
                problems += _shape_problems(sub, shape.members[key], f"{where}.{key}")
            elif not (top and key in _RAY_NODE_CONFIG_KEYS):
                close = difflib.get_close_matches(key, list(shape.members), n=1, cutoff=0.7)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"unknown key {key!r} in {where} (not an EC2 RunInstances parameter){hint}")
        return problems
    if shape.type_name == "list" and isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _shape_problems(item, shape.member, f"{where}[{i}]")]
    return []


def quiet_ray_autoscaler() -> None:
    """Keep the autoscaler's progress lines (\"Creating AWS resource ...\") off our output."""
    from ray.autoscaler._private.cli_logger import cli_logger

    cli_logger.configure(verbosity=0)
    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)


def fill_resources(config: dict) -> dict:
    """Ray's own autofill of each node type's ``resources`` (CPU, memory, GPU, accelerator type),
    with EC2 answered by moto: what ``ray up`` would advertise, computed offline.

    Ray lists every instance type of the region (``list_ec2_instances``); here that list is the
    moto records of the config's own instance types, which is all Ray reads from it.

    Raises:
        MtftError: Ray refused an instance type.
    """
    from unittest import mock

    from ray.autoscaler._private.aws import node_provider

    config = copy.deepcopy(config)
    region = config["provider"].get("region") or "us-east-1"
    names = tuple(sorted({t.get("node_config", {}).get("InstanceType", "")
                          for t in config["available_node_types"].values()}))
    records = list(describe_instance_types(region, names).values())
    quiet_ray_autoscaler()
    try:
        with mock.patch.object(node_provider, "list_ec2_instances", lambda *a, **k: copy.deepcopy(records)):
            return node_provider.AWSNodeProvider.fillout_available_node_types_resources(config)
    except ValueError as e:
        raise MtftError(str(e)) from None
