"""A real Ray head on 127.0.0.1 with token auth, for the Ray backend's tests (and its figures).

Every port is a free one and the temp dir is private, so the head never collides with another
Ray on the machine; it is stopped by killing the process tree it started (never ``ray stop``,
which would stop every Ray of this user).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from tunelab.core.workers import is_tunelab_command

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_range_start(taken: set[int], width: int = 201) -> int:
    """The first of ``width`` worker ports clear of every port already chosen (Ray refuses overlaps)."""
    while True:
        low = min(free_port(), 65535 - width)
        if not any(low <= port < low + width for port in taken):
            return low


def _tree(pid: int) -> list:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class RayHead:
    """``ray start --head --block`` in its own session; ``address`` is the jobs/dashboard URL."""

    def __init__(self, num_cpus: int = 2, object_store_bytes: int = 80 * 2**20, env: dict | None = None):
        self.token = secrets.token_hex(32)
        self.temp = Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp"))  # short: Unix socket paths <108 chars
        self.dashboard_port = free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        ports = {"--port": free_port(), "--dashboard-port": self.dashboard_port,
                 "--object-manager-port": free_port(), "--node-manager-port": free_port(),
                 "--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--metrics-export-port": free_port()}
        low = _worker_range_start(set(ports.values()))
        self.cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
                    "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                    "--num-cpus", str(num_cpus), "--num-gpus", "0", "--object-store-memory", str(object_store_bytes),
                    "--temp-dir", str(self.temp), "--disable-usage-stats",
                    "--min-worker-port", str(low), "--max-worker-port", str(low + 200)]
        for flag, port in ports.items():
            self.cmd += [flag, str(port)]
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                        RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}:{os.environ.get('PATH', '')}", **(env or {}))
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)
        self.proc = None
        self.start_s = None
        self.peak_rss = 0
        self.peak_rss_head = 0

    def start(self, timeout: float = 120) -> "RayHead":
        t0 = time.time()
        self.log = open(self.temp / "head.log", "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.tail()}")
            if self._jobs_api_ready():
                self.start_s = time.time() - t0
                threading.Thread(target=self._watch_memory, daemon=True).start()
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not answer within {timeout} s: {self.tail()}")

    def _jobs_api_ready(self) -> bool:
        request = urllib.request.Request(f"{self.address}/api/jobs/",
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                return r.status == 200
        except Exception:
            return False

    def sample_rss(self) -> int:
        """RSS of the head's whole process tree now (jobs' TuneLab workers included); the peaks seen
        so far are kept, with and without those workers."""
        procs = _tree(self.proc.pid) if self.proc else []
        total = own = 0
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                worker = is_tunelab_command(proc.cmdline())
            except Exception:  # exited between listing and reading
                continue
            total += rss
            own += 0 if worker else rss
        self.peak_rss = max(self.peak_rss, total)
        self.peak_rss_head = max(self.peak_rss_head, own)
        return total

    def _watch_memory(self, every: float = 0.5) -> None:
        while self.proc is not None:
            try:
                self.sample_rss()
            except Exception:  # the head is being stopped
                return
            time.sleep(every)

    def tail(self, n: int = 4000) -> str:
        try:
            return (self.temp / "head.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        procs = _tree(self.proc.pid)  # before the group signal: workers may have their own session
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except OSError:
            pass
        try:  # a test head keeps nothing worth a graceful shutdown: a few seconds, then SIGKILL
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
        for proc in procs:
            try:
                proc.kill()
            except Exception:  # already gone
                pass
        self.log.close()
        self.proc = None
        shutil.rmtree(self.temp, ignore_errors=True)


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) spent so far by a process tree's live processes."""
    total = 0.0
    for proc in _tree(pid):
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except Exception:  # exited between listing and reading
            pass
    return total


if __name__ == "__main__":  # figures: .venv/bin/python tests/ray_head.py
    head = RayHead().start()
    print(f"head up in {head.start_s:.1f} s at {head.address} ({tree_cpu_s(head.proc.pid):.1f} CPU s so far); "
          f"tree RSS {head.sample_rss() / 2**20:.0f} MiB")
    time.sleep(5)
    print(f"after 5 s idle: tree RSS {head.sample_rss() / 2**20:.0f} MiB (peak {head.peak_rss / 2**20:.0f} MiB)")
    head.stop()
