"""Experiment tracking of sweeps: one real sweep feeding a real MLflow server, W&B offline and
TensorBoard at once; the preflight's refusals (unreachable server, credentials, unknown keys) as
plain functions, against real servers on 127.0.0.1, and through the CLI."""

from __future__ import annotations

import csv
import doctest
import http.server
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parents[1] / "cli"))
from test_cli import make_folder_tree, mtft, tiny_config

from mtft_ray.config.load import validate
from mtft_ray.config.schema import StorageConfig
from mtft_ray.errors import MtftError
from mtft_ray.storage import open_storage
from mtft_ray.sweep import trackers, tracking
from mtft_ray.sweep.schema import SweepConfig
from mtft_ray.sweep.trackers import mlflow_name
from mtft_ray.sweep.tracking import check_tracking, mlflow_uri, tracking_callbacks

SPACE = {"tasks.domains": {"subset": ["dom0", "dom1"]}, "finetune.lr": {"float": [1e-4, 1e-2], "log": True}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sweep_config(tracking_doc: dict, **extra) -> SweepConfig:
    return SweepConfig.model_validate({"name": "tracked", "search": {"space": SPACE}, "tracking": tracking_doc,
                                       **extra})


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 (SQLite backend, proxied artifacts in tmp), in its own
    process group, stopped by its pid."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.log = root / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", self.uri.rsplit(":", 1)[1],
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts")]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"mlflow server not ready after {timeout}s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the group id is its pid
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def tf_events(path: Path) -> list:
    """The Event protos of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (n,) = struct.unpack("<Q", data[at:at + 8])
        events.append(Event.FromString(data[at + 12:at + 12 + n]))
        at += 12 + n + 4
    return events


def tracked_sweep_file(tmp_path: Path, uri: str) -> Path:
    make_folder_tree(tmp_path / "data", domains=4, classes=4, per_class=10, size=32)
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 2},
                                      finetune={"epochs": 1, "tasks_per_step": 2, "val_episodes": 5},
                                      eval={"shots": [1], "episodes": 10}).read_text())
    base["data"]["split"] = {"target_domains": ["dom3"], "val_domains": ["dom2"]}
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tracked", "base": base,
        "search": {"space": SPACE, "algorithm": "optuna", "metric": "acc_1shot", "num_samples": 2},
        "tracking": {"mlflow": {"tracking_uri": uri, "experiment": "tracked-sweep"},
                     "wandb": {"project": "mtft-test", "mode": "offline"}, "tensorboard": True},
    }))
    return path


@pytest.mark.slow
def test_one_sweep_feeds_mlflow_wandb_and_tensorboard(tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)  # the sweep subprocess sees only the sweep file's settings
    t0 = time.monotonic()
    server = MlflowServer(tmp_path / "mlflow")
    try:
        path, out = tracked_sweep_file(tmp_path, server.uri), tmp_path / "sw"  # while the server starts
        server.wait_ready()
        t1 = time.monotonic()
        r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path)
        print(f"mlflow server ready in {t1 - t0:.1f}s; tracked sweep of 2 trials {time.monotonic() - t1:.1f}s")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "tracking failed" not in r.stderr and "did not finish" not in r.stderr, r.stderr[-3000:]
        with open(out / "trials.csv") as f:
            rows = {x["trial_id"]: x for x in csv.DictReader(f)}
        assert len(rows) == 2 and {x["status"] for x in rows.values()} == {"TERMINATED"}
        trial_dirs = {tid: next(out.glob(f"*{tid}*")) for tid in rows}
        check_mlflow(server.uri, rows, trial_dirs)
        check_resumed_trial_reuses_its_run(server.uri, rows)
    finally:
        server.stop()
    check_wandb(out, rows, trial_dirs)
    check_tensorboard(rows, trial_dirs)


def check_mlflow(uri: str, rows: dict[str, dict], trial_dirs: dict[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked-sweep")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(run.data.tags["trial_id"] for run in runs) == sorted(rows)  # one run per trial
    for run in runs:
        row, run_id = rows[run.data.tags["trial_id"]], run.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["sweep"] == "tracked"
        params = run.data.params
        chosen = row["tasks.domains"].split("+")
        assert params["tasks.domains"] == row["tasks.domains"]
        assert {params["tasks.domains/dom0"], params["tasks.domains/dom1"]} <= {"True", "False"}
        assert [d for d in ("dom0", "dom1") if params[f"tasks.domains/{d}"] == "True"] == chosen
        assert float(params["finetune.lr"]) == pytest.approx(float(row["finetune.lr"]))
        val = client.get_metric_history(run_id, "val_acc")
        final = client.get_metric_history(run_id, "acc_1shot")
        ci = client.get_metric_history(run_id, "ci95_1shot")
        assert len(final) == 1 and final[0].value == pytest.approx(float(row["acc_1shot"]))
        assert len(ci) == 1 and ci[0].value == pytest.approx(float(row["ci95_1shot"]))
        epochs = [m for m in val if m.step < final[0].step]  # per-epoch reports come before the final one
        assert epochs and all(0 <= m.value <= 1 for m in epochs)
        assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [m.step for m in epochs]
        assert run.data.tags["config_hash"] == row["config_hash"]
        names = {a.path for a in client.list_artifacts(run_id, "run")}
        assert {"run/manifest.json", "run/config.yaml", "run/result.json"} <= names, names
        assert not [n for n in names if n.endswith(".pt")]
        got = Path(client.download_artifacts(run_id, "run/manifest.json"))
        assert got.read_bytes() == (trial_dirs[run.data.tags["trial_id"]] / "run" / "manifest.json").read_bytes()


class _Trial:
    """What MLflowTrials reads of a Tune trial when it starts (hashable, as Tune's trials are)."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config = trial_id, config

    def __str__(self) -> str:
        return f"trial_driver_{self.trial_id}"


def check_resumed_trial_reuses_its_run(uri: str, rows: dict[str, dict]) -> None:
    """A resumed sweep's callback (a fresh one, as Tuner.restore unpickles it) finds the trial's run."""
    from mlflow.tracking import MlflowClient

    from mtft_ray.sweep.trackers import MlflowTrials

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tracked-sweep")
    before = {r.data.tags["trial_id"]: r for r in client.search_runs([exp.experiment_id])}
    tid, row = next(iter(rows.items()))
    callback = MlflowTrials(uri, "tracked-sweep", tags={k: before[tid].data.tags[k] for k in ("sweep", "sweep_folder")},
                            subsets={"tasks.domains": ["dom0", "dom1"]})
    callback.setup()
    trial = _Trial(tid, {"tasks.domains": row["tasks.domains"].split("+"), "finetune.lr": float(row["finetune.lr"])})
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    assert callback._trial_runs[trial] == before[tid].info.run_id
    assert len(client.search_runs([exp.experiment_id])) == len(before)


def wandb_records(path: Path) -> list:
    """The Record protos of a W&B run's transaction log (``run-<id>.wandb``: a 7-byte file header,
    then LevelDB log framing: 32 KiB blocks of chunks, each with a 7-byte header)."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, out, at, chunk, block = path.read_bytes(), [], 7, b"", 32768
    assert data[:4] == b":W&B", data[:7]
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header is padding
            at += block - at % block
            continue
        _, n, kind = struct.unpack("<IHB", data[at:at + 7])
        chunk, at = chunk + data[at + 7:at + 7 + n], at + 7 + n
        if kind in (1, 4):  # FULL or LAST
            out.append(Record.FromString(chunk))
            chunk = b""
    return out


def _items(items) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def check_wandb(out: Path, rows: dict[str, dict], trial_dirs: dict[str, Path]) -> None:
    for tid, row in rows.items():
        (run_dir,) = (out / "wandb").glob(f"offline-run-*-{tid}")  # the sweep folder's wandb/, one per trial
        records = wandb_records(run_dir / f"run-{tid}.wandb")
        kinds = [r.WhichOneof("record_type") for r in records]
        assert "exit" in kinds, kinds  # the run was finished and written out
        config = {}
        for r in records:
            config.update(_items(r.run.config.update) if r.HasField("run") else
                          _items(r.config.update) if r.HasField("config") else {})
        chosen = row["tasks.domains"].split("+")
        assert config["tasks.domains"] == chosen
        flags = {d: config[f"tasks.domains[{d}]"] for d in ("dom0", "dom1")}
        assert flags == {d: d in chosen for d in ("dom0", "dom1")}
        history = [_items(r.history.item) for r in records if r.HasField("history")]
        assert [h["acc_1shot"] for h in history if "acc_1shot" in h] == [pytest.approx(float(row["acc_1shot"]))]
        assert [h["val_acc"] for h in history if "val_acc" in h and "acc_1shot" not in h]  # per-epoch reports
        saved = {f.path for r in records if r.HasField("files") for f in r.files.files}
        assert {"run/manifest.json", "run/config.yaml", "run/result.json"} <= saved, saved
        assert (run_dir / "files" / "run" / "manifest.json").read_bytes() == \
            (trial_dirs[tid] / "run" / "manifest.json").read_bytes()


def check_tensorboard(rows: dict[str, dict], trial_dirs: dict[str, Path]) -> None:
    for tid, folder in trial_dirs.items():
        files = list(folder.glob("events.out.tfevents.*"))
        assert files, sorted(p.name for p in folder.iterdir())
        scalars: dict[str, list[float]] = {}
        for f in files:
            for ev in tf_events(f):
                for v in ev.summary.value:
                    scalars.setdefault(v.tag, []).append(v.simple_value)
        assert scalars["ray/tune/acc_1shot"] == [pytest.approx(float(rows[tid]["acc_1shot"]), abs=1e-6)]
        assert len(scalars["ray/tune/val_acc"]) >= 2  # each epoch and the final report


# ----------------------------------------------------------------------------- the preflight


def test_unreachable_mlflow_is_refused_before_any_trial(monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"
    sweep = sweep_config({"mlflow": {"tracking_uri": uri}, "tensorboard": True})
    t0 = time.monotonic()
    with pytest.raises(MtftError) as e:
        check_tracking(sweep, "sweep tracked")
    msg = str(e.value)
    assert f"MLflow at {uri} unreachable" in msg and "tracking.best_effort" in msg and "\n" not in msg
    assert time.monotonic() - t0 < 10


def test_best_effort_drops_an_unreachable_tracker_with_a_warning(tmp_path, caplog):
    uri = f"http://127.0.0.1:{free_port()}"
    storage = open_storage(StorageConfig(path=str(tmp_path / "sw")))
    only = sweep_config({"mlflow": {"tracking_uri": uri}, "best_effort": True})
    with caplog.at_level(logging.WARNING, logger="mtft_ray"):
        kept = check_tracking(only, "sweep tracked")
    assert kept is not None and kept.mlflow is None
    assert any(uri in r.getMessage() and "without it" in r.getMessage() for r in caplog.records)
    assert tracking_callbacks(only, storage, kept) == []  # the tuner passes what check_tracking kept
    both = sweep_config({"mlflow": {"tracking_uri": uri}, "tensorboard": True, "best_effort": True})
    kept = check_tracking(both, "sweep tracked")
    assert kept is not None and kept.mlflow is None and kept.tensorboard
    callbacks = tracking_callbacks(both, storage, kept)
    assert [type(c).__name__ for c in callbacks] == ["TBXLoggerCallback"]


def test_credentials_in_the_tracking_uri_are_refused(monkeypatch):
    with pytest.raises(MtftError) as e:
        validate(SweepConfig, {"search": {"space": SPACE},
                               "tracking": {"mlflow": {"tracking_uri": "https://alice:s3cret@mlflow.example:5000"}}},
                 "tracked.yaml")
    assert "tracking.mlflow.tracking_uri" in str(e.value) and "MLFLOW_TRACKING_PASSWORD" in str(e.value)
    assert "s3cret" not in str(e.value) and "alice" not in str(e.value)
    # the same from MLflow's own env var
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:s3cret@127.0.0.1:5000")
    sweep = sweep_config({"mlflow": {}})
    with pytest.raises(MtftError) as e:
        check_tracking(sweep, "sweep tracked")
    assert "env MLFLOW_TRACKING_URI holds credentials" in str(e.value) and "s3cret" not in str(e.value)


def test_mlflow_uri_comes_from_the_config_then_the_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(MtftError, match=r"tracking.mlflow needs a tracking_uri \(or env MLFLOW_TRACKING_URI\)"):
        check_tracking(sweep_config({"mlflow": {"experiment": "x"}}), "sweep tracked")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    assert mlflow_uri(sweep_config({"mlflow": {}}), "w") == "http://127.0.0.1:1"
    assert mlflow_uri(sweep_config({"mlflow": {"tracking_uri": "http://h:2"}}), "w") == "http://h:2"


@pytest.mark.parametrize("doc,needle", [
    ({"mlflow": {"uri": "http://127.0.0.1:5000"}}, "unknown key 'tracking.mlflow.uri'"),
    ({"comet": {"project": "p"}}, "unknown key 'tracking.comet'"),
    ({"wandb": {"project": "p", "mode": "cloud"}}, "tracking.wandb.mode"),
    ({"wandb": {"mode": "offline"}}, "tracking.wandb.project"),
    ({"wandb": {"project": "p", "api_key": "k"}}, "unknown key 'tracking.wandb.api_key'"),
])
def test_unknown_or_bad_tracking_keys_are_refused(doc, needle):
    with pytest.raises(MtftError, match=needle.replace(".", r"\.")):
        validate(SweepConfig, {"search": {"space": SPACE}, "tracking": doc}, "tracked.yaml")


class _Answer(http.server.BaseHTTPRequestHandler):
    code = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.headers.get("Authorization"))  # type: ignore[attr-defined]
        self.send_response(self.server.code)  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(b'{"experiments": []}')

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1 answering every GET with ``server.code``."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    server.code, server.seen = 200, []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_mlflow_probe_sends_mlflow_credentials_and_reads_the_answer(http_server, monkeypatch):
    uri = f"http://127.0.0.1:{http_server.server_address[1]}"
    sweep = sweep_config({"mlflow": {"tracking_uri": uri}})
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok123")
    assert check_tracking(sweep, "sweep tracked") is not None
    assert http_server.seen == ["Bearer tok123"]
    http_server.code = 401
    with pytest.raises(MtftError, match="refused the credentials .HTTP 401.: set MLFLOW_TRACKING_TOKEN"):
        check_tracking(sweep, "sweep tracked")
    http_server.code = 404
    with pytest.raises(MtftError, match="answered HTTP 404 to MLflow's REST API"):
        check_tracking(sweep, "sweep tracked")


def test_wandb_online_needs_a_login(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    online = sweep_config({"wandb": {"project": "p"}})
    with pytest.raises(MtftError, match="W&B has no login for https://api.wandb.ai: set WANDB_API_KEY"):
        check_tracking(online, "sweep tracked")
    assert check_tracking(sweep_config({"wandb": {"project": "p", "mode": "offline"}}), "w").wandb.mode == "offline"
    dropped = check_tracking(sweep_config({"wandb": {"project": "p"}, "best_effort": True}), "sweep tracked")
    assert dropped is not None and dropped.wandb is None
    # a login in netrc, for a W&B server that is not there
    port = free_port()
    (tmp_path / "netrc").write_text("machine 127.0.0.1 login user password k3y\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(MtftError, match=f"cannot reach http://127.0.0.1:{port}") as e:
        check_tracking(online, "sweep tracked")
    assert "k3y" not in str(e.value)


def test_mlflow_names_are_names_mlflow_accepts():
    from mlflow.utils.validation import _validate_metric_name, _validate_param_name

    for key in ("tasks.domains[dom0]", "tasks.domains[Latin (alphabet)]", "finetune.lr", "a,b;c", "selection_k"):
        _validate_param_name(mlflow_name(key))
        _validate_metric_name(mlflow_name(key))
    assert mlflow_name("tasks.domains[dom0]") == "tasks.domains/dom0"


def test_a_failing_tracker_is_switched_off_under_best_effort(monkeypatch, caplog):
    from mtft_ray.sweep.trackers import MlflowTrials

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    strict = MlflowTrials(uri, "x", tags={}, subsets={}, best_effort=False)
    with pytest.raises(Exception):
        strict.setup()
    lenient = MlflowTrials(uri, "x", tags={}, subsets={}, best_effort=True)
    with caplog.at_level(logging.WARNING, logger="mtft_ray"):
        lenient.setup()
        lenient.on_trial_start(iteration=0, trials=[], trial=object())  # off: no call reaches MLflow
    assert lenient._off and len([r for r in caplog.records if "MLflow tracking failed" in r.getMessage()]) == 1


def test_module_examples():
    assert doctest.testmod(tracking).failed == 0 and doctest.testmod(trackers).failed == 0


def test_cli_refuses_an_unreachable_tracker_quickly(tmp_path):
    make_folder_tree(tmp_path / "data", domains=4, classes=4, per_class=10, size=16)
    base = yaml.safe_load(tiny_config(tmp_path, methods=["multitask"], tasks={"M": 2},
                                      eval={"shots": [1], "episodes": 10}).read_text())
    base["data"]["split"] = {"target_domains": ["dom3"], "val_domains": ["dom2"]}
    uri = f"http://127.0.0.1:{free_port()}"
    path, out = tmp_path / "tracked.yaml", tmp_path / "sw"
    path.write_text(yaml.safe_dump({"name": "tracked", "base": base,
                                    "search": {"space": SPACE, "num_samples": 2},
                                    "tracking": {"mlflow": {"tracking_uri": uri}}}))
    t0 = time.monotonic()
    r = mtft("sweep", str(path), "--out", str(out), cwd=tmp_path, timeout=120)
    seconds = time.monotonic() - t0
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr[-2000:]
    assert err[0].startswith("mtft-ray: error:") and f"MLflow at {uri} unreachable" in err[0], err
    assert not (out / "sweep.json").exists() and not [p for p in out.glob("*") if p.is_dir()]  # no trial folder
    assert seconds < 60, seconds


def test_trial_files_come_from_where_the_trial_wrote_them(tmp_path):
    from types import SimpleNamespace

    from mtft_ray.sweep.trackers import trial_files

    staging, work = tmp_path / "driver_artifacts" / "t1", tmp_path / "working_dirs" / "t1"
    (work / "run").mkdir(parents=True)
    staging.mkdir(parents=True)
    for name, data in (("result.json", b"{}"), ("manifest.json", b"[]"), ("config.yaml", b"a: 1\n"),
                       ("multitask.pt", b"x" * 100), (".mtft-lock", b"")):
        (work / "run" / name).write_bytes(data)
    trial = SimpleNamespace(local_path=str(staging), storage=SimpleNamespace(trial_working_directory=str(work)),
                            last_result={})
    assert sorted(trial_files(trial)) == ["config.yaml", "manifest.json", "result.json"]
    (staging / "run").mkdir()
    (staging / "run" / "result.json").write_bytes(b'{"staged": 1}')
    assert trial_files(trial) == {"result.json": b'{"staged": 1}'}  # get_trial_dir()'s folder first


@pytest.mark.slow
def test_run_files_are_read_on_the_node_that_ran_the_trial(tmp_path):
    import ray

    from mtft_ray.sweep.trackers import read_on_node

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "result.json").write_bytes(b'{"acc": 1}')
    ray.init(num_cpus=1, include_dashboard=False, logging_level=logging.WARNING)
    try:
        ip = ray.util.get_node_ip_address()
        assert read_on_node(ip, [str(tmp_path / "nope"), str(tmp_path / "run")]) == {"result.json": b'{"acc": 1}'}
        with pytest.raises(Exception):  # no such node: nothing can run there
            read_on_node("10.255.255.1", [str(tmp_path / "run")], timeout=3)
    finally:
        ray.shutdown()
