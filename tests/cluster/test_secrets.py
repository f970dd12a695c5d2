"""Secrets stay home (#16): ``mtft-ray submit`` leaves well-known secret files out of the uploaded
working dir, lists what goes with --dry-run (by Ray's own packing rules: checked against the zip
Ray builds), refuses a secret that .mtftignore re-includes unless --allow-secret names it, and
never puts a credential into a runtime env. The run against a real Ray head is in test_submit.py
(test_planted_secrets_never_reach_the_cluster), which shares that module's head."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mtft_ray.cluster import jobs

sys.path.insert(0, str(Path(__file__).parent))
from local_head import free_port

# one file of each kind the issue measured, plus the rest of SECRET_PATTERNS
SECRET_FILES = [".env", ".env.production", ".aws/credentials", ".aws/config", "id_rsa", "id_ed25519.pub",
                ".ssh/id_ed25519", "server.pem", "tls.key", "cert.p12", "cert.pfx", ".netrc", "credentials.json",
                ".git-credentials", ".pypirc", "conf/credentials.yaml", "deep/er/.env"]
NORMAL_FILES = ["train.py", "sweeps/x.yaml", "id_to_class.json", "conf/settings.yaml", "envoy.txt", "keys.md"]
FAKE = "mtftFAKEsecret"


def mtft(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not jobs.is_secret_env(k)}
    full_env.update({"HF_HUB_OFFLINE": "1", **(env or {})})
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "mtft_ray.cli.main", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120, check=False)


def make_tree(root: Path, files: list[str]) -> Path:
    for i, rel in enumerate(files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"{FAKE}{i:03d} {rel}\n" + "x" * i)
    return root


def dry_run_listing(stdout: str) -> tuple[dict[str, str], list[str], str]:
    """(uploaded path → size text, secrets left out, the upload line) of a --dry-run's output."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("upload:"))
    secrets_at = next(i for i, line in enumerate(lines) if line.startswith("secrets:"))
    uploaded = {}
    for line in lines[start + 1:secrets_at]:
        m = re.fullmatch(r"\s+(\d+(?:\.\d)? (?:B|KiB|MiB|GiB))  (\S+)(  \(secret: --allow-secret\))?", line)
        assert m, line
        uploaded[m.group(2)] = m.group(1)
    left_out = []
    for line in lines[secrets_at + 1:]:
        if not line.startswith("  "):
            break
        left_out.append(line.strip())
    return uploaded, left_out, lines[start]


