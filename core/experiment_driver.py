"""An experiment's runs on this machine, one after another: the driver that chains them.

The record and its rules are :mod:`tunelab.core.experiments`; this module starts the runs. One driver per
experiment, a small process of its own (``python -m tunelab experiment-run EXP_DIR``, started detached by
``LocalEngine.start_experiment`` as a worker is): for each value in turn it creates an ordinary run,
records it (``mark_started``), launches its worker (:func:`tunelab.core.workers.launch`, the worker and the
queue a Start button uses), waits until the run has ended, and goes on with the next. It exits when
every value has run or the experiment was stopped.

Why a process, not the verb that reads the experiment: the dashboard reads only while a tab is open,
so chaining from a read would stall when the learner closes the tab, and two tabs would race to start
the next run. A detached driver goes on regardless, and the runs stay one after another by
construction (one process starts them), as the plan's budget assumes on a small machine. It holds
``driver.lock`` in the experiment's folder while it lives, so there is never a second one; reading the
experiment (``LocalEngine.experiment`` calls :func:`ensure_driver`) starts a new one when the driver
died (killed, the machine restarted) with values still to run: a lost driver costs a pause, not the
experiment. A driver costs ~60 MB and no torch (it imports none).

Stop (:func:`stop_experiment_runs`): the record is marked stopped, so no run starts after it, and the
run that is queued or running is asked to stop (it saves a checkpoint); the driver sees it end and
exits. A run launched in the instant between the two is stopped by the driver itself: it reads the
record again after every launch.

The CLI (``python -m tunelab experiment``) runs the same loop in the foreground (:func:`cli_experiment`),
or follows an experiment a remote backend runs as parallel jobs; then it prints the verdict and
writes the curves overlaid as a PNG (:func:`write_overlay_png`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from . import experiments, runs, workers
from .curves import SMOOTHING, ema
from .errors import UserError
from .paths import REPO_ROOT

DRIVER_LOCK = "driver.lock"
DRIVER_LOG = "driver.log"
DRIVER_FD_ENV = "TUNELAB_DRIVER_LOCK_FD"  # launch_driver hands its lock to the driver through this fd
DRIVER_POLL_S = 0.5  # how often the driver looks whether the run it waits for has ended
RELAUNCH_AFTER_S = 10.0  # a driver that dies at once is not started again at every read


# -- the driver process ---------------------------------------------------------------------------------
def launch_driver(folder) -> int | None:
    """Start the experiment's driver as its own process (and session): a closed tab or a Streamlit rerun
    does not stop it. Its output goes to ``driver.log``. Returns its pid, or None when a driver holds the
    experiment already. The lock is taken here and handed to the child, as ``workers.launch`` does."""
    folder = Path(folder).resolve()
    fd = os.open(folder / DRIVER_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not workers.take_lock(fd):  # retried: a reader's probe holds it for microseconds
            return None
        os.utime(folder / DRIVER_LOCK)  # when a driver last started (ensure_driver waits a little after it)
        # No standby worker in the driver: one started as a run ends would import torch beside the next run's
        # fresh worker on the same cores (core.standby), slowing it rather than speeding it up.
        env = dict(os.environ, PYTHONUNBUFFERED="1", TUNELAB_STANDBY="0", **{DRIVER_FD_ENV: str(fd)})
        with (folder / DRIVER_LOG).open("a", encoding="utf-8") as log:
            proc = subprocess.Popen([sys.executable, "-m", "tunelab", "experiment-run", str(folder)], cwd=REPO_ROOT,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, pass_fds=(fd,),
                                    start_new_session=True, env=env)
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it exits: no zombie left
        workers.write_lock_pid(fd, proc.pid)
        return proc.pid
    finally:
        os.close(fd)  # the child's copy keeps the lock held


def driver_pid(folder) -> int | None:
    """The pid of the experiment's live driver (as its ``driver.lock`` names it), or None."""
    if not driver_alive(folder):
        return None
    try:
        return int((Path(folder) / DRIVER_LOCK).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def driver_alive(folder) -> bool:
    """Whether some process holds the experiment's ``driver.lock`` (its driver, or the CLI's foreground)."""
    return runs.lock_held(Path(folder) / DRIVER_LOCK)


def ensure_driver(folder, record: dict) -> int | None:
    """Start a driver again when the experiment (``record``: its :func:`tunelab.core.experiments.read_experiment`)
    still has values to run, is not stopped and no driver holds it; not within ``RELAUNCH_AFTER_S`` of
    the last start. Returns the new driver's pid, or None."""
    if record.get("stopped") or not any(e["state"] == "pending" for e in record["runs"]):
        return None
    try:
        if time.time() - (Path(folder) / DRIVER_LOCK).stat().st_mtime < RELAUNCH_AFTER_S:
            return None
    except OSError:
        pass
    return launch_driver(folder)


def _hold_lock(folder: Path) -> int:
    """This process's hold on ``driver.lock``: the fd :func:`launch_driver` handed over, or the lock taken
    now (the CLI's foreground); UserError when another driver holds it."""
    path = folder / DRIVER_LOCK
    inherited = os.environ.pop(DRIVER_FD_ENV, None)
    if inherited:
        fd = int(inherited)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.set_inheritable(fd, False)  # the workers it launches must not keep the experiment locked
                return fd
        except OSError:
            pass
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if not workers.take_lock(fd):
        os.close(fd)
        raise UserError(f"experiment {folder.name} already has a driver running its runs; follow it on the "
                        "Experiments page, or stop it there") from None
    workers.write_lock_pid(fd, os.getpid())
    return fd


def drive_experiment(folder, echo=None, poll_s: float = DRIVER_POLL_S) -> dict:
    """Start the experiment's runs one after another until every value has run or it was stopped, holding
    ``driver.lock`` meanwhile. ``echo(line)`` hears each start and end (default: printed). Returns the
    record as it ends (:func:`tunelab.core.experiments.read_experiment`)."""
    folder = Path(folder).resolve()
    echo = echo or (lambda line: print(line, flush=True))
    lock = _hold_lock(folder)
    try:
        record = experiments.read_experiment(folder)
        owner, root, count = record.get("owner"), folder.parent.parent, len(record["runs"])
        while True:
            nxt = experiments.next_to_start(folder)
            if nxt is None:
                active = [e for e in experiments.read_experiment(folder)["runs"] if e["state"] in runs.ACTIVE]
                if not active:
                    break  # every value has run, or the experiment was stopped and its run has ended
                _wait_for_end(root / active[0]["run_id"], poll_s)
                entries = experiments.read_experiment(folder)["runs"]
                index = next(i for i, e in enumerate(entries, 1) if e["run_id"] == active[0]["run_id"])
                echo(describe_run_end(entries[index - 1], index, count))
                continue
            if not _start_one(folder, root, nxt, owner, echo, count):
                break
    finally:
        os.close(lock)
    return experiments.read_experiment(folder)


def _start_one(folder: Path, root: Path, nxt: dict, owner, echo, count: int) -> bool:
    """Create, record and launch the next value's run; False when the experiment was stopped first."""
    run_dir = runs.create_run(nxt["config"], nxt["name"], root, owner=owner)
    try:
        record = experiments.mark_started(folder, nxt["label"], run_dir.name)
    except UserError:  # stopped in the meantime: this run never starts, and leaves nothing behind
        shutil.rmtree(run_dir, ignore_errors=True)
        return False
    index = [e["label"] for e in record["runs"]].index(nxt["label"]) + 1
    try:
        workers.launch(run_dir)
    except (OSError, UserError) as exc:  # a result like any other: the next value still runs
        runs.write_status(run_dir, state="failed", error=f"could not start the worker: {exc}")
        echo(f"[{index}/{count}] {nxt['label']}: could not start its worker ({exc})")
        return True
    if experiments.was_stopped(folder):  # stopped between mark_started and the launch: nobody else saw it
        _stop_quietly(run_dir)
    echo(f"[{index}/{count}] {nxt['label']}: run {run_dir.name} started ({nxt['config'].max_steps} steps)")
    return True


def _wait_for_end(run_dir: Path, poll_s: float) -> None:
    """Until the run is no longer queued, running or stopping (or its folder was deleted)."""
    while True:
        try:
            if runs.read_status(run_dir)["state"] not in runs.ACTIVE:
                return
        except UserError:
            return
        time.sleep(poll_s)


def _stop_quietly(run_dir: Path) -> None:
    try:
        workers.request_stop(run_dir)
    except UserError:
        pass  # it has ended already


def stop_experiment_runs(folder, owner: str | None = None) -> list[str]:
    """Stop the experiment: no run of it starts any more, and its queued or running run is asked to stop.
    Returns the ids of the runs asked to stop."""
    experiments.check_owner(folder, owner, "stop")
    root = Path(folder).resolve().parent.parent
    asked = experiments.mark_stopped(folder)
    for run_id in asked:
        _stop_quietly(root / run_id)
    return asked


# -- what the CLI prints ---------------------------------------------------------------------------------
def describe_plan(plan: dict) -> list[str]:
    """The plan in lines: the values, the steps it chose and why, the notes."""
    values = ", ".join(r["label"] + (f" ({r['hint']})" if r.get("hint") else "") for r in plan["runs"])
    steps = plan["steps"]
    each = f"{steps} steps per run" if isinstance(steps, int) else f"steps per run: {', '.join(map(str, steps))}"
    lines = [f"experiment on {plan['label']} ({plan['setting']}): {values}",
             f"plan: {each}, same seed ({plan['seed']}) and data; about {plan['estimated_s']:.0f} s of a "
             f"{plan['budget_s']:.0f} s budget",
             f"why: {plan['why']}"]
    if plan.get("speed_source"):
        lines.append(f"speed: measured, from {plan['speed_source']}")
    return lines + [f"note: {note}" for note in plan["notes"]]


def describe_run_end(entry: dict, index: int, count: int) -> str:
    """One line for a run that ended: its state and step, its loss from first to last, its validation loss."""
    progress, rows = entry.get("progress") or {}, entry.get("rows") or []
    losses = [r["loss"] for r in rows if r.get("loss") is not None]
    val = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    line = (f"[{index}/{count}] {entry['label']}: {entry['state']} at step {progress.get('step') or 0} of "
            f"{progress.get('total_steps') or '?'}")
    if losses:
        line += f"; loss {_num(losses[0])} -> {_num(losses[-1])}"
    if val:
        line += f", validation {_num(val[-1])}"
    if entry["state"] == "failed" and progress.get("error"):
        line += f" ({str(progress['error']).splitlines()[0][:160]})"
    return line


def _num(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) and math.isfinite(x) else str(x)


def parse_vary(text: str) -> tuple[str, list[str]]:
    """``--vary lr=1e-5,1e-4,1e-3`` as ``("lr", ["1e-5", "1e-4", "1e-3"])`` (the values are checked later,
    against the config's rules); UserError for anything else."""
    setting, eq, values = str(text or "").partition("=")
    parts = [v.strip() for v in values.split(",")]
    if not eq or not setting.strip() or not values.strip() or "" in parts:
        raise UserError(f"--vary {text}: expected SETTING=VALUE,VALUE[,...], e.g. --vary lr=1e-5,1e-4,1e-3")
    return experiments.setting_key(setting), parts


def parse_budget(text: str) -> float:
    """``--budget 120`` (seconds), ``90s`` or ``2m`` as seconds; UserError for anything else."""
    raw = str(text).strip().lower()
    scale = 60.0 if raw.endswith("m") else 1.0
    try:
        seconds = float(raw.rstrip("ms").strip()) * scale
    except ValueError:
        seconds = float("nan")
    if not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--budget {text}: expected the time the runs may take together, in seconds (120) or "
                        "minutes (2m)")
    return seconds


