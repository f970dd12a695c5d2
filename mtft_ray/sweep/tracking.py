"""Experiment tracking of a sweep: MLflow, W&B and TensorBoard through Ray Tune's own logger callbacks.

Every trial becomes one run of each tracker, holding its sampled params (a subset as ``a+b``
plus one include flag per item, ``tasks.domains[lao]``), its per-epoch metrics (``epoch``,
``val_acc``, ``train_loss``, ...), its final metrics with their CIs (``acc_1shot``,
``ci95_1shot``, ...) and, as files, the small outputs of its experiment (``run/result.json``,
``run/manifest.json``, ``run/config.yaml``, ...; never the checkpoints)::

    tracking:
      mlflow: {tracking_uri: http://127.0.0.1:5000, experiment: NAME}   # defaults: env, the sweep name
      wandb: {project: P, mode: offline, group: G}    # offline run files in <sweep>/wandb
      tensorboard: true                               # event files in each trial's folder
      best_effort: false                              # true: an unreachable tracker is dropped, with a warning

Credentials come only from each tool's own environment (``MLFLOW_TRACKING_TOKEN``,
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``; ``WANDB_API_KEY`` or ``wandb login``),
never from the sweep file; nothing here prints them.

Example:
    >>> sweep = SweepConfig.model_validate({"search": {"space": {"tasks.M": {"choice": [2, 4]}}},
    ...                                     "tracking": {"tensorboard": True}})
    >>> check_tracking(sweep, "sweep.yaml")                 # MLflow up? W&B logged in? else MtftError
    TrackingConfig(mlflow=None, wandb=None, tensorboard=True, best_effort=False)
    >>> callbacks = tracking_callbacks(sweep, storage)     # doctest: +SKIP
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import netrc
import os
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from mtft_ray.errors import MtftError
from mtft_ray.storage import Storage
from mtft_ray.sweep.schema import SweepConfig, TrackingConfig, has_credentials

log = logging.getLogger("mtft_ray")

PROBE_TIMEOUT_S = 5.0


def need(package: str, tracker: str) -> None:
    """Raise the install hint when ``package`` (mlflow, wandb, tensorboardX) is not installed.

    >>> need("json", "tracking.mlflow")
    """
    if importlib.util.find_spec(package) is None:
        extra = "mtft-ray[tracking]" if package in ("mlflow", "wandb") else "ray[tune]"
        raise MtftError(f"{tracker} needs {package}: pip install '{extra}'")


def mlflow_uri(sweep: SweepConfig, where: str) -> str:
    """The MLflow tracking URI: ``tracking.mlflow.tracking_uri``, else env ``MLFLOW_TRACKING_URI``.

    Raises:
        MtftError: neither is set, or the URI carries credentials (they belong in MLflow's env vars).
    """
    given = sweep.tracking.mlflow.tracking_uri if sweep.tracking and sweep.tracking.mlflow else None
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise MtftError(f"{where}: tracking.mlflow needs a tracking_uri (or env MLFLOW_TRACKING_URI), "
                        f"e.g. http://127.0.0.1:5000")
    if has_credentials(uri):  # only the env var can get here: the config refuses them
        raise MtftError(f"{where}: env MLFLOW_TRACKING_URI holds credentials (user:password@): set "
                        f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN instead")
    return uri


def _mlflow_headers() -> dict[str, str]:
    """MLflow's own auth environment as HTTP headers (as its REST client sends them)."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _ssl_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        return ssl._create_unverified_context()
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def _reason(e: BaseException) -> str:
    inner = getattr(e, "reason", None)
    text = str(inner if inner is not None else e) or type(e).__name__
    return " ".join(text.split())


def probe_mlflow(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the MLflow tracking server at ``uri`` cannot take runs, or None when it answers.

    An HTTP(S) server is asked one REST call (search one experiment) with MLflow's credentials
    from the environment, so both reachability and the credentials are checked; a local store
    (``file:``, ``sqlite:``, a path) is opened with MLflow's client; other schemes are not probed.

    >>> probe_mlflow("http://127.0.0.1:9", timeout=1)[:11]
    'unreachable'
    """
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
        request = urllib.request.Request(url, headers=_mlflow_headers())
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=_ssl_context()) as r:
                r.read()
            return None
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                return (f"refused the credentials (HTTP {e.code}): set MLFLOW_TRACKING_TOKEN or "
                        f"MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
            return f"answered HTTP {e.code} to MLflow's REST API (is it an MLflow tracking server?)"
        except (OSError, ValueError) as e:  # URLError, timeouts, refused connections, bad hosts
            return f"unreachable ({_reason(e)})"
    if scheme in ("", "file", "sqlite") or len(scheme) == 1:  # a path (C:\ on Windows), a local store
        try:
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
        except Exception as e:  # noqa: BLE001 - MLflow raises many kinds; the reason is what matters
            return f"cannot be opened ({_reason(e)})"
        return None
    log.info("MLflow tracking URI %s (scheme %s) is not probed before the sweep", uri, scheme)
    return None


def _wandb_host() -> tuple[str, str, int]:
    """W&B's base URL (env ``WANDB_BASE_URL``, default api.wandb.ai), its host and port."""
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    parts = urlsplit(base)
    return base, parts.hostname or base, parts.port or (80 if parts.scheme == "http" else 443)


def _wandb_logged_in(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def probe_wandb(mode: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why W&B cannot take runs in ``mode``, or None: offline needs nothing; online needs a login
    (``WANDB_API_KEY`` or ``wandb login``'s netrc entry) and a reachable server.

    >>> probe_wandb("offline") is None
    True
    """
    if mode == "offline":
        return None
    base, host, port = _wandb_host()
    if not _wandb_logged_in(host):
        return (f"has no login for {base}: set WANDB_API_KEY or run `wandb login` "
                f"(or use tracking.wandb.mode: offline)")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"cannot reach {base} ({_reason(e)})"
    return None


def check_tracking(sweep: SweepConfig, where: str) -> TrackingConfig | None:
    """Preflight of the sweep's trackers, before Ray starts: what to track.

    A tracker that cannot take runs (MLflow server down or refusing the credentials, W&B online
    without a login) is an error, or under ``tracking.best_effort`` a warning, and it is dropped.
    A missing package, a missing MLflow URI or credentials in it are always errors.

    Args:
        sweep: the validated sweep.
        where: what to name in messages (the sweep file, ``sweep NAME``).

    Returns:
        The trackers to use: ``sweep.tracking`` less those dropped (None when the sweep has no
        ``tracking``); what :func:`tracking_callbacks` takes.

    Raises:
        MtftError: one line naming the tracker, its address and the reason.
    """
    t = sweep.tracking
    if t is None:
        return None
    drop: dict[str, Any] = {}
    if t.mlflow is not None:
        need("mlflow", "tracking.mlflow")
        uri = mlflow_uri(sweep, where)
        reason = probe_mlflow(uri)
        if reason:
            _unusable(t, where, f"tracking.mlflow: MLflow at {uri} {reason}", "mlflow", drop)
    if t.wandb is not None:
        need("wandb", "tracking.wandb")
        reason = probe_wandb(t.wandb.mode)
        if reason:
            _unusable(t, where, f"tracking.wandb: W&B {reason}", "wandb", drop)
    if t.tensorboard:
        need("tensorboardX", "tracking.tensorboard")
    return t.model_copy(update=drop)


def _unusable(t: TrackingConfig, where: str, what: str, key: str, drop: dict[str, Any]) -> None:
    if not t.best_effort:
        raise MtftError(f"{where}: {what}; fix it, drop it from the sweep file, or set tracking.best_effort: true")
    log.warning("%s: %s; tracking.best_effort is set: the sweep runs without it", where, what)
    drop[key] = None


def tracking_callbacks(sweep: SweepConfig, storage: Storage, tracking: TrackingConfig | None = None) -> list:
    """Ray Tune callbacks for the sweep's trackers: MLflow, W&B, TensorBoard (in that order).

    Args:
        sweep: the validated sweep (names the MLflow experiment and the W&B group by default).
        storage: the sweep folder; a local one holds the W&B run files (``<sweep>/wandb``).
        tracking: what :func:`check_tracking` kept (default ``sweep.tracking``, unchecked).
    """
    t = tracking if tracking is not None else sweep.tracking
    if t is None or not (t.mlflow or t.wandb or t.tensorboard):
        return []
    for package, tracker, used in (("mlflow", "tracking.mlflow", t.mlflow), ("wandb", "tracking.wandb", t.wandb),
                                   ("tensorboardX", "tracking.tensorboard", t.tensorboard)):
        if used:
            need(package, tracker)
    from mtft_ray.sweep import trackers  # it imports Ray Tune and the trackers' integrations

    subsets = {k: list(d.subset) for k, d in sweep.search.space.items() if d.subset}
    callbacks: list = []
    if t.mlflow is not None:
        tags = {"sweep": sweep.name, "sweep_folder": storage.uri()}
        callbacks.append(trackers.MlflowTrials(mlflow_uri(sweep, f"sweep {sweep.name}"),
                                               t.mlflow.experiment or sweep.name, tags=tags, subsets=subsets,
                                               best_effort=t.best_effort))
    if t.wandb is not None:
        local = {"dir": storage.root} if storage.scheme == "local" else {}  # S3: the trial's folder, synced
        callbacks.append(trackers.WandbTrials(project=t.wandb.project, group=t.wandb.group or sweep.name,
                                              mode=t.wandb.mode, subsets=subsets, best_effort=t.best_effort, **local))
    if t.tensorboard:
        callbacks.append(trackers.TBXLoggerCallback())  # Ray's own: event files in each trial's folder
    return callbacks
