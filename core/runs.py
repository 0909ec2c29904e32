"""The run store: one folder per run, readable by the dashboard, the CLI and a remote job's log.

``runs/<id>/``::

    config.yaml        the RunConfig this run trains with
    status.json        state (queued | running | stopping | stopped | finished | failed), error, pid, step, total_steps
    metrics.jsonl      one JSON object per event: step, epoch, loss, lr, grad_norm, tokens_per_s, elapsed_s;
                       evaluation rows carry eval_loss
    log.txt            the worker's stdout and stderr
    checkpoints/step-N/  trainable weights, optimizer, scheduler, RNG and data position
    final/             the trained model (from_pretrained-able), or the LoRA adapter folder
    STOP               present = please stop (written by ``stop``)

Every write is atomic (temp file + rename) or append-only, so a reader never
sees half a file and a killed worker never corrupts what is already saved.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from .errors import UserError

ACTIVE = ("queued", "running", "stopping")
REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    """Where runs live: ``$TUNELAB_RUNS_DIR``, default ``runs/`` in the repository."""
    return Path(os.environ.get("TUNELAB_RUNS_DIR") or REPO_ROOT / "runs")


def safe_run_id(name: str | None = None) -> str:
    """A folder name from whatever a user typed: lowercase ASCII words joined by '-', plus a time stamp."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^a-z0-9]+", "-", (name or "").lower()).strip("-")[:40]
    return f"{slug}-{stamp}" if slug else f"run-{stamp}"


def create_run(config, name: str | None = None, root=None, run_dir=None) -> Path:
    """Make a run folder with ``config.yaml`` and a queued status. Returns its path."""
    if run_dir is None:
        root = Path(root or runs_root())
        run_id = safe_run_id(name)
        run_dir, n = root / run_id, 1
        while run_dir.exists():
            n += 1
            run_dir = root / f"{run_id}-{n}"
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", config.to_yaml())
    if not (run_dir / "status.json").exists():
        write_status(run_dir, state="queued", step=0, total_steps=None, error=None, pid=None)
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
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not running
        with open(f"/proc/{int(pid)}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def read_status(run_dir) -> dict:
    """The run's status as a reader should see it.

    Only the worker writes ``state``; this adds what it cannot say itself: ``stopping``
    while a STOP file waits for it, and ``failed`` when its process is gone (killed,
    crashed) or never started.
    """
    run_dir = Path(run_dir)
    status = _read_json(run_dir / "status.json")
    if status is None:
        raise UserError(f"{run_dir} is not a run folder (no status.json)")
    checkpoint = latest_checkpoint(run_dir)
    if status.get("state") in ACTIVE:
        pid = status.get("pid")
        age = (dt.datetime.now() - dt.datetime.fromisoformat(status.get("updated_at", now()))).total_seconds()
        if (pid and not pid_alive(pid)) or (not pid and age > 120):
            where = (f"`python -m core resume {run_dir}` continues from the last checkpoint ({checkpoint.name})"
                     if checkpoint else "no checkpoint was saved (set save_every to keep some), so "
                     f"`python -m core resume {run_dir}` starts again from step 0")
            why = "ended without finishing (killed or crashed)" if pid else "never started"
            status.update(state="failed", interrupted=True, error=f"interrupted: the worker process {why}; {where}.")
        elif status["state"] == "running" and (run_dir / "STOP").exists():
            status["state"] = "stopping"
    status["run_id"] = run_dir.name
    status["checkpoint"] = str(checkpoint) if checkpoint else None
    return status


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
    rerun must not stop it. Its output goes to ``log.txt``. Returns the pid."""
    run_dir = Path(run_dir).resolve()
    status = read_status(run_dir)
    if status.get("state") in ACTIVE and pid_alive(status.get("pid")):
        raise UserError(f"run {run_dir.name} is already {status['state']} (pid {status['pid']})")
    (run_dir / "STOP").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "core", "resume" if resume else "train"]
    cmd += [str(run_dir)] if resume else [str(run_dir / "config.yaml"), "--run-dir", str(run_dir)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with (run_dir / "log.txt").open("a", encoding="utf-8") as log:  # the child keeps its own copy
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    write_status(run_dir, state="queued", pid=proc.pid, error=None)
    return proc.pid


def start(config, name: str | None = None, root=None) -> Path:
    """Create a run and launch its worker: what the Fine-tune page's Start button does."""
    run_dir = create_run(config, name, root)
    try:
        launch(run_dir)
    except OSError as exc:
        write_status(run_dir, state="failed", error=f"could not start the worker: {exc}")
        raise UserError(f"could not start the training worker: {exc}") from None
    return run_dir


def request_stop(run_dir) -> None:
    """Ask the worker to save a checkpoint and stop (it checks after every optimizer step).

    Only a STOP file and SIGTERM: the worker itself writes the final state, so a reader
    never sees a stop request overwrite a run that has just finished.
    """
    run_dir = Path(run_dir)
    status = read_status(run_dir)
    if status.get("state") not in ACTIVE:
        raise UserError(f"run {run_dir.name} is not running (state: {status.get('state')})")
    if not pid_alive(status.get("pid")):  # queued, worker not started yet: nothing to wait for
        write_status(run_dir, state="stopped")
        return
    (run_dir / "STOP").write_text(now())
    try:
        os.kill(int(status["pid"]), signal.SIGTERM)
    except OSError:
        pass


def list_runs(root=None) -> list[dict]:
    """Every run (newest first) with its status and a few config values."""
    root = Path(root or runs_root())
    out = []
    for run_dir in sorted(root.glob("*/status.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            status = read_status(run_dir.parent)
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


def ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the start is not pulled to 0.

    ``weight`` 0 = no smoothing, 0.99 = very smooth.
    """
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n) if weight < 1 else v)
    return out


def curve_signals(rows: list[dict], smoothing: float = 0.6) -> dict | None:
    """What a run's curves show so far, as facts the Fine-tune lesson puts into words.

    ``overfitting``: validation loss has turned up while the smoothed training loss still falls;
    ``flat``: after 10+ steps the smoothed loss moved less than 1%; ``spikes``: steps whose loss
    jumped well above the smoothed curve. None until there are three training rows.
    """
    trained = [r for r in rows if r.get("loss") is not None]
    if len(trained) < 3:
        return None
    loss = [r["loss"] for r in trained]
    val = [r["eval_loss"] for r in rows if r.get("eval_loss") is not None]
    smooth = ema(loss, smoothing)
    return {
        "overfitting": len(val) >= 2 and val[-1] > min(val) * 1.01 and smooth[-1] < smooth[len(smooth) // 2],
        "flat": len(loss) >= 10 and abs(smooth[-1] - smooth[2]) < 0.01 * abs(smooth[2]),
        "spikes": [r["step"] for r, s in zip(trained, smooth) if r["loss"] > 1.5 * s and r["loss"] - s > 0.5],
        "smoothed": (smooth[0], smooth[-1]),
        "validation": (val[0], val[-1]) if len(val) >= 2 else None,
    }
