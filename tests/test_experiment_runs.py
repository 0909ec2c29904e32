"""Experiments that really run (issue 23): the engine's verbs on this machine (a driver process chains the
runs, one after another; stop stops them all; a killed driver is replaced), the CLI in the foreground,
and the Experiments page with AppTest. Each on the tiny random model: 3 values, 5 steps each, a few
seconds a run (most of it the worker's start-up)."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from tunelab.core import experiment_driver as driver
from tunelab.core import experiments as ex
from tunelab.core import runs
from tunelab.core.errors import UserError
from helpers import wait_for

REPO = Path(__file__).resolve().parent.parent
VALUES = ["1e-4", "1e-3", "0.01"]
BUDGET = 105  # at the assumed 4 s a step (no speed measured in a fresh runs folder): (35 - 14) / 4 = 5 steps


@pytest.fixture
def tiny_plan(tiny_model, chat_file):
    return {"model": str(tiny_model), "data": {"path": str(chat_file), "val_fraction": 0.25}, "max_steps": 5,
            "batch_size": 4, "max_length": 64, "eval_every": 0, "precision": "fp32", "seed": 0}


@pytest.fixture
def engine(runs_dir):
    from tunelab.core.backends.local import LocalEngine

    return LocalEngine({"standby": False})


def finished_at(run_dir) -> float:
    return datetime.fromisoformat(runs.read_status(run_dir)["finished_at"]).timestamp()


def test_the_verb_plans_sizes_and_runs_the_values_one_after_another(engine, runs_dir, tiny_plan):
    planned = engine.plan_experiment(tiny_plan, "lr", VALUES, BUDGET)
    assert planned["steps"] == 5 and not planned["speed_known"] and "5 steps each" in planned["why"]
    exp_id = engine.start_experiment(tiny_plan, "learning_rate", VALUES, BUDGET)
    folder = runs_dir / "experiments" / exp_id
    assert driver.driver_alive(folder)  # its driver: a process of its own, not this one
    record = wait_for(lambda: (r := engine.experiment(exp_id))["final"] and r, what="the experiment to end")
    assert record["state"] == "finished" and [e["state"] for e in record["runs"]] == ["finished"] * 3
    assert record["plan"]["steps"] == 5 and [e["label"] for e in record["runs"]] == VALUES
    dirs = [runs_dir / e["run_id"] for e in record["runs"]]
    for run_dir, value in zip(dirs, (1e-4, 1e-3, 1e-2)):
        cfg = runs.run_config(run_dir)
        assert (cfg.lr, cfg.max_steps, cfg.seed) == (value, 5, 0) and (run_dir / "final").is_dir()
    for earlier, later in zip(dirs, dirs[1:]):  # one after another: each created after the one before ended
        assert runs.read_status(later)["created"] >= finished_at(earlier)
    assert {r["run_id"] for r in engine.list_runs()} == {d.name for d in dirs}  # ordinary runs
    assert [e["id"] for e in engine.list_experiments()] == [exp_id]
    v = record["verdict"]
    assert v["text"] and v["best"] == "0.01" and v["score_kind"] == "validation"  # a random model: higher learns
    wait_for(lambda: not driver.driver_alive(folder), 30, what="the driver to exit")
    with pytest.raises(UserError, match="there is no experiment called 'nope'"):
        engine.experiment("nope")
    for bad in ("../x", ".hidden", ""):
        with pytest.raises(UserError, match="no experiment called"):
            engine.experiment(bad)


def test_bad_input_is_one_clear_error_before_anything_runs(engine, runs_dir, tiny_plan):
    for setting, values, budget, words in [("seed", VALUES, BUDGET, "not a setting an experiment can vary"),
                                           ("lr", ["1e-4"], BUDGET, "choose 2 to 4 values"),
                                           ("lr", ["1e-4", "fast"], BUDGET, "'fast'"),
                                           ("lr", VALUES, 60, "too short for 3 runs")]:
        with pytest.raises(UserError, match=words):
            engine.start_experiment(tiny_plan, setting, values, budget)
    assert not (runs_dir / "experiments").exists() or not any((runs_dir / "experiments").iterdir())
    assert engine.list_runs() == []


def test_stop_stops_the_running_run_and_no_further_one_starts(engine, runs_dir, tiny_plan):
    long = {**tiny_plan, "max_steps": 100000, "save_every": 0}
    exp_id = engine.start_experiment(long, "lr", VALUES, 3600)  # hundreds of steps each: stopped mid-run
    folder = runs_dir / "experiments" / exp_id
    first = wait_for(lambda: (r := engine.experiment(exp_id))["runs"][0]["run_id"]
                     and len(r["runs"][0]["rows"]) >= 3 and r["runs"][0]["run_id"], what="3 steps of the first run")
    engine.stop_experiment(exp_id)
    record = wait_for(lambda: (r := engine.experiment(exp_id))["final"] and r, 90, what="the stop")
    assert record["state"] == "stopped" and record["stopped"]
    assert [e["state"] for e in record["runs"]] == ["stopped", "pending", "pending"]
    assert record["runs"][0]["run_id"] == first and runs.latest_checkpoint(runs_dir / first)  # it saved a checkpoint
    wait_for(lambda: not driver.driver_alive(folder), 30, what="the driver to exit")
    time.sleep(2)
    assert [r["run_id"] for r in engine.list_runs()] == [first]  # nothing started after the stop
    assert driver.ensure_driver(folder, engine.experiment(exp_id)) is None  # a stopped experiment stays stopped


def test_a_killed_driver_is_replaced_by_the_next_read_and_the_experiment_goes_on(engine, runs_dir, tiny_plan):
    exp_id = engine.start_experiment(tiny_plan, "lr", VALUES, BUDGET)
    folder = runs_dir / "experiments" / exp_id
    wait_for(lambda: engine.experiment(exp_id)["runs"][0]["run_id"], what="the first run to start")
    pid = driver.driver_pid(folder)
    assert pid and "experiment-run" in " ".join(__import__("psutil").Process(pid).cmdline())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not driver.driver_alive(folder), 30, what="the driver to die")
    os.utime(folder / driver.DRIVER_LOCK, (0, 0))  # as if it had started long ago (no relaunch within 10 s)
    record = wait_for(lambda: (r := engine.experiment(exp_id))["final"] and r, what="the experiment to end")
    assert [e["state"] for e in record["runs"]] == ["finished"] * 3
    # The record is final once the replacement driver writes it; the driver exits a moment later.
    wait_for(lambda: driver.driver_pid(folder) is None, 30, what="the replacement driver to exit")


def test_cli_runs_the_values_in_the_foreground_and_writes_the_overlay(runs_dir, tiny_plan, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_plan))
    env = dict(os.environ, TUNELAB_RUNS_DIR=str(runs_dir))
    env.pop("TUNELAB_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "tunelab", "experiment", str(config), "--vary", "lr=" + ",".join(VALUES),
                           "--budget", f"{BUDGET}s"], cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "experiment on learning rate (lr): 1e-4 (about right), 1e-3 (too high), 0.01" in out
    assert "plan: 5 steps per run" in out and "why: 3 runs one after another in 105 s" in out
    ends = [line for line in out.splitlines() if ": finished at step 5 of 5; loss" in line]
    assert [line.split()[1] for line in ends] == ["1e-4:", "1e-3:", "0.01:"]
    verdict = next(line for line in out.splitlines() if line.startswith("verdict: "))
    assert "0.01 ended lowest" in verdict
    png = Path(next(line for line in out.splitlines() if line.startswith("overlay: "))[len("overlay: "):])
    assert png.parent.parent == runs_dir / "experiments" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = ex.read_experiment(png.parent)
    assert record["state"] == "finished" and record["verdict"]["text"] in verdict
    assert not driver.driver_alive(png.parent)  # the CLI was the driver, and let go


@pytest.mark.parametrize("argv, words", [
    (["--vary", "lr"], "--vary lr: expected SETTING=VALUE,VALUE"),
    (["--vary", "seed=1,2"], "'seed' is not a setting an experiment can vary"),
    (["--vary", "lr=1e-4,1e-3", "--budget", "soon"], "--budget soon: expected"),
    (["--vary", "lr=1e-4,,1e-3"], "expected SETTING=VALUE,VALUE"),
])
def test_cli_bad_input_is_exit_2_and_one_line(runs_dir, argv, words):
    proc = subprocess.run([sys.executable, "-m", "tunelab", "experiment", str(REPO / "configs" / "lesson.yaml"), *argv],
                          cwd=REPO, env=dict(os.environ, TUNELAB_RUNS_DIR=str(runs_dir)), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and words in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert not runs_dir.exists() or not any(runs_dir.glob("*/status.json"))


def test_the_overlay_png_draws_any_record(tmp_path):
    rows = [{"step": i, "loss": 3 - 0.1 * i} for i in range(1, 6)] + [{"step": 5, "eval_loss": 2.6}]
    record = {"plan": {"label": "learning rate", "steps": 5},
              "runs": [{"label": "1e-4", "rows": rows}, {"label": "1e-3", "rows": []}],
              "verdict": {"text": ""}}
    path = driver.write_overlay_png(record, tmp_path / "o.png")
    assert path.stat().st_size > 10_000


# -- the page ---------------------------------------------------------------------------------------
def test_experiments_page_picks_runs_and_shows_the_verdict_and_answers(runs_dir, tiny_plan):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.session_state["plan"] = {**tiny_plan, "max_steps": 5}
    at.run()
    at.switch_page("dashboard/experiments.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "4b · Experiments"
    assert at.selectbox(key="exp.setting").value == "lr"
    assert at.multiselect(key="exp.values").value == ["1e-5", "1e-4", "1e-3"]  # the values that teach
    assert at.number_input(key="exp.budget").value == 2.0
    at.selectbox(key="exp.setting").set_value("batch_size").run()
    assert at.multiselect(key="exp.values").value == ["1", "4", "8"]  # a new setting: its own suggestions
    at.selectbox(key="exp.setting").set_value("lr").run()
    at.multiselect(key="exp.values").set_value(VALUES).run()
    at.number_input(key="exp.budget").set_value(BUDGET / 60).run()
    assert any("3 runs, 5 steps each" in m.value for m in at.markdown), [m.value for m in at.markdown]
    assert any("An experiment: one setting" in e.label for e in at.expander)  # the concept, beside the controls
    at.button(key="exp.run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    exp_id = at.query_params["experiment"][0] if isinstance(at.query_params["experiment"], list) \
        else at.query_params["experiment"]
    assert at.button(key="exp.run").disabled and not at.button(key="exp.stop").disabled

    def verdict():
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return [s.value for s in at.success if "Verdict" in s.value]

    shown = wait_for(verdict, what="the verdict on the page", every=2)
    record = ex.read_experiment(runs_dir / "experiments" / exp_id)
    assert shown[0] == f"**Verdict.** {record['verdict']['text']}"  # core's words, not the page's
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    training = [t["name"] for t in fig["data"] if t["name"].endswith("· training")]
    assert training == ["1e-4 (about right) · training", "1e-3 (too high) · training", "0.01 · training"]
    assert [t["line"]["dash"] for t in fig["data"] if t["name"].endswith("· validation")] == ["dash"] * 3
    metrics = [m for m in at.metric if m.label.startswith("Perplexity on 4")]
    assert len(metrics) == 3 and all(float(m.value) > 0 for m in metrics)
    assert "What each model says" in [h.value for h in at.header]
    assert not at.button(key="exp.run").disabled and at.button(key="exp.stop").disabled
    made = at.session_state["exp.answers"][exp_id]
    assert sorted(made) == sorted(VALUES) and all(a["perplexity"] for a in made.values())


def test_see_it_on_set_up_training_opens_the_experiment_with_three_learning_rates(runs_dir):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=120)
    at.run()
    at.switch_page("dashboard/set_up_training.py")
    at.run()
    at.button(key="cfg.see_lr").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == "4b · Experiments"
    assert at.selectbox(key="exp.setting").value == "lr"
    assert at.multiselect(key="exp.values").value == ["1e-5", "1e-4", "1e-3"]


NO_ENGINE = """
import json
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(REPO + "/streamlit_app.py", default_timeout=60)
at.run()
at.switch_page("dashboard/experiments.py").run()
plan = [m.value for m in at.markdown if "3 runs," in m.value]
at.button(key="exp.run").click().run()
print(json.dumps({"exceptions": [str(e.value) for e in at.exception], "errors": [e.value for e in at.error],
                  "plan": plan}))
"""


def test_without_the_engine_the_page_plans_and_run_says_what_is_missing(runs_dir):
    from no_engine import without_engine

    script = without_engine(f"REPO = {str(REPO)!r}\n" + NO_ENGINE, REPO)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**os.environ, "TUNELAB_RUNS_DIR": str(runs_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert not seen["exceptions"] and seen["plan"], seen  # the plan is pure rules: the thin app shows it
    assert any("not installed here" in e and "TUNELAB_BACKEND" in e for e in seen["errors"]), seen
    assert not (runs_dir / "experiments").exists() or not any((runs_dir / "experiments").iterdir())