def test_dry_run_lists_every_file_and_no_secret(tmp_path):
    wd = make_tree(tmp_path / "wd", SECRET_FILES + NORMAL_FILES + ["notes/private.txt", "big.bin", "runs/r/x.json"])
    (wd / ".gitignore").write_text("notes/\n")
    (wd / ".mtftignore").write_text("# not for the cluster\nbig.bin\n")
    r = mtft("submit", "--dry-run", "--working-dir", str(wd), "--", "--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    uploaded, left_out, upload_line = dry_run_listing(r.stdout)
    expected = sorted(NORMAL_FILES + [".gitignore", ".mtftignore"])
    assert sorted(uploaded) == expected
    sizes = {rel: (wd / rel).stat().st_size for rel in expected}
    assert uploaded["train.py"] == jobs.format_size(sizes["train.py"])
    total = sum(sizes.values())
    assert upload_line == f"upload:        {len(expected)} files, {jobs.format_size(total)} ({total} bytes) from {wd}"
    # each secret kind is named (names only), none of its content shows
    assert sorted(left_out) == sorted(SECRET_FILES)
    assert f"{FAKE}0" not in r.stdout + r.stderr
    # the patterns reach Ray as the job's excludes, .mtftignore's after the secret ones
    doc = json.loads(re.search(r"runtime_env:\s+(\{.*?\n\})", r.stdout, re.DOTALL).group(1))
    assert doc["excludes"][-len(jobs.SECRET_PATTERNS) - 2:] == [*jobs.SECRET_PATTERNS, "# not for the cluster", "big.bin"]


def test_listing_agrees_with_the_package_ray_builds(tmp_path):
    """The listing against Ray's own zip of the same runtime env (what `ray job submit` uploads):
    nested .gitignore and .rayignore, anchored and directory patterns, '!' lines."""
    from ray._private import ray_constants
    from ray._private.runtime_env.packaging import _zip_files

    wd = make_tree(tmp_path / "wd", SECRET_FILES + NORMAL_FILES + [
        "runs/a.txt", "sub/runs/b.txt", "data/c.bin", "model.pt", "pkg/__pycache__/m.pyc", ".git/config",
        "pkg/.gitignore", "pkg/local.txt", "pkg/keep.txt", "pkg/deep/local.txt", "tools/.rayignore", "tools/t.sh",
        "tools/ok.py", "docs/a.md", "docs/b.md", ".env.example", "weights/w.bin"])
    (wd / "pkg/.gitignore").write_text("local.txt\n")
    (wd / "tools/.rayignore").write_text("*.sh\n")
    (wd / ".mtftignore").write_text("/docs/*.md\n!/docs/b.md\n!.env.example\nweights/\n")
    env = jobs.runtime_env(wd)
    pkg = jobs.package(env)
    zipped = tmp_path / "ray.zip"
    excludes = ray_constants.get_runtime_env_default_excludes() + env["excludes"]
    _zip_files(str(wd), excludes, str(zipped), include_gitignore=True)
    with zipfile.ZipFile(zipped) as z:
        ray_files = sorted(i.filename for i in z.infolist() if not i.is_dir())
    assert [f for f, _ in pkg.files] == ray_files
    assert {"docs/b.md", "pkg/keep.txt", "tools/ok.py", "sub/runs/b.txt", ".env.example"} <= set(ray_files)
    assert not {"docs/a.md", "pkg/local.txt", "pkg/deep/local.txt", "tools/t.sh", "runs/a.txt", "weights/w.bin"} & set(ray_files)
    assert not set(SECRET_FILES) & set(ray_files)
    assert pkg.secrets_included == (".env.example",)  # the '!' line: refused until --allow-secret names it


def test_a_reincluded_secret_is_refused_unless_allowed(tmp_path):
    wd = make_tree(tmp_path / "wd", ["train.py", ".env", ".ssh/id_rsa"])
    (wd / ".mtftignore").write_text("!.env\n")
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (["--dry-run"], ["--address", dead]):  # refused before any cluster is contacted
        r = mtft("submit", *args, "--working-dir", str(wd), "--", "--help", cwd=tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.strip().splitlines() == [
            ("mtft-ray: error: .env looks like a secret and would be uploaded (.mtftignore re-includes it): "
             "pass --allow-secret .env to send it anyway, or drop the '!' line")]
        assert (" .env  (secret: --allow-secret)" in r.stdout) == (args == ["--dry-run"])  # a dry run lists it

    ok = mtft("submit", "--dry-run", "--working-dir", str(wd), "--allow-secret", ".env", "--", "--help", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    uploaded, left_out, _ = dry_run_listing(ok.stdout)
    assert sorted(uploaded) == [".env", ".mtftignore", "train.py"] and left_out == [".ssh/id_rsa"]
    absolute = mtft("submit", "--dry-run", "--working-dir", str(wd), "--allow-secret", str(wd / ".env"),
                    "--allow-secret", "id_rsa", "--", "--help", cwd=tmp_path)
    assert absolute.returncode == 0, absolute.stderr
    assert absolute.stderr.strip() == "mtft-ray: warning: --allow-secret id_rsa: no such secret file is uploaded"


def test_credentials_never_enter_the_runtime_env(tmp_path, monkeypatch):
    """Only storage settings travel from this shell; secret names are held back (named, never shown)
    and refused in --env, since Ray logs every runtime env in plain text."""
    shell = {"AWS_ACCESS_KEY_ID": "AKIAmtftFAKE", "AWS_SECRET_ACCESS_KEY": f"{FAKE}AWS", "AWS_SESSION_TOKEN": f"{FAKE}TOK",
             "MTFT_RAY_API_TOKEN": f"{FAKE}MT", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1",
             "MTFT_RAY_LOG": "WARNING"}
    r = mtft("submit", "--dry-run", "--working-dir", str(tmp_path), "--", "--help", cwd=tmp_path, env=shell)
    assert r.returncode == 0, r.stderr
    doc = json.loads(re.search(r"runtime_env:\s+(\{.*?\n\})", r.stdout, re.DOTALL).group(1))
    assert doc["env_vars"] == {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "eu-west-1", "MTFT_RAY_LOG": "WARNING"}
    assert ("env kept here: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, MTFT_RAY_API_TOKEN "
            "(never in the runtime env") in r.stdout
    assert FAKE not in r.stdout + r.stderr and "AKIAmtftFAKE" not in r.stdout

    for pair in ("AWS_SECRET_ACCESS_KEY=x", "HF_TOKEN=x", "WANDB_API_KEY=x", "DB_PASSWORD=x"):
        bad = mtft("submit", "--dry-run", "--working-dir", str(tmp_path), "--env", pair, "--", "--help", cwd=tmp_path)
        assert bad.returncode == 2, (pair, bad.stdout)
        assert bad.stderr.startswith(f"mtft-ray: error: --env {pair.split('=')[0]}: secrets do not travel"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1

    for k, v in shell.items():
        monkeypatch.setenv(k, v)
    assert set(jobs.runtime_env(tmp_path, {"RAY_AUTH_MODE": "disabled"})["env_vars"]) == {
        "AWS_ENDPOINT_URL", "AWS_REGION", "MTFT_RAY_LOG", "RAY_AUTH_MODE"}


@pytest.mark.parametrize(("name", "secret"), [
    ("AWS_SECRET_ACCESS_KEY", True), ("AWS_ACCESS_KEY_ID", True), ("AWS_SESSION_TOKEN", True), ("GITHUB_TOKEN", True),
    ("OPENAI_APIKEY", True), ("PGPASSWORD", True), ("GOOGLE_APPLICATION_CREDENTIALS", True),
    ("AWS_REGION", False), ("AWS_ENDPOINT_URL", False), ("MTFT_RAY_LOG", False), ("MTFT_RAY_TOKENIZER", False),
    ("RAY_AUTH_MODE", False), ("HF_HUB_OFFLINE", False)])
def test_secret_env_names(name, secret):
    assert jobs.is_secret_env(name) is secret
