"""The run store: one folder per run, readable by the dashboard, the CLI and a remote job's log.

``runs/<id>/``::

    config.yaml        the RunConfig this run trains with
    status.json        state (queued | running | stopping | stopped | finished | failed), error, pid, step, total_steps;
                       owner (the session that started it), queued_at / waiting_for / slot (the queue),
                       memory_need (the estimate the queue admitted it by); readers add queue_ahead
    metrics.jsonl      one JSON object per event: step, epoch, loss, lr, grad_norm, tokens_per_s, elapsed_s;
                       evaluation rows carry eval_loss
    log.txt            the worker's stdout and stderr
    checkpoints/step-N/  trainable weights, optimizer, scheduler, RNG and data position
    final/             the trained model (from_pretrained-able), or the LoRA adapter folder
    STOP               present = please stop (written by ``stop``)
    worker.lock        flock-ed by the run's one live worker for its whole life (the OS lets go
                       when it dies, however it dies); holds the worker's pid as text

Every write is atomic (temp file + rename) or append-only, so a reader never
sees half a file and a killed worker never corrupts what is already saved.

One worker per run: a worker holds ``worker.lock`` (``fcntl.flock``) before it writes
anything, so a second ``train --run-dir`` or ``resume`` on a live run is refused at once,
and signals go only to the pid that holds it. Runs beyond the machine's capacity wait
in ``queued`` (see ``core/queue.py``). In a shared deployment (``TUNELAB_SHARED=1``)
only the session that started a run may stop or resume it (:func:`can_control`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import standby
from .errors import UserError
from .paths import REPO_ROOT, runs_root

ACTIVE = ("queued", "running", "stopping")
LOCK_NAME = "worker.lock"
LOCK_FD_ENV = "TUNELAB_WORKER_LOCK_FD"  # launch() hands its lock to the worker through this fd
EXIT_GRACE_S = 20.0
_held_locks: list[int] = []  # lock fds this process keeps open (= holds) until it exits


def safe_run_id(name: str | None = None) -> str:
    """A folder name from whatever a user typed: lowercase ASCII words joined by '-', plus a time stamp."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:40]
    return f"{slug}-{stamp}" if slug else f"run-{stamp}"


