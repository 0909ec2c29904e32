"""A training worker started before Start is pressed, so the first loss point comes seconds sooner.

A fresh worker (``python -m tunelab train``) spends its first seconds importing torch,
transformers and the model code before it reads a single example. The dashboard's engine starts
one *standby* worker ahead (:func:`prestart`): ``python -m tunelab standby`` does those imports
and waits (its half of the hand-over is ``cmd_standby`` in ``core/__main__.py``). :func:`hand_over`
(called by ``tunelab.core.workers.launch``) gives it a run over a socket
pair, passing the run's ``worker.lock`` and ``log.txt`` descriptors, so the lock never leaves a
holder; the standby then runs ``python -m tunelab train|resume`` for that run, in its own process,
exactly as a fresh worker would. The next standby starts when that worker exits.

A standby that is not ready yet is not waited for (a fresh worker starts instead). It exits on
its own when the process that started it exits, or after ``TUNELAB_STANDBY_IDLE_S`` seconds
(default 1800) unused; the engine starts another when no worker of its own is running
(:func:`prestart_if_idle`). The run gets its starter's environment as it is at Start; if one of
the variables read when torch and transformers are imported (:data:`IMPORT_TIME`) has changed
since the standby started, the standby is replaced rather than used. ``TUNELAB_STANDBY=0`` turns
standbys off (the test suite does, but for its own tests of them).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from .paths import REPO_ROOT

HANDOVER_TIMEOUT_S = 10.0
# Read once, when torch, transformers or their libraries are imported: a standby started under other
# values cannot take them on later (anything else is handed over with the run).
IMPORT_TIME = ("OMP_", "MKL_", "KMP_", "GOMP_", "CUDA_", "NCCL_", "PYTORCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_",
               "LD_", "PYTHON", "MALLOC_", "GLIBC_")
_lock = threading.RLock()  # hand_over calls watch() while holding it
_current = None  # this process's waiting standby: {"proc", "sock", "env", "ready"}
_running = 0  # workers this process launched that are still alive
_last_start = 0.0  # when prestart last started a standby
RETRY_S = 60.0


def _import_env() -> dict:
    return {k: v for k, v in os.environ.items() if k.startswith(IMPORT_TIME)}


def enabled() -> bool:
    """Whether this process keeps a standby worker (``TUNELAB_STANDBY``, default on)."""
    return os.environ.get("TUNELAB_STANDBY", "1").strip().lower() not in ("0", "false", "no", "off")


def prestart() -> None:
    """Start a standby worker for this process, unless one is waiting or standbys are off."""
    global _current, _last_start
    with _lock:
        if not enabled() or _usable(_current):
            return
        _discard()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen([sys.executable, "-m", "tunelab", "standby", "--fd", str(theirs.fileno())],
                                    cwd=REPO_ROOT, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"))
        except OSError:
            ours.close()
            return  # no standby: Start launches a fresh worker, as without one
        finally:
            theirs.close()
        _last_start = time.time()
        _current = {"proc": proc, "sock": ours, "env": _import_env(), "ready": False}


def hand_over(argv: list[str], lock_fd: int, log_fd: int) -> int | None:
    """Give ``python -m tunelab <argv>`` to the waiting standby; its pid, or None (launch a fresh worker).

    ``lock_fd`` (the run's held ``worker.lock``) and ``log_fd`` go with it; the caller closes
    its own copies afterwards, as it does after starting a fresh worker.
    """
    global _current
    with _lock:
        standby, _current = _current, None
        if not _usable(standby) or not _ready(standby):
            _current = standby if _usable(standby) else _discard(standby)
            return None
        sock = standby["sock"]
        try:
            socket.send_fds(sock, [json.dumps({"argv": argv, "env": dict(os.environ)}).encode()], [lock_fd, log_fd])
            sock.settimeout(HANDOVER_TIMEOUT_S)
            answer = sock.recv(64).decode()
        except OSError:
            answer = ""
        if not answer.startswith("ok "):
            # Killed and waited for before a fresh worker starts: a late standby must never run too.
            standby["proc"].kill()
            standby["proc"].wait()
            sock.close()
            return None
        sock.close()
        watch(standby["proc"])
        return int(answer.split()[1])


def watch(proc) -> None:
    """Count ``proc`` (a worker this process launched) as running until it exits, then start the next
    standby: importing torch beside a training worker would take CPU from its first steps (on 2
    cores, 2-3 s later to the first loss)."""
    global _running
    with _lock:
        _running += 1

    def wait_then_prestart():
        global _running
        proc.wait()
        with _lock:
            _running -= 1
        if not _running:
            prestart()

    threading.Thread(target=wait_then_prestart, daemon=True).start()


def prestart_if_idle() -> None:
    """:func:`prestart`, unless a worker this process launched is still running (the engine calls
    this as it lists runs, so a standby that timed out or died is replaced) or one was started in
    the last minute (a standby that cannot start must not be retried at every page refresh)."""
    if not _running and time.time() - _last_start >= RETRY_S:
        prestart()


def ready() -> bool:
    """Whether a standby is waiting, its imports done: the next Start would use it."""
    with _lock:
        return _usable(_current) and _ready(_current)


def _usable(standby) -> bool:
    return bool(standby) and standby["proc"].poll() is None and standby["env"] == _import_env()


def _ready(standby) -> bool:
    """Whether the standby has said it finished its imports (never blocks)."""
    if not standby["ready"]:
        sock = standby["sock"]
        try:
            sock.setblocking(False)  # not select(): a long-lived server's descriptors pass 1024
            standby["ready"] = sock.recv(16) == b"ready\n"
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False
        finally:
            sock.setblocking(True)
    return standby["ready"]


def _discard(standby=None) -> None:
    """Stop a standby that will not be used (by default this process's current one)."""
    global _current
    if standby is None:
        standby, _current = _current, None
    if standby:
        standby["sock"].close()  # the standby sees the socket close and exits on its own
        threading.Thread(target=_reap, args=(standby["proc"],), daemon=True).start()
    return None


def _reap(proc) -> None:
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
