"""Tests of tunelab-tracking against the real libraries: every metric written through the plugin
is read back with TensorBoard's ``EventAccumulator`` or ``MlflowClient`` (a local SQLite store).

Run from a TuneLab checkout (``python -m pytest examples/tunelab-tracking/tests``), or where TuneLab is
installed as a package (``pytest tests``). Offline.
"""

import json
import math
from types import SimpleNamespace

import pytest

import tunelab_tracking as plugin
from tunelab_tracking import hooks

pytest_plugins = ["tunelab.core.testing"]

CONFIG = {"model": "tiny", "data": {"path": "sums.json", "params": {}}, "lora": {"r": 8, "target_modules": []},
          "lr": 0.001, "max_steps": 3, "gradient_checkpointing": False}
ROWS = [{"step": s, "epoch": s / 2, "loss": 3.0 - s / 4, "lr": 0.001 * s, "grad_norm": 1.0 + s / 10,
         "tokens_per_s": 1000.0 + s, "elapsed_s": 0.5 * s, "tokens": 128 * s} for s in (1, 2, 3)]
EVAL = {"step": 2, "epoch": 1.0, "eval_loss": 2.25, "eval_ppl": round(math.exp(2.25), 3), "elapsed_s": 1.1}
VARIABLES = ("TUNELAB_TRACKING", "TUNELAB_TENSORBOARD_DIR", "TUNELAB_MLFLOW_TRACKING_URI", "TUNELAB_MLFLOW_EXPERIMENT",
             "MLFLOW_TRACKING_URI", "RANK")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory):
    """One SQLite store for the session: creating its tables takes MLflow a couple of seconds."""
    return f"sqlite:///{(tmp_path_factory.mktemp('mlflow') / 'mlflow.db').as_posix()}"