def create_run(config, name: str | None = None, root=None, run_dir=None, owner: str | None = None) -> Path:
    """Make a run folder with ``config.yaml`` and a queued status. Returns its path.

    Without ``run_dir`` the folder is new: ``os.mkdir`` fails if it exists, so two runs
    started in the same second (same name, same time stamp) get ``name`` and ``name-2``,
    never one folder between them. ``owner`` (a session id) is recorded for :func:`can_control`.
    """
    if run_dir is None:
        root = Path(root or runs_root())
        root.mkdir(parents=True, exist_ok=True)
        run_id = safe_run_id(name)
        for n in itertools.count(1):
            run_dir = root / (run_id if n == 1 else f"{run_id}-{n}")
            try:
                run_dir.mkdir()
                break
            except FileExistsError:
                continue
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", config.to_yaml())
    if not (run_dir / "status.json").exists():
        write_status(run_dir, state="queued", step=0, total_steps=None, error=None, pid=None, owner=owner,
                     created=time.time())
    return run_dir


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def write_status(run_dir, **fields) -> dict:
    """Merge ``fields`` into ``status.json`` (atomically)."""
    path = Path(run_dir) / "status.json"
    status = _read_json(path) or {}
    status.update(fields, updated_at=now())
    write_atomic(path, json.dumps(status, indent=2))
    return status


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_alive(pid) -> bool:
    """Whether ``pid`` names a running (not zombie) process. Refuses non-ints and pids <= 1."""
    if not _valid_pid(pid):
        return False
    try:
        os.kill(int(pid), 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _valid_pid(pid) -> bool:
    # 0, -1 and negative pids signal process groups or every process: never a worker's pid
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 1


# -- one worker per run: worker.lock -------------------------------------------------------------
def _lock(fd: int, attempts: int = 10) -> bool:
    """Take an exclusive flock without waiting for a holder. A reader's probe (:func:`worker_alive`)
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
    if _lock(fd):
        return True
    state = (_read_json(Path(run_dir) / "status.json") or {}).get("state")
    if state in ACTIVE:
        return False
    deadline = time.time() + EXIT_GRACE_S
    while time.time() < deadline:
        if _lock(fd, attempts=1):
            return True
        time.sleep(0.1)
    return False


def _write_lock_pid(fd: int, pid: int) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid}\n".encode(), 0)


def worker_alive(run_dir) -> bool:
    """Whether some process holds the run's ``worker.lock`` (a live worker, queued or training)."""
    try:
        fd = os.open(Path(run_dir) / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def worker_pid(run_dir) -> int | None:
    """The pid of this run's live worker, verified, or None: what it is safe to signal.

    Verified three ways: ``worker.lock`` is held, it names the pid (> 1), and that process's
    command line is ``... core ...`` naming this run's folder. A pid written into
    ``status.json`` (a crafted ``-1`` would signal every process) is never trusted alone.
    """
    run_dir = Path(run_dir).resolve()
    if not worker_alive(run_dir):
        return None
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if not _valid_pid(pid) or not pid_alive(pid):
        return None
    return pid if _is_worker_of(pid, run_dir) else None


def _is_worker_of(pid: int, run_dir: Path) -> bool:
    import psutil

    try:
        proc = psutil.Process(pid)
        cmdline, cwd = proc.cmdline(), Path(proc.cwd())
    except (psutil.Error, OSError):
        return False
    if "core" not in cmdline:  # python -m core ... / accelerate launch -m core ...
        return False
    if "standby" in cmdline:  # started ahead (core.standby): it holds this run's lock open
        return _holds_open(proc, run_dir / LOCK_NAME)
    for arg in cmdline:
        path = (cwd / arg).resolve() if arg and not arg.startswith("-") else None
        if path is not None and (path == run_dir or run_dir in path.parents):
            return True
    return False


def _holds_open(proc, path: Path) -> bool:
    import psutil

    try:
        return any(Path(f.path) == path for f in proc.open_files())
    except (psutil.Error, OSError):
        return False


def claim_worker(run_dir) -> bool:
    """Make this process the run's one worker, for as long as it lives; UserError if another is.

    Takes ``worker.lock`` (or adopts the one :func:`launch` took and passed down) and keeps
    it open until the process exits, when the OS releases it - a ``kill -9`` included.
    Returns True when the lock came from :func:`launch`. Only the main process of a
    multi-process (``accelerate launch``) run takes it.
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
    _write_lock_pid(fd, os.getpid())
    _held_locks.append(fd)
    return bool(inherited)


def _busy(run_dir: Path) -> str:
    try:
        pid = int((run_dir / LOCK_NAME).read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    who = f" (pid {pid})" if pid else ""
    return (f"run {run_dir.name} already has a live worker{who}; wait for it to end, or stop it with "
            f"`python -m core stop {run_dir}` and then resume it")


def _same_process(pid: int, started_at: str | None) -> bool:
    """False when ``pid`` is a newer process that reused the number of the one that wrote it."""
    if not started_at:
        return True
    import psutil

    try:
        created = psutil.Process(pid).create_time()
        return created <= dt.datetime.fromisoformat(started_at).timestamp() + 2
    except (psutil.Error, ValueError):
        return False


def read_status(run_dir, waiters=None) -> dict:
    """The run's status as a reader should see it.

    Only the worker writes ``state``; this adds what it cannot say itself: ``stopping``
    while a STOP file waits for it, ``failed`` when its process is gone (killed,
    crashed) or never started, and ``queue_ahead`` (see :func:`queue_position`) while queued.
    ``waiters`` is :func:`waiting_runs` computed once by a caller reading many runs.
    """
    run_dir = Path(run_dir)
    status = _read_json(run_dir / "status.json")
    if status is None:
        raise UserError(f"{run_dir} is not a run folder (no status.json)")
    checkpoint = latest_checkpoint(run_dir)
    if status.get("state") in ACTIVE and "remote" not in status:  # a mirrored remote run's worker is elsewhere
        pid, alive = status.get("pid"), worker_alive(run_dir)
        if not alive and _valid_pid(pid):  # a train() called in-process holds no lock
            alive = pid_alive(pid) and _same_process(pid, status.get("started_at"))
        age = (dt.datetime.now() - dt.datetime.fromisoformat(status.get("updated_at", now()))).total_seconds()
        # launch() holds the lock from before it writes launched_at until its worker exits
        launched = status.get("launched_at") and not pid
        if not alive and (pid or launched or age > 120):
            where = (f"`python -m core resume {run_dir}` continues from the last checkpoint ({checkpoint.name})"
                     if checkpoint else "no checkpoint was saved (set save_every to keep some), so "
                     f"`python -m core resume {run_dir}` starts again from step 0")
            why = ("ended without finishing (killed or crashed)" if pid else
                   "ended before training started (its log.txt says why)" if launched else "never started")
            status.update(state="failed", interrupted=True, error=f"interrupted: the worker process {why}; {where}.")
        elif status["state"] == "running" and (run_dir / "STOP").exists():
            status["state"] = "stopping"
    status["run_id"] = run_dir.name
    status["checkpoint"] = str(checkpoint) if checkpoint else None
    status["queue_ahead"] = queue_position(run_dir, status, waiters) if status["state"] == "queued" else None
    return status


# -- the queue: who waits ahead of whom ---------------------------------------------------------
def waiting_runs(root) -> list[tuple[float, str]]:
    """``(queued_at, run folder name)`` of every run in ``root`` whose live worker waits for a slot,
    first in line first. A worker that died while waiting holds no lock and is not counted."""
    out = []
    for path in Path(root).glob("*/status.json"):
        status = _read_json(path)
        if (status and status.get("state") == "queued" and status.get("queued_at") is not None
                and status.get("slot") is None and worker_alive(path.parent)):
            out.append((float(status["queued_at"]), path.parent.name))
    return sorted(out)


def queue_position(run_dir, status=None, waiters=None) -> int | None:
    """How many runs wait ahead of this one ("queued, N ahead"); None when it is not waiting.

    0 means next in line (it starts when a slot frees). FIFO by the time each worker
    joined the queue. A queued run whose worker has not joined yet counts everyone waiting.
    """
    run_dir = Path(run_dir)
    status = status or _read_json(run_dir / "status.json") or {}
    if status.get("state") != "queued" or status.get("slot") is not None:
        return None
    waiters = waiting_runs(run_dir.parent) if waiters is None else waiters
    mine = next((i for i, (_, name) in enumerate(waiters) if name == run_dir.name), None)
    return len(waiters) if mine is None else mine


# -- whose run it is -----------------------------------------------------------------------------
def shared_deployment() -> bool:
    """``TUNELAB_SHARED=1``: many people share this server (single-user, the laptop default, otherwise)."""
    return os.environ.get("TUNELAB_SHARED", "").strip() == "1"


def can_control(run_dir, owner: str | None) -> bool:
    """Whether session ``owner`` may stop or resume this run: anyone on a single-user install;
    in a shared deployment, only the session recorded as its owner by :func:`create_run`."""
    if not shared_deployment():
        return True
    status = _read_json(Path(run_dir) / "status.json") or {}
    return owner is not None and status.get("owner") == owner


def check_control(run_dir, owner: str | None, verb: str = "control") -> None:
    """:func:`can_control` or a UserError that says why."""
    if not can_control(run_dir, owner):
        raise UserError(f"run {Path(run_dir).name} was started by another session; on this shared server "
                        f"only the session that started a run can {verb} it (start your own run instead)")


def parse_metrics_lines(lines) -> list[dict]:
    """Metrics rows from JSON lines; anything else (log text, a half-written last line) is skipped.

    The same parser reads ``metrics.jsonl`` and a remote job's stdout.
    """
    rows = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return parse_metrics_lines(f)


def append_metrics(run_dir, row: dict) -> None:
    with (Path(run_dir) / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(run_dir, after_step: int) -> None:
    """Drop rows past ``after_step`` (written after the checkpoint a resume starts from)."""
    rows = [r for r in read_metrics(run_dir) if r["step"] <= after_step]
    write_atomic(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def checkpoints(run_dir) -> list[Path]:
    """Complete checkpoints (``step-N`` with its state file), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = [p for p in folder.glob("step-*") if re.fullmatch(r"step-\d+", p.name)
             and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_partial_checkpoints(run_dir) -> None:
    """Drop ``step-N.tmp`` folders a worker killed in the middle of saving left behind."""
    import shutil

    for partial in (Path(run_dir) / "checkpoints").glob("step-*.tmp"):
        shutil.rmtree(partial, ignore_errors=True)


def latest_checkpoint(run_dir) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_config(run_dir):
    from .config import load_config as _load

    return _load(Path(run_dir) / "config.yaml")


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
        cmd = [sys.executable, "-m", "core", "resume" if resume else "train"]
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
        _write_lock_pid(fd, pid)
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
    if not worker_alive(run_dir) and not (_valid_pid(pid) and pid_alive(pid)):
        write_status(run_dir, state="stopped")  # no worker started yet: nothing to wait for
        return
    (run_dir / "STOP").write_text(now())
    worker = worker_pid(run_dir)
    if worker is not None:
        try:
            os.kill(worker, signal.SIGTERM)
        except OSError:
            pass


def list_runs(root=None) -> list[dict]:
    """Every run (newest first) with its status and a few config values."""
    root = Path(root or runs_root())
    out, waiters = [], waiting_runs(root)
    for run_dir in sorted(root.glob("*/status.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            status = read_status(run_dir.parent, waiters)
        except UserError:
            continue
        status["run_dir"] = str(run_dir.parent)
        out.append(status)
    return out


def progress(run_dir) -> dict:
    """Status plus what a progress bar needs: fraction done, steps/s and the estimated time left."""
    status = read_status(run_dir)
    rows = [r for r in read_metrics(run_dir) if "loss" in r]
    total, step = status.get("total_steps") or 0, rows[-1]["step"] if rows else 0
    fraction = step / total if total else 0.0
    eta = None
    if len(rows) >= 2 and total:
        # time per step from the recent rows, not since the start (which includes model loading)
        recent = rows[-20:]
        per_step = (recent[-1]["elapsed_s"] - recent[0]["elapsed_s"]) / max(1, recent[-1]["step"] - recent[0]["step"])
        eta = max(0.0, per_step * (total - step))
    return {**status, "step": step, "fraction": min(1.0, fraction), "eta_s": eta,
            "last_loss": rows[-1]["loss"] if rows else None}
