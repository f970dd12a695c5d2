"""A Ray head of our own on 127.0.0.1 for the job tests: free ports, a short temp dir, and a stop
that ends exactly the processes it started (never ``ray stop``, which would end everyone's Ray)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import requests

PORT_FLAGS = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "metrics-export-port", "node-manager-port", "object-manager-port",
              "runtime-env-agent-port")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHead:
    """``ray start --head --block`` in its own session, every port on 127.0.0.1."""

    def __init__(self, num_cpus: int = 2, resources: str = '{"TRAIN_DRIVER": 1}') -> None:
        self.ports = {flag: free_port() for flag in PORT_FLAGS}
        self.temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # short: Unix socket paths are limited
        self.address = f"http://127.0.0.1:{self.ports['dashboard-port']}"
        self.log = Path(self.temp_dir) / "head.log"
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
               "HF_HUB_OFFLINE": "1"}
        env.pop("RAY_ADDRESS", None)
        cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", f"--num-cpus={num_cpus}", f"--resources={resources}",
               f"--temp-dir={self.temp_dir}", "--disable-usage-stats", "--block",
               *(f"--{flag}={port}" for flag, port in self.ports.items())]
        with open(self.log, "w") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        """Until the job server answers and its agent accepts jobs (a list of jobs comes back)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if requests.get(f"{self.address}/api/jobs/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Ray head not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def processes(self) -> list[psutil.Process]:
        """Our head and everything below it, plus any process naming our temp dir (reparented workers)."""
        found: dict[int, psutil.Process] = {}
        try:
            root = psutil.Process(self.proc.pid)
            found = {p.pid: p for p in [root, *root.children(recursive=True)]}
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter(["cmdline"]):
            try:
                if p.pid not in found and any(self.temp_dir in a for a in p.info["cmdline"] or []):
                    found[p.pid] = p
            except psutil.Error:
                continue
        return list(found.values())

    def stop(self) -> list[int]:
        """Stop exactly our processes; the pids still alive afterwards (none, normally).

        SIGTERM to ``ray start --block`` shuts its processes down in order (about a second);
        whatever outlives that (workers in groups of their own, `ray start` itself, which lingers)
        gets SIGTERM, then SIGKILL. Nothing outside :meth:`processes` is signalled.
        """
        procs = self.processes()
        others = [p for p in procs if p.pid != self.proc.pid]
        if self.proc.poll() is None:
            self.proc.terminate()
        _wait(others, 10)
        for sig, timeout in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            alive = [p for p in procs if _alive(p)]
            for p in alive:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            _wait(alive, timeout)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        left = [p.pid for p in procs if _alive(p)]
        if not left:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


def _wait(procs: list[psutil.Process], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in procs):
        time.sleep(0.2)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
