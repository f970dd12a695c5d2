"""Ray jobs for mtft-ray commands: submit with a runtime environment, follow, list, logs, stop.

A job runs ``python -m mtft_ray.cli.main <command ...>`` on the cluster's head. Its runtime
environment carries:

* ``working_dir``: this directory (default ``.``), uploaded by Ray without ``.git``, caches, run
  outputs, top-level ``data/``, checkpoints, well-known secret files (:data:`SECRET_PATTERNS`:
  ``.env*``, ``.aws/``, ``.ssh/``, ssh keys, ``*.pem``, ``*.key``, ``.netrc``, ``credentials*``, ...),
  whatever ``.gitignore`` / ``.rayignore`` list, and the patterns of ``.mtftignore`` (gitignore
  syntax; its ``!`` lines may re-include a secret file, which :func:`secret_refusal` refuses unless
  ``--allow-secret`` names it). :func:`package` lists what goes, by Ray's own rules and matcher.
  The job starts in its copy, and Ray puts that copy first on ``PYTHONPATH`` for the job and every
  task and actor it starts: run from a checkout, the uploaded ``mtft_ray/`` is the code that runs
  (ahead of the image's installed copy, so no ``py_modules`` are needed); run from elsewhere, the
  cluster's installed mtft-ray runs and the directory only brings configs.
* ``env_vars``: ``--env KEY=VAL`` plus the storage settings of this shell (``AWS_ENDPOINT_URL``,
  ``AWS_REGION``, ``MTFT_RAY_*`` but not the local path ``MTFT_RAY_CACHE``); never a secret (Ray
  writes runtime envs to its logs in plain text): credentials (``AWS_SECRET_ACCESS_KEY``, any
  ``*_TOKEN``, ``*_KEY``, ...) stay in this shell and ``--env`` refuses them. Nodes find their own
  through the AWS chain (instance profile; on a local head, the environment it was started with).
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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mtft_ray.errors import MtftError

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# Patterns (gitignore syntax) Ray leaves out of the uploaded working dir; anchored ones only at its top.
EXCLUDES = [".git", "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".benchmarks", "*.egg-info",
            ".venv", "/runs/", "/data/", "/cache/", "*.pt", "*.pth", "*.ckpt"]
PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")
LOCAL_ONLY = ("MTFT_RAY_CACHE",)  # paths on this machine: set them with --env for the cluster
# Well-known secret files (gitignore syntax), excluded on top of EXCLUDES. Only ssh-keygen's key
# names, not every id_*: id_to_class.json is data.
SECRET_PATTERNS = [".env*", ".aws/", ".ssh/", "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "id_xmss*",
                   "*.pem", "*.key", "*.p12", "*.pfx", ".netrc", "credentials*", ".git-credentials", ".pypirc"]
IGNORE_FILE = ".mtftignore"  # the project's own patterns, after SECRET_PATTERNS: its '!' lines re-include
# Environment variable names that hold secrets: never forwarded, refused in --env.
_SECRET_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|APIKEY|(^|_)(TOKEN|KEY)(_|$)", re.IGNORECASE)



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


def is_secret_env(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ACCESS_KEY_ID``, ``AWS_SESSION_TOKEN``, ``HF_TOKEN``, ``WANDB_API_KEY``, ...).

    >>> [is_secret_env(n) for n in ("AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_REGION", "MTFT_RAY_LOG")]
    [True, True, False, False]
    """
    return bool(_SECRET_ENV.search(name))


def secrets_kept_home() -> list[str]:
    """Names of this shell's secret variables that a job does not get (AWS ones, ``MTFT_RAY_*`` ones)."""
    return sorted(k for k in os.environ if is_secret_env(k) and k.startswith(("AWS_", "MTFT_RAY_")))


def excludes(working_dir: str | Path) -> list[str]:
    """The job's ``excludes``: :data:`EXCLUDES`, :data:`SECRET_PATTERNS`, then ``.mtftignore``'s lines."""
    ignore = Path(working_dir) / IGNORE_FILE
    own = ignore.read_text().splitlines() if ignore.is_file() else []
    return [*EXCLUDES, *SECRET_PATTERNS, *own]


