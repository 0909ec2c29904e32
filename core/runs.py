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
import shutil
import time
from pathlib import Path

from .config import RunConfig, load_config
from .errors import UserError
from .paths import runs_root

ACTIVE = ("queued", "running", "stopping")
LOCK_NAME = "worker.lock"


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
    status = read_json(path) or {}
    status.update(fields, updated_at=now())
    write_atomic(path, json.dumps(status, indent=2))
    return status


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def pid_alive(pid) -> bool:
    """Whether ``pid`` names a running (not zombie) process. Refuses non-ints and pids <= 1."""
    if not valid_pid(pid):
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


def valid_pid(pid) -> bool:
    # 0, -1 and negative pids signal process groups or every process: never a worker's pid
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 1


def worker_alive(run_dir) -> bool:
    """Whether some process holds the run's ``worker.lock`` (a live worker, queued or training)."""
    return lock_held(Path(run_dir) / LOCK_NAME)


def lock_held(path) -> bool:
    """Whether some process holds the ``flock`` on ``path`` (a probe: a shared lock for microseconds)."""
    try:
        fd = os.open(path, os.O_RDONLY)
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
    status = read_json(run_dir / "status.json")
    if status is None:
        raise UserError(f"{run_dir} is not a run folder (no status.json)")
    checkpoint = latest_checkpoint(run_dir)
    if status.get("state") in ACTIVE and "remote" not in status:  # a mirrored remote run's worker is elsewhere
        pid, alive = status.get("pid"), worker_alive(run_dir)
        if not alive and valid_pid(pid):  # a train() called in-process holds no lock
            alive = pid_alive(pid) and _same_process(pid, status.get("started_at"))
        age = (dt.datetime.now() - dt.datetime.fromisoformat(status.get("updated_at", now()))).total_seconds()
        # launch() holds the lock from before it writes launched_at until its worker exits
        launched = status.get("launched_at") and not pid
        if not alive and (pid or launched or age > 120):
            where = (f"`python -m tunelab resume {run_dir}` continues from the last checkpoint ({checkpoint.name})"
                     if checkpoint else "no checkpoint was saved (set save_every to keep some), so "
                     f"`python -m tunelab resume {run_dir}` starts again from step 0")
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
        status = read_json(path)
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
    status = status or read_json(run_dir / "status.json") or {}
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
    status = read_json(Path(run_dir) / "status.json") or {}
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
    for partial in (Path(run_dir) / "checkpoints").glob("step-*.tmp"):
        shutil.rmtree(partial, ignore_errors=True)


def latest_checkpoint(run_dir) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def prune_checkpoints(run_dir, keep: int = 1) -> list[Path]:
    """Delete all but the ``keep`` newest complete checkpoints (``keep_checkpoints``); returns what went."""
    found = checkpoints(run_dir)
    gone = found[:-max(1, int(keep))]
    for old in gone:
        shutil.rmtree(old, ignore_errors=True)
    return gone


# -- disk use and deleting ------------------------------------------------------------------------
def disk_bytes(folder) -> int:
    """Bytes a folder takes on disk, as ``du`` counts them (allocated blocks; links not followed)."""
    total = 0
    for base, dirs, files in os.walk(folder):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(base, name))
            except OSError:  # removed while we walked
                continue
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


