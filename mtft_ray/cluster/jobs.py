"""Ray jobs for mtft-ray commands: submit with a runtime environment, follow, list, logs, stop.

A job runs ``python -m mtft_ray.cli.main <command ...>`` on the cluster's head. Its runtime
environment carries:

* ``working_dir``: this directory (default ``.``), uploaded by Ray without ``.git``, caches, run
  outputs, top-level ``data/``, checkpoints, and whatever ``.gitignore`` lists. The job starts in
  its copy, and Ray puts that copy first on ``PYTHONPATH`` for the job and every task and actor it
  starts: run from a checkout, the uploaded ``mtft_ray/`` is the code that runs (ahead of the
  image's installed copy, so no ``py_modules`` are needed); run from elsewhere, the cluster's
  installed mtft-ray runs and the directory only brings configs.
* ``env_vars``: ``--env KEY=VAL`` plus the storage settings of this shell (``AWS_ENDPOINT_URL``,
  ``AWS_REGION``, ``MTFT_RAY_*`` but not the local path ``MTFT_RAY_CACHE``); never credentials:
  nodes get theirs from their instance profile.
* ``pip``: ``--pip PKG`` packages installed for this job only.

Example:
    >>> client = connect("http://127.0.0.1:8265")                                    # doctest: +SKIP
    >>> job = client.submit_job(entrypoint=entrypoint(["sweep", "sweeps/quickstart.yaml"]),
    ...                         runtime_env=runtime_env("."))                          # doctest: +SKIP
    >>> follow(client, job)                                                            # doctest: +SKIP
    'SUCCEEDED'
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import TextIO

from mtft_ray.errors import MtftError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Patterns (gitignore syntax) Ray leaves out of the uploaded working dir; anchored ones only at its top.
EXCLUDES = [".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".benchmarks", "*.egg-info",
            ".venv", "/runs/", "/data/", "/cache/", "*.pt", "*.pth", "*.ckpt"]
PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
LOCAL_ONLY = ("MTFT_RAY_CACHE",)  # paths on this machine: set them with --env for the cluster


def dashboard_address(address: str | None = None) -> str:
    """The job server's URL: ``address``, else ``$RAY_API_SERVER_ADDRESS`` / ``$RAY_ADDRESS``, else
    the local default; ``http://`` is added to a bare ``host:port``.

    >>> dashboard_address("10.0.0.5:8265")
    'http://10.0.0.5:8265'
    """
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    if address.startswith("ray://") or address == "auto":
        raise MtftError(f"{address!r} is not a job server address: give the dashboard's http://HOST:8265 "
                        f"(--address or $RAY_ADDRESS)")
    return address.rstrip("/") if "://" in address else f"http://{address.rstrip('/')}"


def connect(address: str | None = None, timeout: float = 5.0):
    """A ``JobSubmissionClient`` for the cluster at ``address``, checked within ``timeout`` seconds.

    Raises:
        MtftError: nothing answers there, or it is not a Ray job server.
    """
    import requests

    url = dashboard_address(address)
    hint = ("start one (`ray up cluster/aws.yaml`, then `ray dashboard cluster/aws.yaml` forwards it to "
            f"{DEFAULT_ADDRESS}) or pass --address / set RAY_ADDRESS")
    try:
        r = requests.get(f"{url}/api/version", timeout=timeout)
    except requests.exceptions.Timeout:
        raise MtftError(f"no Ray cluster answered at {url} within {timeout:g}s: {hint}") from None
    except requests.exceptions.RequestException as e:
        raise MtftError(f"no Ray cluster at {url} ({_reason(e)}): {hint}") from None
    if r.status_code != 200 or "ray_version" not in r.text:
        raise MtftError(f"{url} answers but is not a Ray job server (GET /api/version: HTTP {r.status_code})")
    from ray.job_submission import JobSubmissionClient

    _quiet_ray_logs()

    try:
        return JobSubmissionClient(url)
    except (ConnectionError, RuntimeError) as e:
        raise MtftError(f"cannot use the Ray job server at {url}: {e}") from None


def _quiet_ray_logs() -> None:
    """Keep Ray's upload chatter (INFO lines, its notice that .git is skipped) off our output,
    unless ``$MTFT_RAY_LOG`` asks for INFO or DEBUG."""
    if os.environ.get("MTFT_RAY_LOG", "").upper() in ("INFO", "DEBUG"):
        return
    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)


def _reason(e: Exception) -> str:
    text = str(e).lower()
    for needle, reason in (("refused", "connection refused"), ("name or service", "unknown host"),
                           ("nodename nor servname", "unknown host"), ("unreachable", "network unreachable")):
        if needle in text:
            return reason
    return type(e).__name__


def job_url(address: str, job_id: str) -> str:
    """The job's page on the Ray dashboard."""
    return f"{dashboard_address(address)}/#/jobs/{job_id}"


