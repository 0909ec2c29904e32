"""An experiment on the Ray backend (issue 23): its runs are Ray jobs submitted together, which the head
runs side by side (it has 2 CPUs), mirrored here with the experiment's record in this machine's runs
folder; stop stops them all. Reuses the real head and service of tests/test_ray_backend.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tunelab.core import runs
from tunelab.core.backends import ray as rb
from test_ray_backend import box, data_file, engine, tiny_config, wait_for  # noqa: F401 - fixtures

pytestmark = pytest.mark.ray
VALUES = ["1e-4", "1e-3", "0.01"]


def test_an_experiments_runs_are_submitted_together_as_parallel_jobs(box, engine, runs_dir, tiny_model, data_file):
    plan = tiny_config(tiny_model, data_file, max_steps=20, eval_every=0)
    exp_id = engine.start_experiment(plan, "lr", VALUES, 300)
    record = engine.experiment(exp_id)
    assert Path(record["path"]).parent == runs_dir / "experiments"  # the record lives in the client's mirror
    assert all(e["run_id"] for e in record["runs"]) and "pending" not in [e["state"] for e in record["runs"]]
    jobs = [rb.read_backend(engine.mirror_dir(e["run_id"]))["job"] for e in record["runs"]]
    known = {j["submission_id"] for j in engine.jobs.json("GET", "/api/jobs/")}
    assert set(jobs) <= known  # all three submitted before the first has ended: no driver chains them
    assert any("submitted together" in note for note in record["plan"]["notes"])
    most_at_once = 0
    while not record["final"]:
        most_at_once = max(most_at_once, sum(e["state"] == "running" for e in record["runs"]))
        time.sleep(0.5)
        record = engine.experiment(exp_id)
    assert most_at_once >= 2, "the box never ran two of the runs side by side"
    assert record["state"] == "finished" and [e["state"] for e in record["runs"]] == ["finished"] * 3
    assert all(len([r for r in e["rows"] if "loss" in r]) == 20 for e in record["runs"])
    assert record["verdict"]["text"] and record["verdict"]["best"] == "0.01"
    for e, job in zip(record["runs"], jobs):
        wait_for(lambda: engine.jobs.json("GET", f"/api/jobs/{job}")["status"] == "SUCCEEDED", 60,
                 what=f"job {job} to succeed")  # the run has finished; its process may still be exiting
        box_dir = Path(rb.read_backend(engine.mirror_dir(e["run_id"]))["box_run_dir"])
        assert runs.read_metrics(box_dir) == e["rows"]  # the mirror holds every row the box has
    assert [x["id"] for x in engine.list_experiments()] == [exp_id]


def test_stopping_an_experiment_on_the_ray_backend_stops_every_job(box, engine, runs_dir, tiny_model, data_file):
    plan = tiny_config(tiny_model, data_file, max_steps=100000, eval_every=0, save_every=0)
    exp_id = engine.start_experiment(plan, "lr", VALUES, 3600)
    wait_for(lambda: any(len(e["rows"]) >= 3 for e in engine.experiment(exp_id)["runs"]), 180, what="a run's rows")
    engine.stop_experiment(exp_id)
    record = wait_for(lambda: (r := engine.experiment(exp_id))["final"] and r, 180, what="every run to end")
    assert record["state"] == "stopped" and record["stopped"]
    assert "finished" not in [e["state"] for e in record["runs"]]
    for e in record["runs"]:
        job = rb.read_backend(engine.mirror_dir(e["run_id"]))["job"]
        wait_for(lambda: engine.jobs.json("GET", f"/api/jobs/{job}")["status"] in rb.TERMINAL_JOB, 120,
                 what=f"job {job} to end")
