"""Data parallelism (``workers: N``): the group's data split, and real groups on Ray Train.

The unit tests need no Ray. The ``ray`` tests start a real local Ray (the local backend's private one,
or the Ray backend's head with token auth and the service, as the README starts them).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.core import plan, runs, train, workers
from tunelab.core.config import RunConfig
from tunelab.core.errors import UserError
from tunelab.core.paths import REPO_ROOT
from helpers import wait_for
from test_ray_backend import box, data_file, engine, tiny_config  # noqa: F401 - the Ray tests' fixtures


def fake_examples(n: int) -> list[dict]:
    return [{"input_ids": [1] * (5 + i % 7), "labels": [1] * (5 + i % 7)} for i in range(n)]


def test_two_workers_take_the_batches_of_one_worker_with_two_micro_batches_each_step():
    examples = fake_examples(13)  # 7 batches of 2: an odd count, so steps cross the epoch boundary
    one = RunConfig(batch_size=2, grad_accum=2)
    two = RunConfig(batch_size=2, grad_accum=1, workers=2)
    single = train.micro_batches(examples, one, 0, 0, 0)
    ranks = [train.micro_batches(examples, two, 0, 0, 0, rank, 2) for rank in (0, 1)]
    for step in range(10):  # 20 micro-batches: almost three epochs
        a, b = next(single), next(single)
        r0, r1 = next(ranks[0]), next(ranks[1])
        assert a[2]["input_ids"].tolist() == r0[2]["input_ids"].tolist(), step
        assert b[2]["input_ids"].tolist() == r1[2]["input_ids"].tolist(), step
        # every rank saves the position one worker would: where the step's last micro-batch ends
        assert r0[:2] == r1[:2] == b[:2], step


def test_a_group_resumes_from_the_saved_position_on_every_rank():
    examples = fake_examples(13)
    two = RunConfig(batch_size=2, workers=2)
    streams = [train.micro_batches(examples, two, 0, 0, 0, rank, 2) for rank in (0, 1)]
    for _ in range(5):  # five steps, then "stop" at the position rank 0 saves
        saved = next(streams[0])[:2]
        next(streams[1])
    rest = [next(streams[rank])[2]["input_ids"].tolist() for rank in (0, 1)]
    resumed = [train.micro_batches(examples, two, 0, saved[0], saved[1], rank, 2) for rank in (0, 1)]
    assert [next(resumed[rank])[2]["input_ids"].tolist() for rank in (0, 1)] == rest


def test_the_effective_batch_and_the_steps_count_every_worker():
    cfg = RunConfig(batch_size=4, grad_accum=2, workers=3)
    assert cfg.effective_batch == 24
    assert cfg.steps_per_epoch(240) == 10
    summary = plan.plan_summary({"batch_size": 4, "grad_accum": 2, "workers": 3}, 240, 100, 1000.0)
    assert summary["effective_batch"] == 24 and summary["workers"] == 3
    one = plan.plan_summary({"batch_size": 4, "grad_accum": 2}, 240, 100, 1000.0)
    assert one["total_steps"] == 3 * summary["total_steps"]


def test_more_workers_than_the_cluster_holds_are_refused_naming_what_it_has():
    assert plan.check_resources(2, gpus=4, cpus=8) is True  # GPUs there: one per rank
    assert plan.check_resources(2, gpus=0, cpus=2) is False  # CPU processes
    with pytest.raises(UserError, match="asks for 8 GPUs, one per worker, but the cluster has 4"):
        plan.check_resources(8, gpus=4, cpus=64)
    with pytest.raises(UserError, match="3 CPU processes, but the cluster has 2 CPUs"):
        plan.check_resources(3, gpus=0, cpus=2)
    with pytest.raises(UserError, match="workers"):
        RunConfig.from_dict({"workers": 0})


# -- real groups on a local Ray ---------------------------------------------------------------------

def write_config(path: Path, tiny_model, data_file, **changes) -> Path:
    config = {"model": str(tiny_model), "data": {"path": str(data_file), "val_fraction": 0}, "max_length": 64,
              "batch_size": 2, "max_steps": 6, "precision": "fp32", "lr": 1e-3, "eval_every": 0, "seed": 0}
    config.update(changes)
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def losses(run_dir) -> dict:
    return {r["step"]: r["loss"] for r in runs.read_metrics(run_dir) if "loss" in r}


@pytest.mark.ray
def test_two_workers_give_the_curve_of_one_worker_with_twice_the_accumulation(tiny_model, data_file, tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_model, data_file)
    one = cli("train", config, "--run-dir", tmp_path / "one", "--set", "workers=1", "--set", "grad_accum=2",
              env={"TUNELAB_RUNS_DIR": str(tmp_path)})
    two = cli("train", config, "--run-dir", tmp_path / "two", "--set", "workers=2", "--set", "grad_accum=1",
              env={"TUNELAB_RUNS_DIR": str(tmp_path)})
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(abs(a[s] - b[s]) <= 0.01 * abs(a[s]) for s in a), (a, b)
    # the driver echoed rank 0's rows on stdout, as one process prints its own (a Ray Job's log carries them)
    echoed = runs.parse_metrics_lines(two.stdout.splitlines())
    assert [r["step"] for r in echoed] == [1, 2, 3, 4, 5, 6]
    status = runs.read_status(tmp_path / "two")
    assert status["state"] == "finished" and status["workers"] == 2
    assert (tmp_path / "two" / "final" / "config.json").is_file()


@pytest.mark.ray
def test_a_stopped_group_resumes_with_contiguous_steps_on_every_rank(tiny_model, data_file, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(tmp_path))
    cfg = RunConfig.from_dict(json.loads(write_config(tmp_path / "c.yaml", tiny_model, data_file, max_steps=400,
                                                      workers=2).read_text()))
    run_dir = workers.start(cfg, "group")
    wait_for(lambda: len(losses(run_dir)) >= 3, 240, what="the group's first rows")
    workers.request_stop(run_dir)
    wait_for(lambda: runs.read_status(run_dir)["state"] == "stopped" and not workers.worker_pid(run_dir), 120,
             what="the group to stop")
    stopped_at = max(losses(run_dir))
    assert runs.latest_checkpoint(run_dir).name == f"step-{stopped_at}"
    text = (run_dir / "config.yaml").read_text().replace("max_steps: 400", f"max_steps: {stopped_at + 3}")
    (run_dir / "config.yaml").write_text(text)
    workers.launch(run_dir, resume=True)
    wait_for(lambda: runs.read_status(run_dir)["state"] in ("finished", "failed"), 240, what="the resumed group")
    status = runs.read_status(run_dir)
    assert status["state"] == "finished", status.get("error")
    assert sorted(losses(run_dir)) == list(range(1, stopped_at + 4))  # 1..N, nothing lost or repeated


# -- the same group through the Ray backend: a head with token auth and the TuneLab service -------------


@pytest.mark.ray
def test_through_the_ray_backend_a_group_matches_one_worker_and_resumes(box, engine, tiny_model, data_file,
                                                                         tmp_path):
    client = tmp_path / "client"
    env = {"TUNELAB_BACKEND": "ray", "TUNELAB_RAY_ADDRESS": box["address"], "TUNELAB_RAY_TOKEN": box["token"],
           "TUNELAB_RAY_SERVICE": box["service"], "TUNELAB_RUNS_DIR": str(client)}
    config = write_config(tmp_path / "c.yaml", tiny_model, data_file)
    done = {}
    for name, sets in (("one", ["workers=1", "grad_accum=2"]), ("two", ["workers=2", "grad_accum=1"])):
        proc = cli("train", config, "--run-dir", client / name, "--set", sets[0], "--set", sets[1], env=env,
                   timeout=400)
        assert proc.returncode == 0, proc.stderr[-2000:]
        done[name] = losses(client / name)  # the mirror: rank 0's rows, carried by the job's log
    assert sorted(done["one"]) == sorted(done["two"]) == [1, 2, 3, 4, 5, 6]
    assert all(abs(done["one"][s] - done["two"][s]) <= 0.01 * abs(done["one"][s]) for s in done["one"]), done

    # a group stopped through the backend resumes, every rank from the same checkpoint
    run_id = engine.start_run(tiny_config(tiny_model, data_file, max_steps=100000, eval_every=0, batch_size=2,
                                          workers=2), name="group")
    rows = lambda: [r["step"] for r in engine.run_metrics(run_id) if "loss" in r]  # noqa: E731
    wait_for(lambda: len(rows()) >= 3, 300, what="the group's rows")
    engine.stop_run(run_id, wait=True)
    stopped = wait_for(lambda: (p := engine.run_progress(run_id))["state"] == "stopped" and p, 120, what="stopped")
    engine.resume_run(run_id)
    wait_for(lambda: len(rows()) >= stopped["step"] + 3, 300, what="rows after the resume")
    engine.stop_run(run_id, wait=True)
    wait_for(lambda: engine.run_progress(run_id)["state"] == "stopped", 120, what="stopped again")
    steps = rows()
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped["step"]


def test_a_group_the_cluster_cannot_hold_is_refused_before_a_job_is_submitted(monkeypatch):
    from tunelab.core.backends import ray as rb

    engine = rb.RayEngine({"address": "http://127.0.0.1:9", "token": "t", "service": "http://127.0.0.1:9"})
    monkeypatch.setattr(engine, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    sent = []
    monkeypatch.setattr(engine, "_submit", lambda *a, **k: sent.append(a))
    with pytest.raises(UserError, match="asks for 2 GPUs, one per worker, but the cluster has 1"):
        engine.start_run({"workers": 2})
    assert not sent


def test_set_up_training_offers_workers_and_explains_data_parallelism(embedded_dir):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO_ROOT / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("dashboard/set_up_training.py").run()
    assert not at.exception, [e.value for e in at.exception]
    slider = next(s for s in at.select_slider if s.key == "cfg.workers")
    slider.set_value(2).run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(m.value for m in at.markdown)
    assert "Effective batch: **16** examples per optimizer step (8 × 1 × 2 workers)" in text
    assert "Data parallelism (workers)" in " ".join(e.label for e in at.expander) + text