def entrypoint(args: list[str]) -> str:
    """The shell command a job runs: this CLI with ``args`` (``["sweep", "sweeps/x.yaml", ...]``)."""
    if not args:
        raise MtftError("give the mtft-ray command to run after '--', e.g. -- sweep sweeps/quickstart.yaml")
    if args[0] in ("submit", "jobs", "logs", "stop", "cluster"):
        raise MtftError(f"'{args[0]}' runs here, not as a job: give a command such as sweep or run after '--'")
    return shlex.join(["python", "-m", "mtft_ray.cli.main", *args])


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["KEY=VAL", ...]`` → a dict; refuses entries without ``=``."""
    env = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise MtftError(f"--env {p!r}: give KEY=VALUE")
        env[key] = value
    return env


def runtime_env(working_dir: str | Path = ".", env: dict[str, str] | None = None,
                pip: list[str] | None = None) -> dict:
    """The job's runtime environment: working dir and excludes, env vars, optional pip packages."""
    wd = Path(working_dir).expanduser().resolve()
    if not wd.is_dir():
        raise MtftError(f"working dir not found: {wd}")
    env_vars = {k: v for k, v in os.environ.items()
                if (k in PASS_THROUGH or k.startswith("MTFT_RAY_")) and k not in LOCAL_ONLY}
    env_vars.update(env or {})
    out: dict = {"working_dir": str(wd), "excludes": list(EXCLUDES), "env_vars": env_vars}
    if pip:
        out["pip"] = list(pip)
    return out


def code_source(working_dir: str | Path) -> str:
    """Which mtft_ray a job runs: the uploaded one, or the cluster's installed one."""
    if (Path(working_dir) / "mtft_ray" / "__init__.py").is_file():
        return "mtft_ray/ from the uploaded working dir (first on the job's PYTHONPATH)"
    return "the cluster's installed mtft-ray (the working dir holds no mtft_ray/)"


def submit(client, args: list[str], env: dict, submission_id: str | None = None) -> str:
    """Submit ``mtft-ray <args>`` as a job; its submission id."""
    try:
        return client.submit_job(entrypoint=entrypoint(args), runtime_env=env, submission_id=submission_id,
                                 metadata={"mtft_ray": " ".join(args)[:500]})
    except (RuntimeError, ValueError, OSError) as e:
        raise MtftError(f"cannot submit the job: {str(e).strip()[:500]}") from None


def status(client, job_id: str) -> str:
    try:
        return str(client.get_job_status(job_id))
    except RuntimeError as e:
        raise MtftError(f"no job {job_id!r} on this cluster ({str(e).strip()[:200]})") from None


def wait_terminal(client, job_id: str, timeout: float = 60.0, poll: float = 0.5) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or ``timeout``); its status."""
    deadline = time.monotonic() + timeout
    state = status(client, job_id)
    while state not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(poll)
        state = status(client, job_id)
    return state


def follow(client, job_id: str, out: TextIO = sys.stdout) -> str:
    """Stream the job's logs until it ends (``tail_job_logs``); its final status."""

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(_tail())
    except Exception as e:  # noqa: BLE001 - the log stream broke off (any reason): poll the status instead
        print(f"mtft-ray: log stream of {job_id} ended early ({str(e)[:200]}); waiting for its status",
              file=sys.stderr)
        return wait_terminal(client, job_id, timeout=float("inf"), poll=5.0)
    return wait_terminal(client, job_id)


def last_lines(client, job_id: str, n: int = 20) -> list[str]:
    """The last ``n`` lines of the job's logs."""
    try:
        return client.get_job_logs(job_id).rstrip("\n").splitlines()[-n:]
    except RuntimeError:
        return []


def failure_report(client, job_id: str, state: str, n: int = 20) -> str:
    """What went wrong: status, Ray's message, the job's last log lines."""
    info = client.get_job_info(job_id)
    message = (info.message or "").strip().splitlines()[0] if info.message else ""
    message = re.sub(r",? last available logs.*$", "", message)[:300]  # the logs follow below
    lines = [f"mtft-ray: job {job_id} {state}" + (f": {message}" if message else "")]
    tail = last_lines(client, job_id, n)
    if tail:
        lines.append(f"last {len(tail)} log lines of {job_id}:")
        lines += [f"  {line}" for line in tail]
    return "\n".join(lines)


def format_jobs(jobs: list) -> str:
    """One line per job: id, status, start, duration, entrypoint; newest last."""
    rows = [["job", "status", "started", "duration", "entrypoint"]]
    for j in sorted(jobs, key=lambda j: j.start_time or 0):
        start = time.strftime("%Y-%m-%d %H:%M", time.localtime(j.start_time / 1000)) if j.start_time else "-"
        end = j.end_time or (time.time() * 1000 if j.start_time else None)
        duration = f"{(end - j.start_time) / 1000:.0f}s" if j.start_time and end else "-"
        command = j.entrypoint.replace("python -m mtft_ray.cli.main", "mtft-ray")
        rows.append([j.submission_id or j.job_id or "-", str(j.status), start, duration, command[:80]])
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows)
