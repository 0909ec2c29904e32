"""The bounded queue: no more training workers at once than the machine's memory holds.

A class pressing Start together must not start thirty 5 GB workers on one box. So a
worker, once it holds its run's ``worker.lock``, waits in ``queued`` for a *slot* before
it loads anything heavy. A slot is one of the lock files ``<runs>/.slots/slot-K.lock``,
held with ``fcntl.flock`` for the rest of the worker's life: the OS frees it when the
worker ends, however it ends, so no daemon keeps the books and a crash leaks nothing.

Who gets a free slot: first come, first served (by the time a worker joined the queue);
only the head of the line may take one, and only under ``.slots/admit.lock``, so two
workers never decide at once. How many slots:

- ``TUNELAB_MAX_WORKERS=N``: at most N training workers in this run store;
- default: as many as memory allows. A run is admitted while the memory estimated for it
  (``tunelab.core.memory.estimate`` of its config) plus that of the runs holding slots fits in
  what training can use (``available_for_training``: the GPU's memory, or free
  RAM plus what the running workers already hold). The first run is always admitted: one
  that cannot fit alone fails with the out-of-memory advice instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from pathlib import Path

import psutil

from . import machine, memory, runs, workers
from .errors import UserError

SLOTS_DIR = ".slots"
MAX_SLOTS = 64  # a hard ceiling whatever memory says
POLL_S = 1.0  # each look reads the run store's status files: once a second is plenty


def slots_dir(run_dir) -> Path:
    """The slot files of ``run_dir``'s run store (its parent folder)."""
    return Path(run_dir).resolve().parent / SLOTS_DIR


def configured_max() -> int | None:
    """``TUNELAB_MAX_WORKERS`` as a number, None when unset; UserError when it is not a count."""
    text = os.environ.get("TUNELAB_MAX_WORKERS", "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_SLOTS:
        raise UserError(f"TUNELAB_MAX_WORKERS={text!r}: must be a whole number from 1 to {MAX_SLOTS} "
                        "(how many runs may train at once); unset it to let memory decide")
    return value


def run_need(cfg) -> int | None:
    """Bytes a run of ``cfg`` is estimated to need at its peak (None if it cannot be estimated:
    such a run fails on its own, with its own error, soon after it starts)."""
    try:
        est = memory.estimate_run(cfg)
        if cfg.workers > 1 and machine.device().startswith(("cpu", "mps")):
            est["total"] *= cfg.workers  # every rank of a group on this machine holds its own copy in RAM
    except Exception:  # noqa: BLE001 - a missing model or odd config is train()'s to report
        return None
    return int(est["total"])


def held_slots(folder: Path) -> list[dict]:
    """``{"slot", "pid", "run_dir", "need"}`` of every slot a live worker holds."""
    held = []
    for path in sorted(folder.glob("slot-*.lock")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)  # free
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            except ValueError:
                info = {}
            held.append({"slot": int(path.stem.split("-")[1]), **info})
        finally:
            os.close(fd)
    return held


def memory_budget(held: list[dict]) -> tuple[int, str]:
    """(bytes the workers of this store may use together, where): the GPU's memory, or free RAM
    plus what the slot holders already hold (they are part of the budget, not outside it)."""
    available, where = machine.available_for_training()
    if where.startswith("GPU"):
        return available, where
    for h in held:
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            available += psutil.Process(int(h["pid"])).memory_info().rss
    return available, where


def admissible(need: int | None, held: list[dict]) -> tuple[bool, str]:
    """(may a run needing ``need`` bytes start now, and if not, what it waits for)."""
    cap = configured_max()
    if len(held) >= (cap or MAX_SLOTS):
        return False, f"all {len(held)} training slot(s) are busy (TUNELAB_MAX_WORKERS={cap or MAX_SLOTS})"
    if cap is not None or not held:
        return True, ""
    budget, where = memory_budget(held)
    used = sum(int(h.get("need") or 0) for h in held)
    if used + (need or 0) <= budget:
        return True, ""
    return False, (f"memory: {len(held)} running run(s) need {machine.fmt_bytes(used)} and this one "
                   f"{machine.fmt_bytes(need or 0)}, of {machine.fmt_bytes(budget)} of {where}")


@contextlib.contextmanager
def _admission(folder: Path):
    fd = os.open(folder / "admit.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for milliseconds by whoever decides
        yield
    finally:
        os.close(fd)


def _take_slot(folder: Path, run_dir: Path, need: int | None) -> int | None:
    """Hold the first free slot file for the rest of this process; its index, or None."""
    for k in range(MAX_SLOTS):
        fd = os.open(folder / f"slot-{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "run_dir": str(run_dir), "need": need}).encode(), 0)
        workers.hold(fd)  # released by the OS when this worker exits
        return k
    return None


def wait_for_slot(run_dir, need: int | None, stop, poll: float = POLL_S) -> int | None:
    """Wait in ``queued`` until this worker may train; the slot index, or None if ``stop`` came first.

    The caller holds the run's ``worker.lock``. ``stop`` is anything truthy once a stop was
    asked (``tunelab.core.train.StopFlag``). Writes ``queued_at``, ``waiting_for`` and then ``slot``
    into ``status.json`` so readers can say "queued, N ahead" and why.
    """
    run_dir = Path(run_dir).resolve()
    folder = slots_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    runs.write_status(run_dir, state="queued", pid=os.getpid(), queued_at=time.time(), slot=None,
                      waiting_for=None, memory_need=need)
    said = None
    while not stop:
        ahead = runs.queue_position(run_dir)
        reason = f"{ahead} run(s) ahead in the queue" if ahead else ""
        if not ahead:
            with _admission(folder):
                ok, reason = admissible(need, held_slots(folder))
                slot = _take_slot(folder, run_dir, need) if ok else None
                if slot is not None:
                    runs.write_status(run_dir, slot=slot, waiting_for=None)
                    return slot
        if reason != said:
            runs.write_status(run_dir, waiting_for=reason)
            print(f"[tunelab] queued: waiting for {reason}", file=sys.stderr, flush=True)
            said = reason
        time.sleep(poll)
    return None
