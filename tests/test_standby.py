"""core.standby: a worker started ahead takes the next run, is its verified worker, stops and logs as one."""

import subprocess
import sys
import time

import pytest

from tunelab.core import runs, standby, workers
from tunelab.core.paths import REPO_ROOT
from test_runs import wait_for
from test_train import config, losses


@pytest.fixture
def standby_on(monkeypatch):
    monkeypatch.setenv("TUNELAB_STANDBY", "1")
    yield
    standby._discard()


def test_a_standby_becomes_the_next_runs_worker_and_stops_cleanly(standby_on, tiny_model, chat_file, tmp_path):
    standby.prestart()
    wait_for(standby.ready, 120, "the standby to finish its imports")
    ahead = standby._current["proc"].pid

    run_dir = workers.start(config(tiny_model, chat_file, max_steps=2000, eval_every=0), "warm", root=tmp_path)
    assert runs.read_status(run_dir)["state"] in runs.ACTIVE
    wait_for(lambda: len(losses(run_dir)) >= 2, 120, "two loss rows")
    assert workers.worker_pid(run_dir) == ahead  # verified: it holds this run's worker.lock
    assert standby._current is None  # the next one starts when this worker exits, not beside it
    assert '"loss"' in (run_dir / "log.txt").read_text()  # its output went to the run's log

    with pytest.raises(Exception, match="already has a live worker"):
        workers.launch(run_dir)  # the lock went with the run: a second worker is refused
    workers.request_stop(run_dir)
    wait_for(lambda: runs.read_status(run_dir)["state"] not in runs.ACTIVE, 120, "the stop")
    assert runs.read_status(run_dir)["state"] == "stopped"
    assert runs.latest_checkpoint(run_dir) is not None
    wait_for(lambda: not runs.worker_alive(run_dir), 60, "the worker to exit")  # and with it the lock
    wait_for(lambda: standby._current is not None, 60, "the next standby")
    assert standby._current["proc"].pid != ahead


def test_no_standby_waits_when_turned_off_or_the_environment_changed(standby_on, monkeypatch, tiny_model,
                                                                      chat_file, tmp_path):
    standby.prestart()
    wait_for(standby.ready, 120, "the standby to finish its imports")
    ahead = standby._current["proc"]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # read when torch is imported: the standby cannot take it on
    run_dir = workers.start(config(tiny_model, chat_file, max_steps=2), "fresh", root=tmp_path)
    wait_for(lambda: runs.read_status(run_dir)["state"] == "finished", 120, "the run")
    assert ahead.wait(timeout=10) == 0  # replaced, not used: it exited
    monkeypatch.setenv("TUNELAB_STANDBY", "0")
    standby.prestart()
    assert standby._current is None


def test_a_standby_exits_when_its_starter_goes_away():
    code = ("import sys, time; sys.path.insert(0, '.'); import os; os.environ['TUNELAB_STANDBY'] = '1'\n"
            "from tunelab.core import standby; standby.prestart(); print(standby._current['proc'].pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    pid = int(out.stdout.split()[0])
    deadline = time.time() + 60
    while time.time() < deadline and runs.pid_alive(pid):
        time.sleep(0.2)
    assert not runs.pid_alive(pid)
