"""What the trainer, the sweep and the cluster tools all need of a Ray cluster: start-up and capacity.

A leaf module (it imports nothing of mtft_ray but the errors): the trainer checks that its
workers fit, the tuner sizes trial concurrency, and ``cluster check`` plans a sweep on a launch
config, all from these few functions.

Example:
    >>> full_scale([(True, {"CPU": 8.0}, 0), (False, {"CPU": 4.0, "GPU": 1.0}, 3)], max_workers=2)
    {'CPU': 16.0, 'GPU': 2.0}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import yaml

DRIVER_RESOURCE = "TRAIN_DRIVER"  # held by a trial driver whose trainer uses Ray Train workers
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # the autoscaler's config, where `ray up` puts it on the head

_DASHBOARD_URL: str | None = None


def ensure_ray(resources: dict[str, float] | None = None) -> str | None:
    """Connect to the Ray cluster (``$RAY_ADDRESS``) or start a local one, once per process.

    ``resources`` are the custom resources a local cluster declares (ignored when connecting to
    an existing cluster). The CLI makes a local cluster loopback-only and dashboard-free (see
    ``cli.main.local_ray_env``). Returns the cluster's dashboard URL, when it has one.
    """
    global _DASHBOARD_URL
    import ray  # heavy: only commands that use Ray pay for it

    if ray.is_initialized():
        return _DASHBOARD_URL
    kwargs: dict = {"logging_level": logging.WARNING}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs.update(resources=resources or {}, include_dashboard=False)
    ctx = ray.init(**kwargs)
    url = getattr(ctx, "dashboard_url", None)
    _DASHBOARD_URL = (url if "://" in url else f"http://{url}") if url else None
    return _DASHBOARD_URL


def full_scale(node_types: Iterable[tuple[bool, dict[str, float] | None, int]], max_workers: int
               ) -> dict[str, float] | None:
    """Summed resources of the head plus every worker type at its ``max_workers``, capped by the
    cluster's ``max_workers`` (taken in the given order); None when some are only known at start.

    Args:
        node_types: ``(is_head, resources per node, max_workers)`` of each node type.
    """
    total: dict[str, float] = {}
    budget = max_workers
    for head, resources, type_max in sorted(node_types, key=lambda t: not t[0]):
        count = 1 if head else min(type_max, budget)
        budget -= 0 if head else count
        if count == 0:
            continue
        if resources is None:
            return None
        for k, v in resources.items():
            total[k] = total.get(k, 0.0) + float(v) * count
    return total


def autoscaling_capacity(path: str | Path = BOOTSTRAP_CONFIG) -> dict[str, float] | None:
    """The cluster's resources at full scale by its autoscaler's config, on a head that ``ray up``
    launched (Ray has filled every node type's ``resources`` there); None elsewhere, and for the
    local provider, whose machines all join at start.

    An autoscaling cluster starts with few workers, so ``ray.cluster_resources()`` at a sweep's
    start understates what it can run; this is what it grows to.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    raw = yaml.safe_load(p.read_text()) or {}
    if (raw.get("provider") or {}).get("type") in (None, "local"):
        return None
    head, cap = raw.get("head_node_type"), int(raw.get("max_workers", 0))
    types = [(name == head, {k: float(v) for k, v in (t.get("resources") or {}).items()},
              int(t.get("max_workers", 0 if name == head else cap)))
             for name, t in (raw.get("available_node_types") or {}).items()]
    return full_scale(types, cap)


def cluster_capacity() -> dict[str, float]:
    """What the connected cluster can run: its live resources, or on a head that ``ray up``
    launched, what its autoscaler can grow it to (right after launch only the head is up)."""
    import ray  # heavy, and only meaningful once connected

    live, grown = ray.cluster_resources(), autoscaling_capacity() or {}
    return {k: max(live.get(k, 0.0), grown.get(k, 0.0)) for k in {*live, *grown}}