def delete_run(run_dir, owner: str | None = None) -> int:
    """Delete a run's folder (config, metrics, checkpoints, final/, exports, evaluation); returns the bytes freed.

    Refused while a worker lives (queued, running or stopping: stop it first) and, in a shared
    deployment, for another session's run. The run disappears from listings at once (its
    ``status.json`` goes first), then its folder is renamed aside and removed; the worker lock is
    held throughout, so no Resume can start a worker in a folder being deleted.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)  # a run folder, or a clear error
    if status["state"] in ACTIVE:
        raise UserError(f"run {run_dir.name} is {status['state']}: stop it first (`python -m tunelab stop {run_dir}`), "
                        "then delete it")
    check_control(run_dir, owner, "delete")
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"run {run_dir.name} has a live worker: stop it first, then delete it") from None
        freed = disk_bytes(run_dir)
        os.replace(run_dir / "status.json", run_dir / ".status.deleting.json")  # gone from listings now
        aside = run_dir.with_name(f".deleting-{run_dir.name}-{os.getpid()}")
        os.replace(run_dir, aside)
    finally:
        os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)
    for stale in run_dir.parent.glob(".deleting-*"):  # a delete killed half-way left these
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return freed


# -- how fast training goes here, learned from what ran ----------------------------------------
# The settings a step's speed depends on. The first three must match for a speed to count at all.
SPEED_KEYS = ("model", "method", "precision", "batch_size", "max_length", "gradient_checkpointing", "lora.r",
              "workers")
SPEED_ERROR = {"close": 0.2, "rough": 0.5}  # how far off an estimate from such a speed may be (a fraction)
MIN_SPEED_STEPS = 3  # fewer steps of a run than this (after its first): one slow or fast step could mislead


def observed_speed(cfg: RunConfig, root=None, measured: list[dict] | None = None) -> dict | None:
    """The training speed (tokens/s) a planned run can expect on this machine, from what already ran here.

    Two sources: earlier runs' steps (``tokens_per_s`` of their metrics rows; a run's first step is left out,
    it pays for warm-up) and ``measured`` steps (``{"config": a run config dict, "tokens_per_s"}``, e.g. the
    Set-up page's measured step). Model, method and precision must match; among what matches, the one
    that differs in the fewest other :data:`SPEED_KEYS` wins, then a run (real batches) over a measured
    step (random tokens), then the newest. It is "close" only with the same settings and, for a run, at
    least :data:`MIN_SPEED_STEPS` steps. Returns ``{"tokens_per_s",
    "source" (words), "differs" (the keys that differ), "sure": "close" | "rough", "error" (a fraction)}``
    or None when nothing comparable ran.
    """
    want = _speed_settings(cfg.to_dict())
    candidates = []  # (differs, order, tokens_per_s, source, enough steps to trust)
    for i, item in enumerate(measured or ()):
        if item and item.get("tokens_per_s") and item.get("config"):
            candidates.append((_speed_differs(want, item["config"]), i, float(item["tokens_per_s"]),
                               "a step measured here", True))
    root = Path(root or runs_root())
    for status in sorted(root.glob("*/status.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:50]:
        run_dir = status.parent
        speeds = [r["tokens_per_s"] for r in read_metrics(run_dir) if r.get("tokens_per_s")]
        speeds = speeds[1:] or speeds  # the first step pays for warm-up
        config = _raw_config(run_dir) if speeds else None
        if config:
            speeds.sort()
            candidates.append((_speed_differs(want, config), -status.stat().st_mtime, speeds[len(speeds) // 2],
                               f"run {run_dir.name} ({len(speeds)} step{'s' if len(speeds) != 1 else ''})",
                               len(speeds) >= MIN_SPEED_STEPS))
    usable = [c for c in candidates if not {"model", "method", "precision"} & set(c[0])]
    if not usable:
        return None
    differs, _, speed, source, enough = min(usable, key=lambda c: (len(c[0]), c[1]))
    sure = "close" if enough and not differs else "rough"
    return {"tokens_per_s": speed, "source": source, "differs": differs, "sure": sure, "error": SPEED_ERROR[sure]}


def _raw_config(run_dir) -> dict | None:
    """A run's ``config.yaml`` as plain data, unvalidated (None when it is missing or unreadable)."""
    import yaml

    try:
        raw = yaml.safe_load((Path(run_dir) / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return raw if isinstance(raw, dict) else None


def _speed_settings(config: dict) -> dict:
    base = RunConfig().to_dict()
    merged = {**base, **config, "lora": {**base["lora"], **(config.get("lora") or {})}}
    return {k: merged["lora"]["r"] if k == "lora.r" else merged.get(k) for k in SPEED_KEYS}


def _speed_differs(want: dict, config: dict) -> list[str]:
    have = _speed_settings(config)
    return [k for k in SPEED_KEYS if have[k] != want[k] and not (k == "lora.r" and want["method"] != "lora")]


def run_config(run_dir) -> RunConfig:
    """The RunConfig a run trains with (its own ``config.yaml``)."""
    return load_config(Path(run_dir) / "config.yaml")


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
        status["disk_bytes"] = disk_bytes(run_dir.parent)
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
