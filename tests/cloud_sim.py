"""Streamlit Community Cloud, simulated on this machine: a fresh venv from requirements.txt alone,
the app served from it inside a memory cgroup of Cloud's size, and a headless Chromium to open it.

Used by ``tests/test_cloud.py`` (and its figures). The cgroup is the v1 memory controller
(``/sys/fs/cgroup/memory``), which needs root; without it the test is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLOUD_LIMIT = int(2.7 * 2**30)  # Streamlit Community Cloud's memory cap, about 2.7 GB
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def cgroup_problem() -> str | None:
    """Why a memory cgroup cannot be made here (None when it can)."""
    if os.geteuid() != 0:
        return "making a memory cgroup needs root"
    if not (CGROUP_V1 / "cgroup.procs").exists():
        return f"the cgroup v1 memory controller is not mounted at {CGROUP_V1}"
    return None


class MemoryCgroup:
    """A child memory cgroup with a hard limit; processes started by :meth:`popen` live in it."""

    def __init__(self, limit_bytes: int = CLOUD_LIMIT):
        self.path = CGROUP_V1 / f"tunelab-cloud-{uuid.uuid4().hex[:8]}"
        self.path.mkdir()
        (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        self.limit = int((self.path / "memory.limit_in_bytes").read_text())

    def popen(self, cmd, **kwargs) -> subprocess.Popen:
        procs = str(self.path / "cgroup.procs")

        def enter():  # in the child, before exec: everything it starts inherits the cgroup
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        return subprocess.Popen(cmd, preexec_fn=enter, start_new_session=True, **kwargs)

    def peak(self) -> int:
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def failcnt(self) -> int:
        """How often the limit was hit (the kernel reclaimed or refused memory)."""
        return int((self.path / "memory.failcnt").read_text())

    def close(self) -> None:
        for _ in range(50):
            pids = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        try:
            self.path.rmdir()
        except OSError:
            pass


def thin_venv(cache: Path | None = None) -> tuple[Path, float]:
    """A venv with requirements.txt alone, as Cloud builds it; reused while requirements.txt is unchanged.

    Returns ``(venv, seconds it took to build; 0 when reused)``.
    """
    digest = hashlib.sha256((REPO / "requirements.txt").read_bytes()).hexdigest()[:12]
    root = Path(cache or os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")
    venv = root / f"thin-venv-{digest}"
    if (venv / ".complete").exists():
        return venv, 0.0
    shutil.rmtree(venv, ignore_errors=True)
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(REPO / "requirements.txt")], check=True)
    (venv / ".complete").write_text(digest)
    return venv, time.time() - t0


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file() and not f.is_symlink())


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> float:
    """Seconds until Streamlit's health endpoint answers; raises with the log's tail if it never does."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return time.time() - t0
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise RuntimeError("streamlit did not start:\n" + log.read_text(errors="replace")[-3000:])


def serve_thin_app(venv: Path, home: Path, runs_dir: Path, port: int, cgroup: MemoryCgroup,
                   secrets: dict) -> tuple[subprocess.Popen, Path]:
    """``streamlit run streamlit_app.py`` from the thin venv, in the cgroup, with ``secrets`` as
    ``~/.streamlit/secrets.toml`` (a fresh HOME: nothing of this machine's set-up leaks in)."""
    (home / ".streamlit").mkdir(parents=True, exist_ok=True)
    lines = [f"[{table}]" + "".join(f'\n{k} = "{v}"' for k, v in values.items()) for table, values in secrets.items()]
    (home / ".streamlit" / "secrets.toml").write_text("\n\n".join(lines) + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(home), "HF_HUB_OFFLINE": "1",
           "TUNELAB_RUNS_DIR": str(runs_dir), "TUNELAB_HOME": str(home / "tunelab"), "LANG": "C.UTF-8"}
    log = home / "streamlit.log"
    proc = cgroup.popen([str(venv / "bin" / "python"), "-m", "streamlit", "run", "streamlit_app.py",
                         "--server.headless", "true", "--server.port", str(port), "--server.fileWatcherType", "none",
                         "--browser.gatherUsageStats", "false"],
                        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, log


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            pass
    return total
