"""Faults, each survived with nothing lost: kill -9 mid-save, a full disk, a dashboard restart,
plugins raising in every hook, two sessions pressing Start in the same second."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pluggy
import pytest

from tunelab.core import runs, train, workers
from tunelab.core.config import RunConfig
from tunelab.core.registry import Registry
from tunelab.core.paths import REPO_ROOT
from test_runs import wait_for  # one polling helper for the run tests

hookimpl = pluggy.HookimplMarker("tunelab")
LIFECYCLE_HOOKS = ("on_train_start", "on_log", "on_evaluate", "on_train_end")  # hookspecs.py's callbacks
CHECKPOINT_FILES = {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}


def config(tiny_model, chat_file, **over):
    base = {"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.0}, "max_length": 64,
            "max_steps": 6, "batch_size": 4, "lr": 1e-3, "eval_every": 0, "save_every": 2, "warmup_ratio": 0.0}
    base.update(over)
    return RunConfig.from_dict(base)


def write_config(path, cfg):
    path.write_text(cfg.to_yaml())
    return path


def cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def losses(run_dir):
    return [r for r in runs.read_metrics(run_dir) if "loss" in r]


def assert_complete(checkpoint, step):
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == step


# -- kill -9 in the middle of a checkpoint save -----------------------------------------------------

KILL_MID_SAVE = """
import os, signal, sys
import torch

real_save = torch.save

def save(obj, f, *args, **kwargs):
    real_save(obj, f, *args, **kwargs)
    if str(f).endswith(os.path.join(sys.argv[3] + ".tmp", "optimizer.pt")):
        os.kill(os.getpid(), signal.SIGKILL)  # half of the checkpoint is on disk

torch.save = save
from tunelab.core.__main__ import main
sys.exit(main(["train", sys.argv[1], "--run-dir", sys.argv[2]]))
"""


def test_kill_9_during_a_checkpoint_save_loses_nothing(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file)
    reference = train.train(cfg, tmp_path / "straight")  # the same run, never interrupted
    assert reference["state"] == "finished"
    run_dir = tmp_path / "run"
    path = write_config(tmp_path / "run.yaml", cfg)
    worker = subprocess.run([sys.executable, "-c", KILL_MID_SAVE, str(path), str(run_dir), "step-4"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert worker.returncode == -9, worker.stderr

    partial = run_dir / "checkpoints" / "step-4.tmp"
    assert partial.is_dir() and not (partial / "trainer_state.json").exists()  # it really died mid-save
    assert_complete(runs.latest_checkpoint(run_dir), 2)  # the previous checkpoint survives whole
    assert [r["step"] for r in losses(run_dir)] == [1, 2, 3, 4]  # and every metrics row written
    status = runs.read_status(run_dir)
    assert status["state"] == "failed" and "interrupted" in status["error"] and "step-2" in status["error"]
    assert not runs.worker_alive(run_dir)  # the OS released the dead worker's lock

    resumed = cli("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert runs.read_status(run_dir)["state"] == "finished"
    assert not partial.exists() and (run_dir / "final" / "config.json").is_file()
    rows = losses(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows, losses(tmp_path / "straight")):  # the same curve as without the kill
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4), a["step"]


# -- a full disk during a save --------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 56 MiB tmpfs: room for one checkpoint of the tiny model (37 MB), not for the next beside it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=56m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_during_a_save_fails_clearly_and_keeps_the_last_checkpoint(tiny_model, chat_file, tmp_path,
                                                                               small_disk):
    cfg = config(tiny_model, chat_file, max_steps=10)
    run_dir = small_disk / "run"
    result = cli("train", write_config(tmp_path / "run.yaml", cfg), "--run-dir", run_dir)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    status = runs.read_status(run_dir)
    assert status["state"] == "failed"
    assert "is full" in status["error"] and "step-4" not in status["error"]
    assert "resume" in status["error"] and "step-2" in status["error"]  # says how to go on
    assert_complete(runs.latest_checkpoint(run_dir), 2)
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # the half-save was cleaned up
    assert [r["step"] for r in losses(run_dir)] == [1, 2, 3, 4]

    # space freed (here: the disk grown): the run continues from step 2 and finishes
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    resumed = cli("resume", run_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert runs.read_status(run_dir)["state"] == "finished"
    assert [r["step"] for r in losses(run_dir)] == list(range(1, 11))


# -- the dashboard restarted while a run trains --------------------------------------------------------

DASHBOARD = """
import os, signal, sys
from tunelab.core import workers
from tunelab.core.config import load_config

