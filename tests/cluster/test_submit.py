"""``mtft-ray submit / jobs / logs / stop`` as subprocesses: a dead address, a dry run, and a real
local Ray head on 127.0.0.1 running a tiny sweep end to end, a failing job and a stopped one."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
sys.path.insert(0, str(Path(__file__).parent))
from local_head import LocalHead, free_port
from test_cli import make_folder_tree, tiny_config

ROOT = Path(__file__).parents[2]


def mtft(*args: str, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def tiny_sweep(tmp_path: Path, name: str = "tiny-sweep", **extra) -> Path:
    """A one-trial sweep on a folder tree of coloured squares; results in <tmp>/results/<name>."""
    if not (tmp_path / "data").exists():
        make_folder_tree(tmp_path / "data")
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 2},
                                      finetune={"epochs": 1, "tasks_per_step": 2, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 20}).read_text())
    doc = {"name": name, "base": base, "storage": {"path": str(tmp_path / "results")},
           "search": {"space": {"tasks.M": {"choice": [2]}}, "algorithm": "grid", "num_samples": 1}, **extra}
    path = tmp_path / "job" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


# ----------------------------------------------------------------------------- no cluster at all


@pytest.mark.parametrize("command", [["submit", "--", "sweep", "x.yaml"], ["jobs"], ["logs", "raysubmit_x"],
                                     ["stop", "raysubmit_x"]], ids=lambda c: c[0])
def test_no_cluster_at_the_address(tmp_path, command):
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    r = mtft(command[0], "--address", address, *command[1:], cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"mtft-ray: error: no Ray cluster at {address} (connection refused)"), err
    assert "ray up cluster/aws.yaml" in err


def test_a_server_that_never_answers_times_out(tmp_path):
    """Something listens but never answers (a stuck tunnel): a clear message after the timeout, no hang."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        address = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        r = mtft("jobs", "--address", address, cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert r.returncode == 2 and f"no Ray cluster answered at {address} within 5s" in r.stderr, r.stderr


def test_ray_client_address_is_refused(tmp_path):
    r = mtft("jobs", cwd=tmp_path, env={"RAY_API_SERVER_ADDRESS": "ray://127.0.0.1:10001"})
    assert r.returncode == 2 and "is not a job server address" in r.stderr


