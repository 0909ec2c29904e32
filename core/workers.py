"""The run's worker process: one per run, its lock, its launch and its stop.

A worker holds its run's ``worker.lock`` (``fcntl.flock``) before it writes anything, so a second
``train --run-dir`` or ``resume`` on a live run is refused at once, and signals go only to the pid
that holds it (verified by :func:`worker_pid`). :func:`launch` takes the lock first and hands it to
the child (a fresh ``python -m tunelab`` process, or the standby worker started ahead through
:mod:`tunelab.core.standby`), so there is no moment between two launches where both could start a worker.
The run store (:mod:`tunelab.core.runs`) only *reads* the lock, to tell a live worker from a dead one.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from . import standby
from .errors import UserError
from .paths import REPO_ROOT
from .runs import (ACTIVE, LOCK_NAME, read_json, valid_pid, create_run, now, pid_alive, read_status,
                   worker_alive, write_status)

LOCK_FD_ENV = "TUNELAB_WORKER_LOCK_FD"  # launch() hands its lock to the worker through this fd
EXIT_GRACE_S = 20.0
_held_locks: list[int] = []  # lock fds this process keeps open (= holds) until it exits


def hold(fd: int) -> None:
    """Keep ``fd`` (a lock this process took) open until the process exits; the OS then lets go."""
    _held_locks.append(fd)


# -- one worker per run: worker.lock -------------------------------------------------------------
def take_lock(fd: int, attempts: int = 10) -> bool:
    """Take an exclusive flock without waiting for a holder. A reader's probe (:func:`tunelab.core.runs.lock_held`)
    holds a shared lock for microseconds, so a few quick retries tell it from a live worker."""
    for i in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if i < attempts - 1:
                time.sleep(0.03)
    return False


def _lock_run(fd: int, run_dir: Path) -> bool:
    """:func:`_lock` for a run's worker.lock. A worker that has written its final state is
    exiting (saving, tearing torch down): wait for it a little rather than refuse."""
    if take_lock(fd):
        return True
    state = (read_json(Path(run_dir) / "status.json") or {}).get("state")
    if state in ACTIVE:
        return False
    deadline = time.time() + EXIT_GRACE_S
    while time.time() < deadline:
        if take_lock(fd, attempts=1):
            return True
        time.sleep(0.1)
    return False


def write_lock_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)



def worker_pid(run_dir) -> int | None:
    """The pid of this run's live worker, verified, or None: what it is safe to signal.

    Verified three ways: ``worker.lock`` is held, it names the pid (> 1), and that process's
    command line is TuneLab's (:func:`is_tunelab_command`) naming this run's folder. A pid written into
    ``status.json`` (a crafted ``-1`` would signal every process) is never trusted alone.
    """
    run_dir = Path(run_dir).resolve()
    if not worker_alive(run_dir):
        return None
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if not valid_pid(pid) or not pid_alive(pid):
        return None
    return pid if _is_worker_of(pid, run_dir) else None


def is_tunelab_command(cmdline: list[str]) -> bool:
    """Whether a process's command line is TuneLab's CLI: ``python -m tunelab ...`` (``tunelab.core``
    too) from a checkout, or the ``tunelab`` script an install puts on the PATH."""
    return any(arg in ("tunelab", "tunelab.core") or Path(arg).name == "tunelab" for arg in cmdline[:4])


def _is_worker_of(pid: int, run_dir: Path) -> bool:
    try:
        proc = psutil.Process(pid)
        cmdline, cwd = proc.cmdline(), Path(proc.cwd())
    except (psutil.Error, OSError):
        return False
    if not is_tunelab_command(cmdline):
        return False
    if "standby" in cmdline:  # started ahead (core.standby): it holds this run's lock open
        return _holds_open(proc, run_dir / LOCK_NAME)
    for arg in cmdline:
        path = (cwd / arg).resolve() if arg and not arg.startswith("-") else None
        if path is not None and (path == run_dir or run_dir in path.parents):
            return True
    return False


def _holds_open(proc, path: Path) -> bool:
    try:
        return any(Path(f.path) == path for f in proc.open_files())
    except (psutil.Error, OSError):
        return False


def claim_worker(run_dir) -> bool:
    """Make this process the run's one worker, for as long as it lives; UserError if another is.

    Takes ``worker.lock`` (or adopts the one :func:`launch` took and passed down) and keeps
    it open until the process exits, when the OS releases it - a ``kill -9`` included.
    Returns True when the lock came from :func:`launch`. Only the main process of a
    data-parallel group started by ``torchrun`` takes it (a Ray Train group's driver holds it for every rank).
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK_NAME
    inherited = os.environ.pop(LOCK_FD_ENV, None)
    if inherited:
        fd = int(inherited)
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise OSError("not this run's lock")
        except OSError:
            inherited = None  # not ours (another run's, or closed): take the lock ourselves
        else:
            os.set_inheritable(fd, False)  # our own subprocesses must not keep the run locked
    if not inherited:
        if os.environ.get("RANK", "0") != "0":
            return False  # rank 0 holds the lock for the whole multi-GPU run
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _lock_run(fd, run_dir):
            os.close(fd)
            raise UserError(_busy(run_dir))
    write_lock_pid(fd, os.getpid())
    hold(fd)
    return bool(inherited)


def _busy(run_dir: Path) -> str:
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    who = f" (pid {pid})" if pid else ""
    return (f"run {run_dir.name} already has a live worker{who}; wait for it to end, or stop it with "
            f"`python -m tunelab stop {run_dir}` and then resume it")



def launch(run_dir, resume: bool = False) -> int:
    """Start the training worker as its own process (and session): a closed tab or a Streamlit
    rerun must not stop it. Its output goes to ``log.txt``. Returns the pid.

    Takes the run's ``worker.lock`` first (UserError if a worker holds it) and hands it to the
    child, so there is no moment between two launches where both could start a worker.
    """
    run_dir = Path(run_dir).resolve()
    read_status(run_dir)  # a run folder, or a clear error
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _lock_run(fd, run_dir):
            raise UserError(_busy(run_dir))
        (run_dir / "STOP").unlink(missing_ok=True)
        # before the child exists: afterwards only the worker writes its state
        write_status(run_dir, state="queued", pid=None, error=None, slot=None, queued_at=None,
                     waiting_for=None, launched_at=now())
        cmd = [sys.executable, "-m", "tunelab", "resume" if resume else "train"]
        cmd += [str(run_dir)] if resume else [str(run_dir / "config.yaml"), "--run-dir", str(run_dir)]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{LOCK_FD_ENV: str(fd)})
        with (run_dir / "log.txt").open("a", encoding="utf-8") as log:  # the child keeps its own copy
            pid = standby.hand_over(cmd[3:], fd, log.fileno())  # a worker started ahead, if one waits
            if pid is None:
                proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,),
                                        stdin=subprocess.DEVNULL, start_new_session=True, env=env)
                if standby.enabled():
                    standby.watch(proc)  # reaped when it exits, then a standby for the next Start
                pid = proc.pid
        write_lock_pid(fd, pid)
    finally:
        os.close(fd)  # the child's copy keeps the lock held
    return pid