run_dir = workers.start(load_config(sys.argv[1]), "restart", root=sys.argv[2], owner="session-1")
print(run_dir, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the dashboard dies; its worker must not
"""


def test_a_run_survives_a_dashboard_restart_and_the_new_one_reattaches(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=3000, save_every=0)
    dashboard = subprocess.run([sys.executable, "-c", DASHBOARD, str(write_config(tmp_path / "c.yaml", cfg)),
                                str(tmp_path / "runs")], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=60)
    assert dashboard.returncode == -9
    run_dir = Path(dashboard.stdout.strip())

    # the new dashboard process: finds the run in the store, sees it running, rows keep coming
    wait_for(lambda: len(losses(run_dir)) >= 2, what="rows from the worker")
    listed = {s["run_id"]: s for s in runs.list_runs(tmp_path / "runs")}
    assert listed[run_dir.name]["state"] == "running" and listed[run_dir.name]["owner"] == "session-1"
    seen = len(losses(run_dir))
    wait_for(lambda: len(losses(run_dir)) > seen + 2, timeout=60, what="more rows after the restart")
    worker = workers.worker_pid(run_dir)
    assert worker is not None and runs.read_status(run_dir)["pid"] == worker

    workers.request_stop(run_dir)  # and it still controls the run
    wait_for(lambda: runs.read_status(run_dir)["state"] not in runs.ACTIVE, what="the stop")
    status = runs.read_status(run_dir)
    assert status["state"] == "stopped" and status["checkpoint"], (run_dir / "log.txt").read_text()
    steps = [r["step"] for r in losses(run_dir)]
    assert steps == list(range(1, len(steps) + 1))


# -- a plugin raising in every lifecycle hook ------------------------------------------------------------

class RaisesEverywhere:
    @hookimpl
    def on_train_start(self, run):
        raise RuntimeError("start broke")

    @hookimpl
    def on_log(self, run, metrics):
        raise ValueError("log broke")

    @hookimpl
    def on_evaluate(self, run, metrics):
        raise KeyError("evaluate broke")

    @hookimpl
    def on_train_end(self, run, result):
        raise SystemExit("end broke")  # a plugin calling sys.exit() is a plugin raising too


class Records:
    def __init__(self):
        self.calls = []

    @hookimpl
    def on_train_start(self, run):
        self.calls.append("on_train_start")

    @hookimpl
    def on_log(self, run, metrics):
        self.calls.append("on_log")

    @hookimpl
    def on_evaluate(self, run, metrics):
        self.calls.append("on_evaluate")

    @hookimpl
    def on_train_end(self, run, result):
        self.calls.append("on_train_end")


def test_a_plugin_raising_in_every_hook_is_recorded_and_training_carries_on(tiny_model, chat_file, tmp_path,
                                                                           monkeypatch):
    monkeypatch.delenv("TUNELAB_STRICT_PLUGINS", raising=False)
    records = Records()
    reg = Registry(load_external=False, extra_plugins=[(RaisesEverywhere(), "broken"), (records, "records")])
    cfg = config(tiny_model, chat_file, max_steps=4, eval_every=2, save_every=0, data={"path": str(chat_file),
                                                                                       "val_fraction": 0.2})
    result = train.train(cfg, tmp_path / "run", registry=reg)
    assert result["state"] == "finished" and (tmp_path / "run" / "final" / "config.json").is_file()
    errors = runs.read_status(tmp_path / "run")["plugin_errors"]
    for hook, message in zip(LIFECYCLE_HOOKS, ("start broke", "log broke", "evaluate broke", "end broke")):
        assert any(f"'broken' raised in {hook}" in e and message in e for e in errors), (hook, errors)
    assert set(records.calls) == set(LIFECYCLE_HOOKS)  # the other plugin was called every time
    assert records.calls.count("on_log") == 4 and records.calls.count("on_evaluate") == 2
    assert [r["step"] for r in losses(tmp_path / "run")] == [1, 2, 3, 4]


# -- two sessions press Start in the same second -----------------------------------------------------------

def test_two_starts_in_the_same_second_train_two_separate_runs(tiny_model, chat_file, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "safe_run_id", lambda name=None: "demo-20260101-120000")
    monkeypatch.setenv("TUNELAB_MAX_WORKERS", "1")  # and the queue runs them one after the other
    cfg = config(tiny_model, chat_file, max_steps=3, save_every=0)
    started, barrier = {}, threading.Barrier(2)

    def press_start(session):
        barrier.wait()
        started[session] = workers.start(cfg, "demo", root=tmp_path / "runs", owner=session)

    threads = [threading.Thread(target=press_start, args=(s,)) for s in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert started["alice"] != started["bob"]
    for session, run_dir in started.items():
        wait_for(lambda: runs.read_status(run_dir)["state"] not in runs.ACTIVE, what=f"{session}'s run")
        status = runs.read_status(run_dir)
        assert status["state"] == "finished", (run_dir / "log.txt").read_text()
        assert status["owner"] == session
        assert [r["step"] for r in losses(run_dir)] == [1, 2, 3]  # its own rows only
