"""``mtft-ray cluster check``, ``submit``, ``jobs``, ``logs``, ``stop``: from a cluster YAML to a running sweep.

Examples:
    mtft-ray cluster check cluster/aws.yaml --sweep sweeps/quickstart.yaml 'resources={cpu: 4, gpu: 1}'
    mtft-ray submit --address http://127.0.0.1:8265 --follow -- sweep sweeps/quickstart.yaml
    mtft-ray jobs
    mtft-ray logs raysubmit_XYZ --follow
    mtft-ray stop raysubmit_XYZ
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

from mtft_ray.cluster import jobs
from mtft_ray.errors import MtftError

_ADDRESS_HELP = "the cluster's dashboard / job server (default $RAY_ADDRESS, else http://127.0.0.1:8265)"


def register(sub) -> None:
    """Add ``cluster`` (with ``check``), ``submit``, ``jobs``, ``logs`` and ``stop`` to ``mtft-ray``."""
    cl = sub.add_parser("cluster", help="cluster launcher configs (cluster/*.yaml): check one offline")
    cl_sub = cl.add_subparsers(dest="cluster_command", required=True)
    ck = cl_sub.add_parser(
        "check", help="validate a cluster YAML offline; print node types, GPUs and a sweep's concurrency",
        description="Validate a Ray cluster-launcher YAML offline with Ray's own schema and preparation, "
                    "resolve AWS instance types (vCPUs, memory, GPUs) from moto's EC2 catalogue, check "
                    "GPU types, worker bounds and the image's Ray version; with --sweep, print the trials "
                    "it would run at once on the cluster at full scale.")
    ck.add_argument("file", help="a cluster YAML (cluster/aws.yaml, cluster/local.yaml)")
    ck.add_argument("--sweep", nargs="+", metavar=("SWEEP_YAML", "KEY=VALUE"),
                    help="a sweep file to plan on this cluster, then dotted overrides of it")
    ck.set_defaults(fn=_cmd_check)

    sm = sub.add_parser(
        "submit", help="run an mtft-ray command (a sweep) as a Ray job on a cluster",
        description="Submit `mtft-ray COMMAND ...` as a Ray job. The working dir is uploaded (without .git,\n"
                    "caches, runs/, data/, checkpoints, .gitignore'd files and well-known secret files: .env*,\n"
                    ".aws/, .ssh/, ssh keys, *.pem, *.key, .netrc, credentials*, ...; .mtftignore adds patterns)\n"
                    "and comes first on the job's PYTHONPATH, so a checkout's mtft_ray/ is the code that runs.\n"
                    "Credentials never travel: the job gets storage settings (endpoint, region, MTFT_RAY_*), and\n"
                    "the cluster's nodes their own AWS credentials. Prints the job id and its dashboard page;\n"
                    "--follow streams the logs and exits with the job's outcome. --dry-run lists every file.",
        usage="mtft-ray submit [options] -- COMMAND [ARG ...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  mtft-ray submit --dry-run -- sweep sweeps/quickstart.yaml\n"
               "  mtft-ray submit --address http://127.0.0.1:8265 --follow -- sweep sweeps/quickstart.yaml \\\n"
               "      'resources={cpu: 4, gpu: 1}' --out s3://BUCKET/sweeps/quickstart")
    sm.add_argument("--address", help=_ADDRESS_HELP)
    sm.add_argument("--follow", action="store_true",
                    help="stream the job's logs until it ends; exit 0 only if it succeeded")
    sm.add_argument("--working-dir", default=".", help="directory to upload as the job's working dir (default .)")
    sm.add_argument("--env", action="append", default=[], metavar="KEY=VAL",
                    help="environment variable of the job (repeat)")
    sm.add_argument("--pip", action="append", default=[], metavar="PKG", help="extra pip package for the job (repeat)")
    sm.add_argument("--allow-secret", action="append", default=[], metavar="PATH",
                    help="upload this secret-looking file that .mtftignore re-includes (path in the working "
                         "dir, as --dry-run lists it; repeat); without it such a file stops the submit")
    sm.add_argument("--submission-id", help="the job's id (default: Ray's raysubmit_...)")
    sm.add_argument("--dry-run", action="store_true",
                    help="print the job's command, runtime environment and every file it uploads; submit nothing")
    sm.add_argument("command", nargs="+", metavar="COMMAND", help="the mtft-ray command to run (after '--')")
    sm.set_defaults(fn=_cmd_submit)

    jb = sub.add_parser("jobs", help="list the cluster's jobs")
    jb.add_argument("--address", help=_ADDRESS_HELP)
    jb.set_defaults(fn=_cmd_jobs)

    lg = sub.add_parser("logs", help="print (or --follow) a job's logs")
    lg.add_argument("job", help="the job's submission id (raysubmit_...)")
    lg.add_argument("--address", help=_ADDRESS_HELP)
    lg.add_argument("--follow", action="store_true", help="stream until the job ends; exit 0 only if it succeeded")
    lg.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    lg.set_defaults(fn=_cmd_logs)

    st = sub.add_parser("stop", help="stop a running job")
    st.add_argument("job", help="the job's submission id (raysubmit_...)")
    st.add_argument("--address", help=_ADDRESS_HELP)
    st.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    st.set_defaults(fn=_cmd_stop)


# ------------------------------------------------------------------------------------ cluster check


def _cmd_check(ns: argparse.Namespace) -> int:
    from mtft_ray.cluster.check import check_cluster, format_report  # late: it loads torch (through the sweep)

    sweep, overrides = (ns.sweep[0], ns.sweep[1:]) if ns.sweep else (None, [])
    if any("=" not in o for o in overrides):
        raise MtftError(f"--sweep takes one sweep file, then key=value overrides; got {ns.sweep}")
    print(format_report(check_cluster(ns.file, sweep, overrides)))
    return 0


# ------------------------------------------------------------------------------------------ submit


def _cmd_submit(ns: argparse.Namespace) -> int:
    env = jobs.runtime_env(ns.working_dir, jobs.parse_env(ns.env), ns.pip)
    command = jobs.entrypoint(ns.command)
    pkg = jobs.package(env)
    refusal = jobs.secret_refusal(pkg, ns.allow_secret)
    for a in jobs.stray_allowances(pkg, ns.allow_secret):
        print(f"mtft-ray: warning: --allow-secret {a}: no such secret file is uploaded", file=sys.stderr)
    if refusal and not ns.dry_run:
        raise MtftError(refusal)
    client = None if ns.dry_run else jobs.connect(ns.address)  # no cluster: fail before anything else
    results = sweep_destination(ns.command, Path(env["working_dir"]))
    if results and results[1]:
        print(f"mtft-ray: warning: {results[1]}", file=sys.stderr)
    if ns.dry_run:
        _print_dry_run(command, env, pkg, results, jobs.dashboard_address(ns.address))
        if refusal:
            raise MtftError(refusal)
        return 0
    started = time.monotonic()
    job_id = jobs.submit(client, ns.command, env, ns.submission_id)
    print(f"submitted job {job_id} to {jobs.dashboard_address(ns.address)}")
    print(f"  command:   {command}")
    print(f"  code:      {jobs.code_source(env['working_dir'])}")
    left_out = f"; {len(pkg.secrets_left_out)} secret files stay here" if pkg.secrets_left_out else ""
    print(f"  uploaded:  {len(pkg.files)} files, {jobs.format_size(pkg.size)}{left_out} (--dry-run lists them)")
    if results:
        print(f"  results:   {results[0]}")
    print(f"  dashboard: {jobs.job_url(ns.address, job_id)}")
    if not ns.follow:
        print(f"  logs:      mtft-ray logs {job_id} --follow    stop: mtft-ray stop {job_id}")
        return 0
    sys.stdout.flush()
    return _follow(client, job_id, started)


def _print_dry_run(command: str, env: dict, pkg: jobs.Package, results: tuple | None, address: str) -> None:
    print(f"command:       {command}")
    print(f"runtime_env:   {json.dumps(env, indent=2)}")
    print(f"code:          {jobs.code_source(env['working_dir'])}")
    if results:
        print(f"results:       {results[0]}")
    print(f"upload:        {len(pkg.files)} files, {jobs.format_size(pkg.size)} ({pkg.size} bytes) from {pkg.root}")
    width = max((len(jobs.format_size(n)) for _, n in pkg.files), default=0)
    for name, n in pkg.files:
        mark = "  (secret: --allow-secret)" if name in pkg.secrets_included else ""
        print(f"  {jobs.format_size(n):>{width}}  {name}{mark}")
    print(f"secrets:       {len(pkg.secrets_left_out)} secret files left out (not uploaded)")
    for name in pkg.secrets_left_out:
        print(f"  {name}")
    kept = jobs.secrets_kept_home()
    if kept:
        print(f"env kept here: {', '.join(kept)} (never in the runtime env; nodes use their own credentials)")
    print(f"address:       {address} (dry run: nothing submitted)")


def _follow(client, job_id: str, started: float) -> int:
    try:
        state = jobs.follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nmtft-ray: stopped following; job {job_id} goes on (mtft-ray logs {job_id} --follow, "
              f"mtft-ray stop {job_id})", file=sys.stderr)
        return 130
    if state == "SUCCEEDED":
        print(f"job {job_id} SUCCEEDED in {time.monotonic() - started:.0f}s")
        return 0
    print(jobs.failure_report(client, job_id, state), file=sys.stderr)
    return 1


def sweep_destination(command: list[str], working_dir: Path) -> tuple[str, str | None] | None:
    """Where a submitted sweep writes its folder, and a warning when that is inside the job's
    temporary working-dir copy; None for other commands or a sweep file not found locally.

    The sweep folder is ``--out``, else ``<storage.path>/<name>``, else ``runs/sweeps/<name>``.
    """
    if not command or command[0] != "sweep":
        return None
    args = command[1:]
    out = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--out"), None)
    out = out or next((a.split("=", 1)[1] for a in args if a.startswith("--out=")), None)
    positional = [a for i, a in enumerate(args) if not a.startswith("-") and "=" not in a
                  and (i == 0 or args[i - 1] != "--out")]
    overrides = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))
    if out is None:
        raw = _read_sweep(positional[0], working_dir) if positional else None
        if raw is None:
            return None
        name = overrides.get("name") or raw.get("name") or "sweep"
        storage = overrides.get("storage.path") or (raw.get("storage") or {}).get("path")
        out = f"{storage.rstrip('/')}/{name}" if storage else f"runs/sweeps/{name}"
    if out.startswith("s3://") or Path(out).is_absolute():
        return out, None
    return out, (f"the sweep writes to {out!r}, relative to the job's copy of the working dir on the head node, "
                 f"which goes away with the cluster: set storage.path (s3://bucket/prefix) in the sweep or "
                 f"pass --out with an absolute path on shared storage")


def _read_sweep(config: str, working_dir: Path) -> dict | None:
    """The sweep file as the job will see it (relative to the working dir), warning when the cluster
    may not: missing here, or outside the uploaded directory."""
    path = Path(config) if Path(config).is_absolute() else working_dir / config
    if not path.is_file():
        print(f"mtft-ray: warning: {config} is not in the working dir {working_dir}; the job looks for it "
              f"on the cluster", file=sys.stderr)
        return None
    if not path.resolve().is_relative_to(working_dir):
        print(f"mtft-ray: warning: {config} is outside the uploaded working dir {working_dir}: only a cluster "
              f"that shares this filesystem finds it", file=sys.stderr)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None
    return raw if isinstance(raw, dict) else None


# ------------------------------------------------------------------------------- jobs, logs, stop


def _cmd_jobs(ns: argparse.Namespace) -> int:
    client = jobs.connect(ns.address)
    listed = client.list_jobs()
    print(jobs.format_jobs(listed) if listed else f"no jobs on {jobs.dashboard_address(ns.address)}")
    return 0


def _cmd_logs(ns: argparse.Namespace) -> int:
    client = jobs.connect(ns.address)
    jobs.status(client, ns.job)  # a clear error for an unknown id
    if ns.follow:
        return _follow(client, ns.job, time.monotonic())
    text = client.get_job_logs(ns.job)
    if ns.tail:
        text = "\n".join(text.rstrip("\n").splitlines()[-ns.tail:]) + "\n"
    sys.stdout.write(text)
    return 0


def _cmd_stop(ns: argparse.Namespace) -> int:
    client = jobs.connect(ns.address)
    state = jobs.status(client, ns.job)
    if state in ("SUCCEEDED", "FAILED", "STOPPED"):
        print(f"job {ns.job} already ended: {state}")
        return 0
    client.stop_job(ns.job)
    if ns.wait:
        state = jobs.wait_terminal(client, ns.job, timeout=120)
        print(f"job {ns.job}: {state}")
        return 0 if state in ("STOPPED", "SUCCEEDED", "FAILED") else 1
    print(f"stop requested for job {ns.job} (mtft-ray jobs shows when it has stopped)")
    return 0
