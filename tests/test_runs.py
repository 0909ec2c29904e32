"""Runs shared by many people: one worker per run, a bounded queue, whose run it is, safe signals."""

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tunelab.core import queue, runs, workers
from tunelab.core.config import RunConfig
from tunelab.core.errors import UserError
from tunelab.core.paths import REPO_ROOT


def config(tiny_model, chat_file, **over):
    base = {"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.0}, "max_length": 64,
            "max_steps": 4, "batch_size": 4, "lr": 1e-3, "eval_every": 0, "save_every": 0, "warmup_ratio": 0.0}
    base.update(over)
    return RunConfig.from_dict(base)


def cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def wait_for(predicate, timeout=120, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def loss_steps(run_dir):
    return [r["step"] for r in runs.read_metrics(run_dir) if "loss" in r]


def hold(path):
    """Hold an flock on ``path`` from this process, as a worker would; returns the fd."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


# -- run folders ---------------------------------------------------------------------------------

def test_runs_created_in_the_same_second_get_distinct_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "safe_run_id", lambda name=None: "class-demo-20260101-120000")  # one second
    cfg = RunConfig()
    made, barrier = [], threading.Barrier(8)

    def create(i):
        barrier.wait()
        made.append(runs.create_run(cfg, "class demo", root=tmp_path, owner=f"session-{i}"))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({p.name for p in made}) == 8
    assert {p.name for p in made} == {"class-demo-20260101-120000"} | {f"class-demo-20260101-120000-{n}"
                                                                      for n in range(2, 9)}
    owners = {json.loads((p / "status.json").read_text())["owner"] for p in made}
    assert owners == {f"session-{i}" for i in range(8)}  # nobody's status was overwritten


# -- whose run it is -----------------------------------------------------------------------------

def test_only_the_owner_controls_a_run_on_a_shared_server(tmp_path, monkeypatch):
    mine = runs.create_run(RunConfig(), "mine", root=tmp_path, owner="alice")
    cli_run = runs.create_run(RunConfig(), "from the cli", root=tmp_path)
    monkeypatch.delenv("TUNELAB_SHARED", raising=False)
    assert runs.can_control(mine, "bob") and runs.can_control(mine, None)  # single-user: anyone
    monkeypatch.setenv("TUNELAB_SHARED", "1")
    assert runs.can_control(mine, "alice")
    assert not runs.can_control(mine, "bob") and not runs.can_control(mine, None)
    assert not runs.can_control(cli_run, "alice")
    with pytest.raises(UserError, match="started by another session"):
        runs.check_control(mine, "bob", "stop")
    runs.check_control(mine, "alice", "stop")


# -- signals go only to the run's verified worker -----------------------------------------------

@pytest.mark.parametrize("pid", [-1, 0, 1, -12345, "1234", 3.0, True, None])
def test_crafted_pids_are_never_alive(pid):
    assert runs.pid_alive(pid) is False


def test_stop_never_signals_a_pid_that_is_not_the_runs_worker(tmp_path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for crafted in (-1, 0, "1", bystander.pid, os.getpid()):
            run_dir = runs.create_run(RunConfig(), f"crafted {crafted}", root=tmp_path)
            runs.write_status(run_dir, state="running", pid=crafted)
            assert workers.worker_pid(run_dir) is None
            if crafted in (-1, "1"):  # no such worker: the run reads as interrupted, nothing to stop
                assert runs.read_status(run_dir)["state"] == "failed"
                with pytest.raises(UserError, match="is not running"):
                    workers.request_stop(run_dir)
            elif crafted == 0:  # no pid at all: a worker never started, so it is simply marked stopped
                workers.request_stop(run_dir)
                assert runs.read_status(run_dir)["state"] == "stopped"
            else:  # a live process, but not this run's worker: a STOP file, no signal
                workers.request_stop(run_dir)
                assert (run_dir / "STOP").exists()
        time.sleep(0.3)
        assert bystander.poll() is None, "a process that is not a worker was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_lock_holder_that_is_not_a_core_worker_is_not_signalled(tmp_path):
    run_dir = runs.create_run(RunConfig(), "held", root=tmp_path)
    fd = hold(run_dir / runs.LOCK_NAME)
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # this pytest process: alive, but not `core ... <run>`
        assert runs.worker_alive(run_dir)
        assert workers.worker_pid(run_dir) is None
    finally:
        os.close(fd)
    assert not runs.worker_alive(run_dir)


# -- the queue -----------------------------------------------------------------------------------

def queued_run(root, name, queued_at, **fields):
    run_dir = runs.create_run(RunConfig(), name, root=root)
    runs.write_status(run_dir, state="queued", queued_at=queued_at, slot=None, **fields)
    return run_dir


def test_queue_position_is_first_come_first_served_and_skips_dead_waiters(tmp_path):
    a, b, c = (queued_run(tmp_path, n, t) for n, t in (("a", 10.0), ("b", 20.0), ("c", 30.0)))
    late = queued_run(tmp_path, "late", None)  # launched, worker not in the queue yet
    fds = {d.name: hold(d / runs.LOCK_NAME) for d in (a, b, c)}
    assert [runs.queue_position(d) for d in (a, b, c)] == [0, 1, 2]
    assert runs.queue_position(late) == 3
    assert runs.read_status(c)["queue_ahead"] == 2
    os.close(fds.pop(a.name))  # a's worker died while waiting: it holds nobody up
    assert [runs.queue_position(d) for d in (b, c)] == [0, 1]
    runs.write_status(b, slot=0)  # b was admitted: no longer waiting
    assert runs.queue_position(b) is None and runs.queue_position(c) == 0
    assert {s["run_id"]: s["queue_ahead"] for s in runs.list_runs(tmp_path)}[c.name] == 0
    for fd in fds.values():
        os.close(fd)


def test_admission_by_memory_and_by_a_fixed_cap(monkeypatch):
    gib = 2**30
    monkeypatch.delenv("TUNELAB_MAX_WORKERS", raising=False)
    monkeypatch.setattr(queue, "memory_budget", lambda held: (10 * gib, "free RAM"))
    assert queue.admissible(50 * gib, []) == (True, "")  # alone: always (it fails with the OOM advice)
    held = [{"slot": 0, "pid": 1, "need": 4 * gib}, {"slot": 1, "pid": 1, "need": 4 * gib}]
    assert queue.admissible(2 * gib, held)[0]
    ok, why = queue.admissible(3 * gib, held)
    assert not ok and "8.0 GiB" in why and "10.0 GiB of free RAM" in why
    monkeypatch.setenv("TUNELAB_MAX_WORKERS", "2")
    ok, why = queue.admissible(1, held)
    assert not ok and "TUNELAB_MAX_WORKERS=2" in why
    monkeypatch.setenv("TUNELAB_MAX_WORKERS", "3")
    assert queue.admissible(50 * gib, held)[0]  # a fixed cap is the admin's word: memory is not asked
    monkeypatch.setenv("TUNELAB_MAX_WORKERS", "lots")
    with pytest.raises(UserError, match="TUNELAB_MAX_WORKERS='lots'"):
        queue.configured_max()


def test_the_memory_budget_counts_what_running_workers_hold(monkeypatch):
    import psutil

    monkeypatch.setattr(queue.machine, "available_for_training", lambda: (1000, "free RAM"))
    mine = psutil.Process().memory_info().rss
    budget, where = queue.memory_budget([{"pid": os.getpid()}])
    assert where == "free RAM" and budget >= 1000 + mine * 0.9


def test_slots_are_held_until_the_worker_exits(tmp_path):
    run_dir = runs.create_run(RunConfig(), "slot", root=tmp_path)
    code = ("import sys, time; from tunelab.core import queue, runs, workers; workers.claim_worker(sys.argv[1]); "
            "print(queue.wait_for_slot(sys.argv[1], 123, stop=False), flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "0"
        held = queue.held_slots(queue.slots_dir(run_dir))
        assert held == [{"slot": 0, "pid": proc.pid, "run_dir": str(run_dir.resolve()), "need": 123}]
        assert runs.read_status(run_dir)["slot"] == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert queue.held_slots(queue.slots_dir(run_dir)) == []  # the OS let go of it


# -- one worker per run, and the queue, with real workers --------------------------------------------

def test_a_second_worker_on_a_live_run_is_refused_at_once(tiny_model, chat_file, tmp_path):
    cfg = config(tiny_model, chat_file, max_steps=3000)
    run_dir = workers.start(cfg, "live", root=tmp_path)
    wait_for(lambda: len(loss_steps(run_dir)) >= 2, what="the first worker's rows")
    worker = workers.worker_pid(run_dir)
    assert worker is not None and runs.read_status(run_dir)["pid"] == worker
    config_text = (run_dir / "config.yaml").read_text()
    try:
        for args in (["train", run_dir / "config.yaml", "--run-dir", run_dir], ["resume", run_dir]):
            started = time.time()
            result = cli(*args)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "already has a live worker" in lines[0] and str(worker) in lines[0]
            assert time.time() - started < 15
        with pytest.raises(UserError, match="already has a live worker"):
            workers.launch(run_dir)
        assert workers.worker_pid(run_dir) == worker and runs.read_status(run_dir)["state"] == "running"
        assert (run_dir / "config.yaml").read_text() == config_text
        steps = loss_steps(run_dir)
        assert steps == list(range(1, len(steps) + 1))  # one worker's rows only, in order
    finally:
        workers.request_stop(run_dir)
    wait_for(lambda: runs.read_status(run_dir)["state"] not in runs.ACTIVE, what="the stop")
    assert runs.read_status(run_dir)["state"] == "stopped", (run_dir / "log.txt").read_text()


def test_runs_beyond_the_cap_wait_queued_and_start_when_a_slot_frees(tiny_model, chat_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_MAX_WORKERS", "1")
    first = workers.start(config(tiny_model, chat_file, max_steps=3000), "first", root=tmp_path)
    wait_for(lambda: runs.read_status(first)["state"] == "running", what="the first run to start")
    second = workers.start(config(tiny_model, chat_file, max_steps=3), "second", root=tmp_path)
    wait_for(lambda: runs.read_status(second).get("queued_at"), what="the second worker to queue")
    third = workers.start(config(tiny_model, chat_file, max_steps=3), "third", root=tmp_path)
    wait_for(lambda: runs.read_status(third).get("queued_at"), what="the third worker to queue")
    try:
        time.sleep(1.5)  # the queued workers keep waiting
        assert runs.read_status(second)["state"] == "queued" and runs.queue_position(second) == 0
        status = runs.read_status(third)
        assert status["state"] == "queued" and status["queue_ahead"] == 1
        assert "ahead" in status["waiting_for"]
        assert "TUNELAB_MAX_WORKERS=1" in runs.read_status(second)["waiting_for"]
        assert loss_steps(second) == [] and loss_steps(third) == []
        workers.request_stop(third)  # a queued run stops at once, without ever training
        wait_for(lambda: runs.read_status(third)["state"] == "stopped", timeout=30, what="the queued stop")
        assert loss_steps(third) == []
    finally:
        workers.request_stop(first)
    wait_for(lambda: runs.read_status(second)["state"] == "finished", what="the second run to get the slot")
    assert runs.read_status(first)["state"] == "stopped"
    assert loss_steps(second) == [1, 2, 3]


def test_a_launched_worker_that_dies_before_training_reads_as_failed_at_once(tmp_path):
    run_dir = runs.create_run(RunConfig(), "broken", root=tmp_path)
    (run_dir / "config.yaml").write_text("lr: [1\n")  # the worker refuses it and exits
    pid = workers.launch(run_dir)
    assert runs.worker_alive(run_dir) or runs.read_status(run_dir)["state"] == "failed"
    # whoever reaps it; the lock goes with the last of its threads
    wait_for(lambda: not runs.pid_alive(pid) and not runs.worker_alive(run_dir), 60, "the worker to exit")
    status = runs.read_status(run_dir)  # not "queued" for two minutes: the lock says it is gone
    assert status["state"] == "failed" and "ended before training started" in status["error"]
    assert "invalid YAML" in (run_dir / "log.txt").read_text()


def test_a_mirrored_remote_run_is_not_judged_by_local_processes(tmp_path):
    run_dir = runs.create_run(RunConfig(), "on the box", root=tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no process here has any more
    runs.write_status(run_dir, state="running", pid=gone.pid, remote={})  # the box's worker is not here
    assert runs.read_status(run_dir)["state"] == "running"
    del_remote = json.loads((run_dir / "status.json").read_text())
    del del_remote["remote"]
    (run_dir / "status.json").write_text(json.dumps(del_remote))
    assert runs.read_status(run_dir)["state"] == "failed"  # a local run with that pid: gone