def follow_experiment(engine, exp_id: str, echo, every: float = 2.0) -> dict:
    """Read ``engine.experiment(exp_id)`` until it is final, echoing each run's end. Returns the record."""
    told: set[str] = set()
    while True:
        record = engine.experiment(exp_id)
        count = len(record["runs"])
        for index, entry in enumerate(record["runs"], 1):
            if entry.get("run_id") and entry["state"] not in runs.ACTIVE and entry["run_id"] not in told:
                told.add(entry["run_id"])
                echo(describe_run_end(entry, index, count))
        if record["final"]:
            return record
        time.sleep(every)


def write_overlay_png(record: dict, path) -> Path:
    """The experiment's loss curves overlaid, one colour per value: the raw training loss faint, smoothed
    solid, validation dashed; the verdict underneath. Matplotlib's Agg backend: no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 5.4), dpi=110)
    for i, entry in enumerate(record["runs"]):
        colour, rows = f"C{i}", entry.get("rows") or []
        trained = [(r["step"], r["loss"]) for r in rows if isinstance(r.get("loss"), (int, float))
                   and math.isfinite(r["loss"])]
        if trained:
            steps, loss = zip(*trained)
            ax.plot(steps, loss, color=colour, lw=1, alpha=0.3, marker="o", ms=3)
            ax.plot(steps, ema(list(loss), SMOOTHING), color=colour, lw=2.2, label=f"{entry['label']} · training")
        val = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
        if val:
            ax.plot(*zip(*val), color=colour, lw=1.8, ls="--", marker="s", ms=6, label=f"{entry['label']} · validation")
    plan = record["plan"]
    ax.set_title(f"{plan['label']}: {', '.join(e['label'] for e in record['runs'])} "
                 f"(same seed and data, {plan['steps']} steps each)", fontsize=11)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (lower is better)")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8)
    verdict = record["verdict"]["text"] or "No run has trained a step."
    fig.text(0.01, 0.01, textwrap.fill(f"Verdict: {verdict}", 150), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def cli_experiment(engine, config: dict, setting: str, values: list, budget_s: float, echo=None) -> int:
    """``python -m tunelab experiment``: on this machine (``engine.name == "local"``) the runs one after another
    in the foreground, this process their driver; on another backend, its runs (parallel jobs there)
    followed until they end. Then the verdict and the overlay PNG beside the experiment's record. Ctrl-C
    stops the experiment. Exit 0 when it finished, 1 when a run failed for another reason than its loss,
    130 when stopped."""
    echo = echo or (lambda line: print(line, flush=True))
    interrupted = False
    if engine.name == "local":
        folder = experiments.create_experiment(None, engine.plan_experiment(config, setting, values, budget_s))
        record = experiments.read_experiment(folder)
        os.environ["TUNELAB_STANDBY"] = "0"  # as in a detached driver (launch_driver says why)
    else:
        record = engine.experiment(engine.start_experiment(config, setting, values, budget_s))
        folder = Path(record["path"])
    for line in describe_plan(record["plan"]):
        echo(line)
    if engine.name != "local":
        echo(f"{len(record['runs'])} runs submitted together as jobs on the {engine.name} backend; its "
             "scheduler runs them side by side as the box has room")
    try:
        record = (drive_experiment(folder, echo) if engine.name == "local" else
                  follow_experiment(engine, record["id"], echo))
    except KeyboardInterrupt:
        interrupted = True
        echo("stopping the experiment: its running run saves a checkpoint, no further run starts")
        if engine.name == "local":
            stop_experiment_runs(folder)
            record = _settle(folder)
        else:
            engine.stop_experiment(record["id"])
            record = engine.experiment(record["id"])
    echo(f"verdict: {record['verdict']['text'] or 'no run trained a step'}")
    echo(f"overlay: {write_overlay_png(record, folder / 'overlay.png')}")
    if interrupted:
        return 130
    broken = [e for e in record["runs"] if e["state"] == "failed" and e["label"] not in record["verdict"]["diverged"]]
    return 1 if broken else 0


def _settle(folder: Path, timeout: float = 60.0) -> dict:
    """The record once its stopped run has ended (or ``timeout`` later)."""
    deadline = time.time() + timeout
    while True:
        record = experiments.read_experiment(folder)
        if record["final"] or time.time() > deadline:
            return record
        time.sleep(DRIVER_POLL_S)