def runtime_env(working_dir: str | Path = ".", env: dict[str, str] | None = None,
                pip: list[str] | None = None) -> dict:
    """The job's runtime environment: working dir and excludes, env vars, optional pip packages.

    Raises:
        MtftError: ``env`` names a secret (Ray logs runtime envs in plain text).
    """
    wd = Path(working_dir).expanduser().resolve()
    if not wd.is_dir():
        raise MtftError(f"working dir not found: {wd}")
    secret = sorted(k for k in env or {} if is_secret_env(k))
    if secret:
        raise MtftError(f"--env {secret[0]}: secrets do not travel in a job's runtime env (Ray writes it to its "
                        f"logs); the cluster's nodes take credentials from their own environment or instance "
                        f"profile")
    env_vars = {k: v for k, v in os.environ.items()
                if (k in PASS_THROUGH or k.startswith("MTFT_RAY_")) and k not in LOCAL_ONLY and not is_secret_env(k)}
    env_vars.update(env or {})
    out: dict = {"working_dir": str(wd), "excludes": excludes(wd), "env_vars": env_vars}
    if pip:
        out["pip"] = list(pip)
    return out


@dataclass(frozen=True)
class Package:
    """What Ray uploads as a job's working dir.

    Attributes:
        root: the working dir.
        files: ``(path relative to root, bytes)`` of every file that goes, sorted.
        secrets_left_out: secret-pattern files (and pruned folders, with a ``/``) that stay here.
        secrets_included: secret-pattern files that go anyway (an ``!`` line of ``.mtftignore``).
    """

    root: Path
    files: tuple[tuple[str, int], ...]
    secrets_left_out: tuple[str, ...]
    secrets_included: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(n for _, n in self.files)


def package(env: dict) -> Package:
    """The files Ray packs for ``env`` (a :func:`runtime_env`), by Ray's own rules and matcher: one
    gitignore spec of Ray's default excludes plus ``env["excludes"]`` relative to the working dir,
    and the ``.gitignore`` (unless ``$RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1``) and ``.rayignore`` of
    every folder, relative to that folder; a path goes unless one of them matches it, and a
    matched folder is not entered."""
    # Ray's own default excludes and the matcher (its vendored pathspec 0.8.1) it packs with
    from ray._private import ray_constants
    from ray._private.thirdparty.pathspec import PathSpec

    root = Path(env["working_dir"])
    include_gitignore = os.environ.get(ray_constants.RAY_RUNTIME_ENV_IGNORE_GITIGNORE, "0") != "1"
    secret = PathSpec.from_lines("gitwildmatch", SECRET_PATTERNS)
    files: list[tuple[str, int]] = []
    left_out: list[str] = []
    included: list[str] = []

    def matcher(base: Path, lines: list[str]) -> Callable[[Path], bool]:
        spec = PathSpec.from_lines("gitwildmatch", lines)
        return lambda p: spec.match_file(str(p.relative_to(base)))

    def travel(path: Path, matchers: list[Callable[[Path], bool]]) -> None:
        names = (".gitignore", ".rayignore") if include_gitignore else (".rayignore",)
        here = [matcher(path, (path / n).read_text().splitlines(keepends=True)) for n in names if (path / n).is_file()]
        matchers = matchers + here
        rel = str(path.relative_to(root))
        if any(m(path) for m in matchers):
            if path.is_dir() and secret.match_file(rel + "/"):
                left_out.append(rel + "/")
            elif path.is_file() and secret.match_file(rel):
                left_out.append(rel)
            return
        if path.is_file():
            files.append((rel, path.stat().st_size))
            if secret.match_file(rel):
                included.append(rel)
        elif path.is_dir():
            for sub in sorted(path.iterdir()):
                travel(sub, matchers)

    travel(root, [matcher(root, ray_constants.get_runtime_env_default_excludes() + list(env.get("excludes", [])))])
    return Package(root, tuple(files), tuple(left_out), tuple(included))


def secret_refusal(pkg: Package, allowed: list[str] | None = None) -> str | None:
    """Why the upload is refused (a secret file would go that ``allowed`` does not name), or None.

    ``allowed`` are paths relative to the working dir, as :func:`package` lists them, or absolute.
    """
    ok = {_relative(a, pkg.root) for a in allowed or []}
    refused = [f for f in pkg.secrets_included if f not in ok]
    if not refused:
        return None
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    return (f"{refused[0]}{more} looks like a secret and would be uploaded ({IGNORE_FILE} re-includes it): "
            f"pass --allow-secret {refused[0]} to send it anyway, or drop the '!' line")


def stray_allowances(pkg: Package, allowed: list[str]) -> list[str]:
    """The ``allowed`` paths that name no secret file of the package (a typo, a file since removed)."""
    return [a for a in allowed if _relative(a, pkg.root) not in pkg.secrets_included]


def _relative(path: str, root: Path) -> str:
    p = Path(path)
    if p.is_absolute() and p.resolve().is_relative_to(root):
        return str(p.resolve().relative_to(root))
    return os.path.normpath(path)


def format_size(n: float) -> str:
    """A size for people.

    >>> format_size(812), format_size(1536)
    ('812 B', '1.5 KiB')
    """
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} GiB"


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
