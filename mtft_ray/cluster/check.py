"""``mtft-ray cluster check``: a cluster-launcher YAML checked offline, before ``ray up`` spends money.

What it checks, in the order ``ray up`` would meet the problems:

1. structure: ``provider.type``; for cloud providers ``available_node_types`` with ``head_node_type``
   among them; for AWS each node type's ``node_config.InstanceType`` (a real EC2 type) and only
   keys that EC2's RunInstances takes;
2. Ray's own preparation (defaults merged, as ``ray up`` does) and, on AWS, Ray's own resource
   autofill with EC2 answered by moto (:mod:`mtft_ray.cluster.aws`);
3. Ray's JSON schema (``ray/autoscaler/ray-schema.json``: unknown keys are named with their path)
   and Ray's cross-field checks (``validate_config``);
4. this project's cross-field checks: ``min_workers <= max_workers``, worker types meant for GPUs
   (by name or ``resources``) really get GPUs, the docker image's Ray version is the installed one,
   a ``TRAIN_DRIVER`` resource for Tune-over-Train trial drivers.

The result lists each node type (instance, CPUs, GPUs, memory, workers, spot or on-demand) and,
given a sweep, the trials it would run at once on the cluster at full scale
(:func:`mtft_ray.sweep.tuner.trial_plan` on every node type at its ``max_workers``).

Example:
    >>> report = check_cluster("cluster/aws.yaml")                        # doctest: +SKIP
    >>> print(format_report(report))                                      # doctest: +SKIP
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mtft_ray.cluster.aws import (check_instance_type, describe_instance_types, fill_resources, gpu_instance_examples,
                                  gpu_model, gpus, node_config_problems, quiet_ray_autoscaler)
from mtft_ray.errors import MtftError
from mtft_ray.ray_cluster import DRIVER_RESOURCE, full_scale
from mtft_ray.sweep.load import load_sweep
from mtft_ray.sweep.tuner import trial_plan
from mtft_ray.train.plan import worker_resources

_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*>")


@dataclass(frozen=True)
class NodeType:
    """One node type as the autoscaler will see it.

    Attributes:
        resources: what Ray advertises per node (``CPU``, ``GPU``, custom); None where Ray detects
            them only when the node starts (a local-provider machine without ``--num-*`` flags).
        vcpus, memory_gib, gpu_model: the machine's own figures (AWS), for the table.
        market: ``spot``, ``on-demand`` or ``-`` (not a cloud instance).
    """

    name: str
    head: bool
    instance_type: str | None
    resources: dict[str, float] | None
    vcpus: int | None
    memory_gib: float | None
    gpu_model: str | None
    min_workers: int
    max_workers: int
    market: str
    price_per_hour: float | None = None  # the node type's label mtft-ray.io/price-per-hour (USD)


@dataclass
class ClusterReport:
    path: str
    provider: str
    region: str | None
    cluster_name: str
    max_workers: int
    idle_timeout_minutes: float | None
    node_types: list[NodeType]
    images: dict[str, str] = field(default_factory=dict)  # where -> image
    notes: list[str] = field(default_factory=list)  # worth knowing, not wrong
    sweep: dict | None = None  # {"path", "per_trial", "concurrency", "cluster"}

    def full_scale(self) -> dict[str, float] | None:
        """Summed resources of the head plus every worker type at its ``max_workers`` (capped by
        the cluster's ``max_workers``, taken in file order); None when some are only known at start."""
        return full_scale([(t.head, t.resources, t.max_workers) for t in self.node_types], self.max_workers)


def check_cluster(path: str | Path, sweep: str | Path | None = None,
                  sweep_overrides: list[str] | None = None) -> ClusterReport:
    """Validate a cluster YAML offline and describe its node types (and a sweep's concurrency on it).

    Raises:
        MtftError: every problem found, each naming its key path.
    """
    import ray

    path = Path(path)
    raw = _read(path)
    _fail(path, _structure_problems(raw))
    provider = raw["provider"]["type"]
    prepared = _prepare(raw, path)
    if provider == "aws":
        try:
            prepared = fill_resources(prepared)
        except MtftError as e:
            _fail(path, [str(e)])
    _fail(path, schema_problems(prepared))
    _fail(path, _ray_validate(prepared))
    types = _node_types(raw, prepared)
    problems = _worker_count_problems(prepared, types) + _gpu_problems(raw, types)
    images = _images(raw)
    problems += _image_problems(images, types, ray.__version__)
    _fail(path, problems)
    report = ClusterReport(str(path), provider, raw["provider"].get("region"), raw.get("cluster_name", "default"),
                           int(prepared.get("max_workers", 0)), prepared.get("idle_timeout_minutes"), types, images)
    report.notes += _notes(raw, report)
    if sweep is not None:
        report.sweep = _sweep_plan(report, sweep, sweep_overrides or [])
    return report


# ---------------------------------------------------------------------------------------- reading


def _read(path: Path) -> dict:
    if not path.is_file():
        raise MtftError(f"cluster config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MtftError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise MtftError(f"{path}: a cluster config is a mapping (cluster_name, provider, available_node_types, ...)")
    return raw


def _fail(path: Path, problems: list[str]) -> None:
    if problems:
        n = len(problems)
        raise MtftError(f"{path}: {n} problem{'s' if n > 1 else ''}: " + "; ".join(problems))


def _structure_problems(raw: dict) -> list[str]:
    """What must hold before Ray's own preparation can even run."""
    provider = raw.get("provider")
    if not isinstance(provider, dict) or not provider.get("type"):
        return ["provider.type is missing (aws, gcp, azure, local, ...)"]
    if provider["type"] == "local":
        return _local_structure_problems(raw, provider)
    types = raw.get("available_node_types")
    if not isinstance(types, dict) or not types:
        return ["available_node_types is missing: name a head node type and the worker node types"]
    problems = []
    head = raw.get("head_node_type")
    if head is None:
        problems.append(f"head_node_type is missing: name one of available_node_types ({', '.join(types)})")
    elif head not in types:
        close = difflib.get_close_matches(str(head), list(types), n=1)
        problems.append(f"head_node_type {head!r} is not one of available_node_types ({', '.join(types)})"
                        + (f"; did you mean {close[0]!r}?" if close else ""))
    for name, t in types.items():
        if not isinstance(t, dict) or not isinstance(t.get("node_config"), dict):
            problems.append(f"available_node_types.{name}.node_config is missing (the provider's settings "
                            f"for this node type)")
    if provider["type"] == "aws" and not problems:
        problems += _aws_node_problems(types, _region(raw))
    return problems


def _local_structure_problems(raw: dict, provider: dict) -> list[str]:
    problems = [f"{k} is not supported for the local provider (one implicit node type per machine)"
                for k in ("available_node_types", "head_node_type") if raw.get(k)]
    listed = "head_ip" in provider and "worker_ips" in provider
    if not listed and "coordinator_address" not in provider:
        problems.append("provider.head_ip and provider.worker_ips are required for the local provider")
    return problems


def _region(raw: dict) -> str:
    return raw["provider"].get("region") or "us-east-1"


def _aws_node_problems(types: dict, region: str) -> list[str]:
    """Each node type's InstanceType exists (moto's EC2 catalogue) and node_config keys are RunInstances'."""
    names = tuple(sorted({str(t["node_config"].get("InstanceType")) for t in types.values()}))
    known = describe_instance_types(region, names)
    problems = []
    for name, t in types.items():
        where = f"available_node_types.{name}.node_config"
        problem = check_instance_type(t["node_config"].get("InstanceType"), known, region, where)
        problems += ([problem] if problem else []) + node_config_problems(t["node_config"], where)
    return problems


def _prepare(raw: dict, path: Path) -> dict:
    """Ray's ``prepare_config``: defaults merged, legacy fields translated, per-type worker bounds."""
    import click
    from ray.autoscaler._private.util import prepare_config

    quiet_ray_autoscaler()
    try:
        return prepare_config(copy.deepcopy(raw))
    except (click.ClickException, AssertionError, KeyError, ValueError, TypeError) as e:
        raise MtftError(f"{path}: Ray cannot prepare this config: {getattr(e, 'message', None) or e!r}") from None


# ----------------------------------------------------------------------------- Ray's own validation


def schema_problems(config: dict) -> list[str]:
    """Ray's ``ray-schema.json`` errors, each with its key path; unknown keys named (with a guess)."""
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    problems = []
    errors = jsonschema.Draft7Validator(schema).iter_errors(config)
    for e in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        where = ".".join(str(p) for p in e.absolute_path)
        at = f"in {where}" if where else "at the top level"
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = list(e.schema.get("properties") or {})
            for key in sorted(set(e.instance) - set(known)):
                close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.7)
                problems.append(f"unknown key {key!r} {at}" + (f"; did you mean {close[0]!r}?" if close else ""))
        else:
            problems.append(f"{where or 'top level'}: {e.message[:200]}")
    return problems


def _ray_validate(config: dict) -> list[str]:
    """Ray's ``validate_config`` cross-field checks (run after the schema passed)."""
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(config)
    except (ValueError, RuntimeError) as e:
        return [f"Ray: {e}"]
    return []


# ------------------------------------------------------------------------------------- node types


def _node_types(raw: dict, prepared: dict) -> list[NodeType]:
    if raw["provider"]["type"] == "local":
        return _local_node_types(raw, prepared)
    nodes = prepared["available_node_types"]
    names = tuple(sorted({str(t.get("node_config", {}).get("InstanceType")) for t in nodes.values()}))
    catalog = describe_instance_types(_region(raw), names) if raw["provider"]["type"] == "aws" else {}
    out = []
    for name, t in nodes.items():
        node_config = t.get("node_config", {})
        record = catalog.get(node_config.get("InstanceType", ""), {})
        market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType")
        out.append(NodeType(
            name=name, head=name == prepared["head_node_type"], instance_type=node_config.get("InstanceType"),
            resources={k: float(v) for k, v in (t.get("resources") or {}).items()},
            vcpus=(record.get("VCpuInfo") or {}).get("DefaultVCpus"),
            memory_gib=(record.get("MemoryInfo") or {}).get("SizeInMiB", 0) / 1024 or None,
            gpu_model=gpu_model(record), min_workers=int(t.get("min_workers", 0)),
            max_workers=int(t.get("max_workers", 0)), market="spot" if market == "spot" else "on-demand",
            price_per_hour=node_price(name, t)))
    return out


PRICE_LABEL = "mtft-ray.io/price-per-hour"


def node_price(name: str, node_type: dict) -> float | None:
    """A node type's hourly price from its label :data:`PRICE_LABEL` (a Ray node label: a string).

    Raises:
        MtftError: the label is not a positive number.
    """
    text = (node_type.get("labels") or {}).get(PRICE_LABEL)
    if text is None:
        return None
    try:
        price = float(text)
    except ValueError:
        price = -1.0
    if not price > 0:
        raise MtftError(f"available_node_types.{name}.labels.{PRICE_LABEL}: {text!r} is not a positive price "
                        f"per hour (USD, e.g. \"1.01\")")
    return price


def _local_node_types(raw: dict, prepared: dict) -> list[NodeType]:
    """The local provider's machines: one head plus ``worker_ips``; resources from ``ray start`` flags."""
    (t,) = prepared["available_node_types"].values()
    head_res = ray_start_resources(raw.get("head_start_ray_commands") or [])
    worker_res = ray_start_resources(raw.get("worker_start_ray_commands") or [])
    common = {"instance_type": None, "vcpus": None, "memory_gib": None, "gpu_model": None, "market": "-"}
    return [NodeType(name="head", head=True, resources=head_res, min_workers=0, max_workers=0, **common),
            NodeType(name="worker", head=False, resources=worker_res, min_workers=int(t.get("min_workers", 0)),
                     max_workers=int(t.get("max_workers", 0)), **common)]


def ray_start_resources(commands: list[str]) -> dict[str, float] | None:
    """Resources stated by the ``ray start`` line of some start commands (``--num-cpus``,
    ``--num-gpus``, ``--resources``); None unless both CPUs and GPUs are stated.

    >>> ray_start_resources(["ray stop", "ray start --head --num-cpus=8 --num-gpus 0 --resources='{\\"X\\": 4}'"])
    {'CPU': 8.0, 'GPU': 0.0, 'X': 4.0}
    """
    for cmd in commands:
        for part in str(cmd).split(";"):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            if words[:2] != ["ray", "start"]:
                continue
            flags = _flags(words[2:])
            if "--num-cpus" not in flags or "--num-gpus" not in flags:
                return None
            res = {"CPU": float(flags["--num-cpus"]), "GPU": float(flags["--num-gpus"])}
            res.update({k: float(v) for k, v in json.loads(flags.get("--resources", "{}")).items()})
            return res
    return None


def _flags(words: list[str]) -> dict[str, str]:
    flags, i = {}, 0
    while i < len(words):
        w = words[i]
        if w.startswith("--") and "=" in w:
            k, v = w.split("=", 1)
            flags[k] = v
        elif w.startswith("--") and i + 1 < len(words) and not words[i + 1].startswith("--"):
            flags[w] = words[i + 1]
            i += 1
        i += 1
    return flags


# --------------------------------------------------------------------------- cross-field checks


def _worker_count_problems(prepared: dict, types: list[NodeType]) -> list[str]:
    problems = []
    cap = int(prepared.get("max_workers", 0))
    for t in types:
        if t.head:
            continue
        if t.min_workers > t.max_workers:
            problems.append(f"{t.name}: min_workers {t.min_workers} > max_workers {t.max_workers}")
        if t.max_workers > cap:
            problems.append(f"{t.name}: max_workers {t.max_workers} > the cluster's max_workers {cap}")
    return problems


def _meant_for_gpus(name: str, declared: dict) -> str | None:
    if float(declared.get("GPU", 0) or 0) > 0:
        return f"its resources say GPU: {declared['GPU']}"
    if "gpu" in name.lower():
        return "its name says GPU"
    return None


def _gpu_problems(raw: dict, types: list[NodeType]) -> list[str]:
    """Worker types meant for GPUs (by name or declared resources) must really get GPUs."""
    if raw["provider"]["type"] != "aws":
        return []
    region = _region(raw)
    catalog = describe_instance_types(region, tuple(sorted({str(t.instance_type) for t in types})))
    problems = []
    for t in types:
        declared = raw["available_node_types"][t.name].get("resources") or {}
        why = _meant_for_gpus(t.name, declared)
        physical = gpus(catalog.get(t.instance_type or "", {}))
        if why and physical == 0:
            problems.append(f"node type {t.name!r} is meant for GPUs ({why}) but {t.instance_type} has no GPU; "
                            f"use a GPU instance type such as {', '.join(gpu_instance_examples(region))}")
        elif why and not (t.resources or {}).get("GPU"):
            problems.append(f"node type {t.name!r} is meant for GPUs ({why}) but its resources give it GPU: 0")
    return problems


def _images(raw: dict) -> dict[str, str]:
    docker = raw.get("docker") or {}
    images = {f"docker.{k}": docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for name, t in (raw.get("available_node_types") or {}).items():
        image = ((t or {}).get("docker") or {}).get("worker_image")
        if image:
            images[f"available_node_types.{name}.docker.worker_image"] = image
    return images


def image_ray_version(image: str) -> str | None:
    """The Ray version an image's tag names: ``rayproject/ray:2.60.0-py311-cu128`` or a project
    tag carrying ``ray2.60.0`` (``.../mtft-ray:0.1.0-ray2.60.0-py311-cu128``); None if it names none.

    >>> image_ray_version("rayproject/ray:2.60.0-py311-cu128"), image_ray_version("x/mtft-ray:0.1.0-ray2.60.0-py311")
    ('2.60.0', '2.60.0')
    """
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    if repo.endswith(("rayproject/ray", "rayproject/ray-ml")):
        m = re.match(r"(\d+\.\d+\.\d+)", tag)
    else:
        m = re.search(r"ray-?(\d+\.\d+\.\d+)", tag)
    return m.group(1) if m else None


def _image_problems(images: dict[str, str], types: list[NodeType], ray_version: str) -> list[str]:
    problems = []
    has_gpu_workers = any(not t.head and (t.resources or {}).get("GPU") for t in types)
    for where, image in images.items():
        version = image_ray_version(image)
        if "rayproject/ray-ml" in image:
            problems.append(f"{where}: {image}: the ray-ml images are no longer published; use rayproject/ray:"
                            f"{ray_version}-py311-cu128 plus this project's layer (cluster/Dockerfile)")
        elif version is None:
            problems.append(f"{where}: the tag of {image} names no Ray version; pin one (rayproject/ray:"
                            f"{ray_version}-py311-cu128, or tag this project's image ...-ray{ray_version}-...)")
        elif version != ray_version:
            problems.append(f"{where}: {image} runs Ray {version} but this project pins Ray {ray_version}; "
                            f"a job client and its cluster must run the same Ray")
        if has_gpu_workers and where != "docker.head_image" and re.search(r"-cpu\b", image):
            problems.append(f"{where}: {image} is a CPU image but GPU worker types use it; use a -cu12x tag")
    return problems


def _notes(raw: dict, report: ClusterReport) -> list[str]:
    """Worth knowing before ``ray up``, but not wrong: placeholders, no TRAIN_DRIVER, stopped nodes."""
    notes = []
    for where, value in _strings(raw):
        for ph in sorted(set(_PLACEHOLDER.findall(value))):
            notes.append(f"replace {ph} in {where} before `ray up`")
    if not any((t.resources or {}).get(DRIVER_RESOURCE) for t in report.node_types):
        how = (f"--resources='{{\"{DRIVER_RESOURCE}\": 8}}' in head_start_ray_commands" if report.provider == "local"
               else f"resources: {{{DRIVER_RESOURCE}: 8}} on the head node type")
        notes.append(f"no {DRIVER_RESOURCE} resource: trials with Ray Train workers (train.workers > 0) cannot "
                     f"place their drivers; add {how}")
    if any(t.resources is None for t in report.node_types):
        notes.append("some machines state no --num-cpus/--num-gpus: Ray detects them at start, so concurrency "
                     "cannot be planned offline")
    if report.provider == "aws" and raw["provider"].get("cache_stopped_nodes", True):
        notes.append("provider.cache_stopped_nodes is true: idle nodes are stopped, not terminated, and their "
                     "disks keep costing; set it to false")
    return notes


def _strings(value: Any, where: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{where}[{i}]")]
    return [(where, value)] if isinstance(value, str) else []


# -------------------------------------------------------------------------------- sweep on cluster


def _sweep_plan(report: ClusterReport, sweep_path: str | Path, overrides: list[str]) -> dict:
    """Per-trial resources and the trials at once of a sweep on this cluster at full scale."""
    sweep, base = load_sweep(sweep_path, overrides)
    cluster = report.full_scale()
    if cluster is None:
        raise MtftError(f"{report.path}: CPUs/GPUs of some nodes are only detected when they start; state "
                        f"--num-cpus and --num-gpus in the ray start commands to plan {sweep_path} offline")
    try:
        plan = trial_plan(sweep, base, cluster)
    except MtftError as e:
        raise MtftError(f"sweep {sweep_path} cannot run on {report.path}: {e}") from None
    bundles = [plan.driver]
    if base.train.workers and "multitask" in base.methods:
        bundles.append(worker_resources(base.train))
    for bundle in bundles:  # each bundle is placed on one node: some node type must hold it
        if not any(_holds(t, bundle) for t in report.node_types if t.head or t.max_workers):
            raise MtftError(f"sweep {sweep_path} cannot run on {report.path}: no node type holds {bundle} "
                            f"on one node")
    return {"path": str(sweep_path), "name": sweep.name, "per_trial": plan.per_trial,
            "concurrency": plan.concurrency, "cluster": cluster}


def _holds(t: NodeType, bundle: dict[str, float]) -> bool:
    return t.resources is not None and all(t.resources.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


# ------------------------------------------------------------------------------------------ output


def _num(v: float | None) -> str:
    return "?" if v is None else f"{v:g}"


def format_report(report: ClusterReport) -> str:
    """The check's table: node types, their resources and bounds, then a sweep's concurrency."""
    where = f"{report.provider} {report.region}" if report.region else report.provider
    head = f"{report.path}: {where}, cluster {report.cluster_name!r}, up to {report.max_workers} workers"
    if report.idle_timeout_minutes is not None and report.provider != "local":
        head += f", idle nodes removed after {report.idle_timeout_minutes:g} min"
    lines = [head]
    for where, image in report.images.items():
        lines.append(f"image ({where}): {image} (Ray {image_ray_version(image)})")
    rows = [["node type", "instance", "CPUs", "GPUs", "memory", "workers", "market", "other resources"]]
    for t in report.node_types:
        res = t.resources or {}
        cpus = _num(res.get("CPU")) if t.resources is not None else "auto"
        if t.vcpus is not None and res.get("CPU") != t.vcpus:
            cpus += f" (of {t.vcpus} vCPU)"
        gpus = _num(res.get("GPU", 0.0)) if t.resources is not None else "auto"
        if t.gpu_model and res.get("GPU"):
            gpus += f" {t.gpu_model}"
        other = ", ".join(f"{k}: {_num(v)}" for k, v in res.items()
                          if k not in ("CPU", "GPU", "memory") and not k.startswith("accelerator_type:"))
        rows.append([t.name, t.instance_type or "-", cpus, gpus,
                     f"{t.memory_gib:g} GiB" if t.memory_gib else "-",
                     "head" if t.head else f"{t.min_workers}-{t.max_workers}", t.market, other or "-"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    full = report.full_scale()
    if full is not None:
        shown = [f"{k} {_num(v)}" for k, v in full.items() if not k.startswith(("memory", "accelerator_type"))]
        lines.append("at full scale: " + ", ".join(shown))
    if report.sweep:
        s = report.sweep
        per = ", ".join(f"{k} {_num(v)}" for k, v in s["per_trial"].items())
        lines.append(f"sweep {s['name']} ({s['path']}): each trial holds {per}; at most {s['concurrency']} "
                     f"trial{'s' if s['concurrency'] > 1 else ''} at a time on this cluster at full scale")
    lines += [f"note: {n}" for n in report.notes]
    lines.append("OK: valid for Ray's cluster launcher (checked offline)")
    return "\n".join(lines)