def test_dry_run_shows_the_job(tmp_path):
    """Nothing is contacted; the runtime env carries excludes, storage settings (not local paths)."""
    path = tiny_sweep(tmp_path)
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "MTFT_RAY_LOG": "WARNING", "MTFT_RAY_CACHE": "/local/cache"}
    r = mtft("submit", "--dry-run", "--working-dir", str(path.parent), "--env", "A=1", "--pip", "rich",
             "--", "sweep", path.name, "--out", "rel/out", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "command:       python -m mtft_ray.cli.main sweep tiny-sweep.yaml --out rel/out" in r.stdout
    doc = json.loads(re.search(r"runtime_env:\s+(\{.*?\n\})", r.stdout, re.DOTALL).group(1))
    assert doc["working_dir"] == str(path.parent) and doc["pip"] == ["rich"]
    assert {"/runs/", "/data/", ".git", "*.pt"} <= set(doc["excludes"])
    assert doc["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "MTFT_RAY_LOG": "WARNING", "A": "1"}
    assert "the cluster's installed mtft-ray" in r.stdout  # no mtft_ray/ in that working dir
    assert "results:       rel/out" in r.stdout and "dry run: nothing submitted" in r.stdout
    assert "relative to the job's copy of the working dir" in r.stderr and "storage.path" in r.stderr

    checkout = mtft("submit", "--dry-run", "--", "sweep", "sweeps/quickstart.yaml", cwd=ROOT)
    assert "mtft_ray/ from the uploaded working dir" in checkout.stdout
    assert "results:       runs/sweeps/quickstart" in checkout.stdout

    bad = mtft("submit", "--dry-run", "--env", "NOVALUE", "--", "sweep", "x.yaml", cwd=tmp_path)
    assert bad.returncode == 2 and "--env 'NOVALUE': give KEY=VALUE" in bad.stderr
    nested = mtft("submit", "--dry-run", "--", "submit", "x", cwd=tmp_path)
    assert nested.returncode == 2 and "runs here, not as a job" in nested.stderr


def test_sweep_destination_follows_the_sweep_folder_contract(tmp_path):
    from mtft_ray.cluster.cli import sweep_destination

    path = tiny_sweep(tmp_path)  # storage.path: <tmp>/results
    assert sweep_destination(["sweep", path.name], path.parent) == (str(tmp_path / "results" / "tiny-sweep"), None)
    s3 = sweep_destination(["sweep", path.name, "storage.path=s3://b/p", "name=x"], path.parent)
    assert s3 == ("s3://b/p/x", None)
    where, warning = sweep_destination(["sweep", path.name, "storage.path=rel"], path.parent)
    assert where == "rel/tiny-sweep" and "goes away with the cluster" in warning
    assert sweep_destination(["sweep", "--out", "/abs/o", path.name], path.parent) == ("/abs/o", None)
    assert sweep_destination(["run", path.name], path.parent) is None


# ------------------------------------------------------------------------------ a real local head


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2)
    try:
        h.wait_ready()
        yield h
    finally:
        left = h.stop()
        assert not left, f"Ray processes left running: {left}"


@pytest.mark.slow
def test_submit_follow_runs_a_sweep_to_success(tmp_path, head):
    """The README flow on a local head: submit --follow from a checkout, SUCCEEDED, results where
    the sweep's storage.path says; then jobs and logs find the job."""
    path = tiny_sweep(tmp_path)
    started = time.monotonic()
    r = mtft("submit", "--address", head.address, "--follow", "--working-dir", str(ROOT),
             "--env", f"MTFT_RAY_CACHE={tmp_path / 'cache'}", "--env", "HF_HUB_OFFLINE=1",
             "--", "sweep", str(path), cwd=tmp_path, timeout=400)
    wall = time.monotonic() - started
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job = re.search(r"submitted job (raysubmit_\w+) to " + re.escape(head.address), r.stdout).group(1)
    assert f"dashboard: {head.address}/#/jobs/{job}" in r.stdout
    assert "mtft_ray/ from the uploaded working dir" in r.stdout
    out = tmp_path / "results" / "tiny-sweep"
    assert f"results:   {out}" in r.stdout
    assert f"job {job} SUCCEEDED" in r.stdout
    assert "1 trials (0 failed" in r.stdout  # the job's own output, streamed
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [x["status"] for x in rows] == ["TERMINATED"] and 0 <= float(rows[0]["acc_1shot"]) <= 1
    assert json.loads((out / "sweep.json").read_text())["sweep"]["name"] == "tiny-sweep"
    print(f"\ne2e submit --follow wall time: {wall:.1f}s")

    jobs = mtft("jobs", "--address", head.address, cwd=tmp_path)
    assert jobs.returncode == 0 and re.search(rf"{job}\s+SUCCEEDED", jobs.stdout), jobs.stdout
    logs = mtft("logs", job, "--address", head.address, "--tail", "3", cwd=tmp_path)
    assert logs.returncode == 0 and "wrote" in logs.stdout and len(logs.stdout.splitlines()) == 3
    unknown = mtft("logs", "raysubmit_nope", "--address", head.address, cwd=tmp_path)
    assert unknown.returncode == 2 and "no job 'raysubmit_nope'" in unknown.stderr


@pytest.mark.slow
def test_failing_job_exits_nonzero_with_its_last_log_lines(tmp_path, head):
    path = tiny_sweep(tmp_path, search={"space": {"tasks.M": {"choice": [2]}}, "num_sample": 1})
    r = mtft("submit", "--address", head.address, "--follow", "--working-dir", str(path.parent),
             "--", "sweep", path.name, cwd=tmp_path, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    job = re.search(r"submitted job (raysubmit_\w+)", r.stdout).group(1)
    assert re.search(rf"mtft-ray: job {job} FAILED: Job entrypoint command failed with exit code 2", r.stderr), r.stderr
    tail = r.stderr[r.stderr.index("log lines of"):]
    assert "unknown key 'search.num_sample'" in tail, r.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_stop_a_running_job(tmp_path, head):
    path = tiny_sweep(tmp_path, name="to-stop")
    r = mtft("submit", "--address", head.address, "--working-dir", str(path.parent),
             "--env", f"MTFT_RAY_CACHE={tmp_path / 'cache'}", "--", "sweep", path.name, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job = re.search(r"submitted job (raysubmit_\w+)", r.stdout).group(1)
    assert f"mtft-ray logs {job} --follow" in r.stdout
    stop = mtft("stop", job, "--address", head.address, "--wait", cwd=tmp_path)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() in (f"job {job}: STOPPED", f"job {job} already ended: SUCCEEDED")
    follow = mtft("logs", job, "--address", head.address, "--follow", cwd=tmp_path)
    assert (follow.returncode, "STOPPED" in follow.stderr) in ((1, True), (0, False))


@pytest.mark.slow
def test_planted_secrets_never_reach_the_cluster(tmp_path, head):
    """#16: credentials in the submitting shell and secret files in the working dir leave no trace on
    the cluster: not in any file of the head's Ray temp dir (session logs, runtime_env_agent.log,
    the unpacked working dir under runtime_resources), nor in the job's logs. A setting that does
    travel (the endpoint) is found there: the search would see a leak. What Ray unpacked is exactly
    the --dry-run listing."""
    def fake(tag: str) -> str:  # fresh each run: this file is itself uploaded by the checkout's sweep test
        return f"mtftFAKE{tag}{secrets.token_hex(12)}"

    credentials = {"AWS_SECRET_ACCESS_KEY": fake("secret"), "AWS_ACCESS_KEY_ID": fake("id"),
               "AWS_SESSION_TOKEN": fake("token")}
    endpoint = f"http://127.0.0.1:9/{fake('endpoint')}"
    wd = tmp_path / "wd"
    files = {".env": f"S3_KEY={fake('dotenv')}", ".aws/credentials": fake("awsfile"), "id_rsa": fake("ssh"),
             "server.pem": fake("pem"), "credentials.json": fake("json"), "marker-secrets-test.txt": "uploaded on purpose\n"}
    for rel, text in files.items():
        (wd / rel).parent.mkdir(parents=True, exist_ok=True)
        (wd / rel).write_text(text)
    planted = [*credentials.values(), *(t for rel, t in files.items() if not rel.startswith("marker"))]
    env = {**credentials, "AWS_ENDPOINT_URL": endpoint}

    dry = mtft("submit", "--dry-run", "--working-dir", str(wd), "--", "--help", cwd=tmp_path, env=env)
    assert dry.returncode == 0, dry.stderr
    listed = re.findall(r"^ +\d+(?:\.\d)? (?:B|KiB)  (\S+)$", dry.stdout, re.MULTILINE)
    assert listed == ["marker-secrets-test.txt"]
    assert {".env", ".aws/credentials", "id_rsa", "server.pem", "credentials.json"} <= set(dry.stdout.split())

    r = mtft("submit", "--address", head.address, "--follow", "--working-dir", str(wd), "--", "--help",
             cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    job = re.search(r"submitted job (raysubmit_\w+)", r.stdout).group(1)
    assert "uploaded:  1 files" in r.stdout and "5 secret files stay here" in r.stdout
    logs = mtft("logs", job, "--address", head.address, cwd=tmp_path)
    assert logs.returncode == 0 and "usage: mtft-ray" in logs.stdout

    seen: dict[str, int] = {}
    searched = 0
    for p in Path(head.temp_dir).rglob("*"):
        if p.is_file() and not p.is_symlink():
            data = p.read_bytes()
            searched += 1
            for needle in [*planted, endpoint]:
                seen[needle] = seen.get(needle, 0) + data.count(needle.encode())
    for text in (r.stdout, r.stderr, logs.stdout, dry.stdout, dry.stderr):
        for needle in planted:
            seen[needle] += text.count(needle)
    assert seen.pop(endpoint) > 0, "the runtime env is logged: the search would find a leak"
    assert searched > 20 and seen == {needle: 0 for needle in planted}

    unpacked = [d for d in (Path(head.temp_dir) / "session_latest").glob("runtime_resources/working_dir_files/*")
                if (d / "marker-secrets-test.txt").is_file()]
    assert len(unpacked) == 1
    assert sorted(str(f.relative_to(unpacked[0])) for f in unpacked[0].rglob("*") if f.is_file()) == listed