@pytest.fixture
def use_mlflow(monkeypatch, mlflow_uri, request):
    """MLflow only, in a fresh experiment named after the test; returns a function reading its one run."""
    experiment = request.node.name
    monkeypatch.setenv("TUNELAB_TRACKING", "mlflow")
    monkeypatch.setenv("TUNELAB_MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("TUNELAB_MLFLOW_EXPERIMENT", experiment)
    return lambda: mlflow_runs(mlflow_uri, experiment)


def fake_run(tmp_path, start_step=0, name="run-1"):
    run_dir = tmp_path / name
    run_dir.mkdir(exist_ok=True)
    return {"run_dir": str(run_dir), "config": CONFIG, "total_steps": 3, "start_step": start_step}


def train_by_hand(run, rows=ROWS, evaluation=EVAL, state="finished"):
    """What core.train does, without a model: the four hooks in order."""
    plugin.on_train_start(run=run)
    for row in rows:
        plugin.on_log(run=run, metrics=row)
        if evaluation and row["step"] == evaluation["step"]:
            plugin.on_evaluate(run=run, metrics=evaluation)
    plugin.on_train_end(run=run, result={"state": state, "step": rows[-1]["step"], "error": None,
                                         "final_dir": None})


# -- reading back, through each library's own reader ------------------------------------------------

def tensorboard_run(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    scalars = {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    texts = {tag.split("/")[0]: accumulator.Tensors(tag)[-1].tensor_proto.string_val[0].decode()
             for tag in accumulator.Tags()["tensors"]}
    return SimpleNamespace(scalars=scalars, texts=texts)


def mlflow_runs(uri, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return [SimpleNamespace(info=r.info, params=r.data.params, tags=r.data.tags,
                            history={key: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)]
                                     for key in r.data.metrics})
            for r in runs]


def expected(key, rows=ROWS):
    return [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in rows]


# -- the plugin ------------------------------------------------------------------------------------

def test_registers_the_four_lifecycle_hooks(register_plugin):
    with register_plugin(plugin, name="tunelab-tracking") as registry:
        info = {p["name"]: p for p in registry.listing()}["tunelab-tracking"]
    assert info["status"] == "loaded" and not info["clashes"]
    assert info["hooks"] == ["on_evaluate", "on_log", "on_train_end", "on_train_start"]
    assert not any(info["contributes"].values())  # it adds no formats, samplers, ...: it watches runs


@pytest.mark.parametrize("env, chosen", [
    ({}, ["tensorboard"]),  # both installed here: TensorBoard is the zero-configuration default
    ({"TUNELAB_MLFLOW_TRACKING_URI": "sqlite:///x.db"}, ["mlflow"]),
    ({"TUNELAB_TENSORBOARD_DIR": "/tb", "TUNELAB_MLFLOW_TRACKING_URI": "http://mlflow:5000"},
     ["tensorboard", "mlflow"]),
    ({"TUNELAB_TRACKING": "mlflow, tensorboard"}, ["mlflow", "tensorboard"]),
    ({"TUNELAB_TRACKING": "off", "TUNELAB_TENSORBOARD_DIR": "/tb"}, []),
    ({"TUNELAB_TRACKING": ""}, []),
])
def test_choose_backends(env, chosen):
    assert hooks.choose_backends(env) == chosen


def test_unknown_backend_is_reported_and_ignored(capsys):
    assert hooks.choose_backends({"TUNELAB_TRACKING": "wandb,tensorboard"}) == ["tensorboard"]
    assert "unknown backend 'wandb'" in capsys.readouterr().err


def test_no_tracker_installed_is_said_not_fatal(monkeypatch, capsys):
    monkeypatch.setattr(hooks, "installed", lambda: [])
    assert hooks.choose_backends({}) == []
    assert "neither tensorboard nor mlflow is installed" in capsys.readouterr().err


def test_defaults_live_under_the_run_folder(tmp_path):
    run = fake_run(tmp_path)
    s = hooks.settings(run, {})
    assert s.tensorboard_dir == tmp_path / "run-1" / "tensorboard"
    assert s.mlflow_uri == f"sqlite:///{(tmp_path / 'run-1' / 'mlflow.db').as_posix()}"
    assert s.mlflow_experiment == "tunelab"
    shared = hooks.settings(run, {"TUNELAB_TENSORBOARD_DIR": str(tmp_path / "tb"), "MLFLOW_TRACKING_URI": "http://x"})
    assert shared.tensorboard_dir == tmp_path / "tb" / "run-1"  # one sub-folder per run, side by side
    assert shared.mlflow_uri == "http://x"  # a team's own MLflow server is honoured


def test_flatten_and_numeric():
    assert hooks.flatten(CONFIG)["lora.r"] == "8"
    assert hooks.flatten(CONFIG)["data.params"] == "{}"
    assert hooks.flatten(CONFIG)["gradient_checkpointing"] == "false"
    assert hooks.numeric({"step": 3, "loss": 1, "flag": True, "note": "x", "none": None}) == {"loss": 1.0}


# -- TensorBoard -----------------------------------------------------------------------------------

def test_tensorboard_logs_every_row_at_its_step(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNELAB_TRACKING", "tensorboard")
    run = fake_run(tmp_path)
    train_by_hand(run)
    logdir = tmp_path / "run-1" / "tensorboard"
    read = tensorboard_run(logdir)
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "epoch", "elapsed_s", "tokens"):
        assert read.scalars[key] == expected(key), key
    assert read.scalars["eval_loss"] == [(2, pytest.approx(2.25))]
    assert read.scalars["eval_ppl"] == [(2, pytest.approx(EVAL["eval_ppl"]))]
    assert len(read.scalars["epoch"]) == 3  # the evaluation row's position is not logged twice
    assert "| lora.r | 8 |" in read.texts["config"] and "| lr | 0.001 |" in read.texts["config"]
    assert "**finished** at step 3" in read.texts["result"]
    assert json.loads((tmp_path / "run-1" / "tracking.json").read_text()) == {"tensorboard": {"logdir": str(logdir)}}
    assert f"tensorboard --logdir {logdir}" in capsys.readouterr().err
    assert hooks._trackers == {}  # closed and forgotten


def test_tensorboard_resume_replaces_the_steps_trained_again(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_TRACKING", "tensorboard")
    train_by_hand(fake_run(tmp_path), evaluation=None, state="stopped")  # steps 1-3, checkpoint at step 1
    again = [dict(r, loss=r["loss"] + 10) for r in ROWS[1:]]
    train_by_hand(fake_run(tmp_path, start_step=1), rows=again, evaluation=None)
    read = tensorboard_run(tmp_path / "run-1" / "tensorboard")
    assert read.scalars["loss"] == expected("loss", ROWS[:1] + again)


def test_shared_tensorboard_folder_gets_a_sub_folder_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_TENSORBOARD_DIR", str(tmp_path / "tb"))
    train_by_hand(fake_run(tmp_path, name="a"))
    train_by_hand(fake_run(tmp_path, name="b"))
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["a", "b"]
    assert tensorboard_run(tmp_path / "tb" / "b").scalars["loss"] == expected("loss")


# -- MLflow ----------------------------------------------------------------------------------------

def test_mlflow_logs_params_metrics_and_the_outcome(tmp_path, use_mlflow):
    run = fake_run(tmp_path)
    train_by_hand(run)
    [found] = use_mlflow()
    assert found.info.status == "FINISHED" and found.info.run_name == "run-1"
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "epoch", "elapsed_s", "tokens"):
        assert sorted(found.history[key]) == expected(key), key
    assert found.history["eval_loss"] == [(2, 2.25)] and found.history["eval_ppl"] == [(2, EVAL["eval_ppl"])]
    assert found.params["lr"] == "0.001" and found.params["lora.r"] == "8" and found.params["data.path"] == "sums.json"
    assert found.tags["tunelab.run_dir"] == run["run_dir"] and found.tags["tunelab.state"] == "finished"
    saved = json.loads((tmp_path / "run-1" / "tracking.json").read_text())["mlflow"]
    assert saved["run_id"] == found.info.run_id


def test_mlflow_resume_continues_the_same_run(tmp_path, use_mlflow):
    train_by_hand(fake_run(tmp_path), rows=ROWS[:2], evaluation=None, state="stopped")
    [stopped] = use_mlflow()
    assert stopped.info.status == "KILLED"
    train_by_hand(fake_run(tmp_path, start_step=2), rows=ROWS[2:], evaluation=None)
    [resumed] = use_mlflow()
    assert resumed.info.run_id == stopped.info.run_id and resumed.info.status == "FINISHED"
    assert sorted(resumed.history["loss"]) == expected("loss")


def test_mlflow_default_store_is_a_sqlite_file_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_TRACKING", "mlflow")
    train_by_hand(fake_run(tmp_path), evaluation=None)
    [found] = mlflow_runs(f"sqlite:///{(tmp_path / 'run-1' / 'mlflow.db').as_posix()}", "tunelab")
    assert sorted(found.history["loss"]) == expected("loss")


def test_a_failed_run_is_marked_failed_with_its_error(tmp_path, use_mlflow):
    run = fake_run(tmp_path)
    plugin.on_train_start(run=run)
    plugin.on_log(run=run, metrics=ROWS[0])
    plugin.on_train_end(run=run, result={"state": "failed", "step": 1, "error": "out of memory", "final_dir": None})
    [found] = use_mlflow()
    assert found.info.status == "FAILED" and found.tags["tunelab.error"] == "out of memory"


# -- failures are reported, never raised -------------------------------------------------------------

def test_a_backend_that_cannot_start_is_reported_and_the_other_still_logs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TUNELAB_TRACKING", "mlflow,tensorboard")
    monkeypatch.setenv("TUNELAB_MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    train_by_hand(fake_run(tmp_path))
    err = capsys.readouterr().err
    assert "[tunelab-tracking] mlflow: could not start" in err and "training continues without it" in err
    assert tensorboard_run(tmp_path / "run-1" / "tensorboard").scalars["loss"] == expected("loss")


def test_a_backend_failing_mid_run_is_reported_once_and_dropped(tmp_path, monkeypatch, capsys):
    from tunelab_tracking.tensorboard_backend import TensorBoardBackend

    monkeypatch.setenv("TUNELAB_TRACKING", "tensorboard")
    calls = []

    def broken(self, step, values):
        calls.append(step)
        raise OSError("disk full")

    monkeypatch.setattr(TensorBoardBackend, "log", broken)
    train_by_hand(fake_run(tmp_path))  # must not raise
    assert calls == [1]  # dropped after the first failure: no error per step
    err = capsys.readouterr().err
    assert err.count("disk full") == 1 and "tensorboard tracking stops for this run, training continues" in err
    assert hooks._trackers == {}


def test_only_the_main_process_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_TRACKING", "tensorboard")
    monkeypatch.setenv("RANK", "1")  # a second GPU's process under accelerate launch
    train_by_hand(fake_run(tmp_path))
    assert not (tmp_path / "run-1" / "tensorboard").exists()


def test_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_TRACKING", "off")
    train_by_hand(fake_run(tmp_path))
    assert [p.name for p in (tmp_path / "run-1").iterdir()] == []


# -- a real training run ---------------------------------------------------------------------------

def test_a_real_run_is_tracked_in_both(tmp_path, monkeypatch, register_plugin, tiny_model_dir, mlflow_uri):
    """core.train trains a tiny model for 3 steps with the plugin registered; both trackers hold metrics.jsonl."""
    from tunelab.core import runs, train
    from tunelab.core.config import RunConfig

    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
            for a in range(5) for b in range(4)]
    (tmp_path / "sums.json").write_text(json.dumps(rows))
    cfg = RunConfig.from_dict({"model": tiny_model_dir, "data": {"path": str(tmp_path / "sums.json"),
                                                                  "val_fraction": 0.2},
                               "max_length": 64, "max_steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 3,
                               "save_every": 0, "warmup_ratio": 0.0})
    monkeypatch.setenv("TUNELAB_TRACKING", "tensorboard,mlflow")
    monkeypatch.setenv("TUNELAB_MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("TUNELAB_MLFLOW_EXPERIMENT", "end-to-end")
    with register_plugin(plugin, name="tunelab-tracking") as registry:
        result = train.train(cfg, tmp_path / "run", registry=registry)
    assert result["state"] == "finished", result
    written = runs.read_metrics(tmp_path / "run")
    train_rows = [r for r in written if "loss" in r]
    eval_rows = [r for r in written if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3] and [r["step"] for r in eval_rows] == [3]

    board = tensorboard_run(tmp_path / "run" / "tensorboard")
    [tracked] = mlflow_runs(mlflow_uri, "end-to-end")
    assert tracked.info.status == "FINISHED" and tracked.params["max_steps"] == "3"
    for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert board.scalars[key] == expected(key, train_rows), key
        assert sorted(tracked.history[key]) == expected(key, train_rows), key
    assert board.scalars["eval_loss"] == expected("eval_loss", eval_rows)
    assert tracked.history["eval_loss"] == expected("eval_loss", eval_rows)
    assert "plugin_errors" not in runs.read_status(tmp_path / "run")