def start(config, name: str | None = None, root=None, owner: str | None = None) -> Path:
    """Create a run and launch its worker: what the Fine-tune page's Start button does."""
    run_dir = create_run(config, name, root, owner=owner)
    try:
        launch(run_dir)
    except OSError as exc:
        write_status(run_dir, state="failed", error=f"could not start the worker: {exc}")
        raise UserError(f"could not start the training worker: {exc}") from None
    return run_dir


def request_stop(run_dir) -> None:
    """Ask the worker to save a checkpoint and stop (it checks after every optimizer step;
    a queued worker stops waiting at once).

    Only a STOP file and SIGTERM, and the signal only to the verified live worker
    (:func:`worker_pid`): the worker itself writes the final state, so a reader
    never sees a stop request overwrite a run that has just finished.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") not in ACTIVE:
        raise UserError(f"run {run_dir.name} is not running (state: {status.get('state')})")
    pid = status.get("pid")
    if not worker_alive(run_dir) and not (valid_pid(pid) and pid_alive(pid)):
        write_status(run_dir, state="stopped")  # no worker started yet: nothing to wait for
        return
    (run_dir / "STOP").write_text(now())
    worker = worker_pid(run_dir)
    if worker is not None:
        try:
            os.kill(worker, signal.SIGTERM)
        except OSError:
            pass
