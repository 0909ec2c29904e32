"""The experiment-tracking example, examples/tunelab-tracking, installed as a user would (make setup does).

It must be listed by the CLI as an entry-point plugin made only of lifecycle hooks, be in the catalog,
track a real `python -m tunelab train` to TensorBoard and MLflow (read back with their own readers, equal
to metrics.jsonl), and pass its own tests.
"""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

PACKAGE = "tunelab-tracking"
EXAMPLE = REPO / "examples" / PACKAGE
HOOKS = ["on_evaluate", "on_log", "on_train_end", "on_train_start"]

try:
    VERSION = importlib.metadata.version(PACKAGE)
except importlib.metadata.PackageNotFoundError:
    VERSION = None

pytestmark = pytest.mark.skipif(
    VERSION is None, reason=f"{PACKAGE} is not installed in this environment: run `make setup` (or "
                            f"`.venv/bin/python -m pip install --no-deps -e examples/{PACKAGE}`)")


@pytest.fixture
def env(tmp_path):
    dropped = ("TUNELAB_PLUGINS_DIR", "TUNELAB_LOAD_PLUGINS", "TUNELAB_STRICT_PLUGINS", "RANK", "MLFLOW_TRACKING_URI")
    tracking = ("TUNELAB_TRACKING", "TUNELAB_MLFLOW", "TUNELAB_TENSORBOARD")  # the plugin's own settings
    environment = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith(tracking)}
    environment.update(HF_HUB_OFFLINE="1", TUNELAB_RUNS_DIR=str(tmp_path / "runs"), MLFLOW_DISABLE_TELEMETRY="true")
    return environment


def cli(env, *args, timeout=240):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_listed_by_the_cli_as_a_lifecycle_plugin(env):
    result = cli(env, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    info = {p["name"]: p for p in json.loads(result.stdout)}[PACKAGE]
    assert (info["source"], info["status"], info["error"], info["version"]) == ("entrypoint", "loaded", None, VERSION)
    assert info["hooks"] == HOOKS
    assert not any(info["contributes"].values()) and info["clashes"] == []


def test_in_the_catalog_as_installed():
    from tunelab.core import catalog

    entry = next(e for e in catalog.with_status() if e["package"] == PACKAGE)
    assert entry["kinds"] == ["lifecycle"] and entry["install"] == f"./examples/{PACKAGE}"
    assert entry["installed"] == VERSION and entry["plugins"] == [PACKAGE]


def test_a_cli_training_run_is_tracked_in_tensorboard_and_mlflow(env, tmp_path, tiny_model, chat_file):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tunelab.core import runs

    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({"model": tiny_model, "data": {"path": str(chat_file), "val_fraction": 0.2},
                                  "max_length": 64, "max_steps": 3, "batch_size": 4, "lr": 1e-3, "eval_every": 3,
                                  "save_every": 0, "warmup_ratio": 0.0}))  # JSON is YAML
    run_dir = tmp_path / "runs" / "tracked"
    result = cli(dict(env, TUNELAB_TRACKING="tensorboard,mlflow"), "train", config, "--run-dir", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[tunelab-tracking] tensorboard: event files in" in result.stderr
    assert "failed" not in "\n".join(l for l in result.stderr.splitlines() if "[tunelab-tracking]" in l)
    rows = runs.read_metrics(run_dir)
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3] and [r["step"] for r in eval_rows] == [3]

    board = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    board.Reload()
    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlflow.db').as_posix()}")  # the default store
    [mlflow_run] = client.search_runs([client.get_experiment_by_name("tunelab").experiment_id])
    assert mlflow_run.info.status == "FINISHED" and mlflow_run.info.run_name == "tracked"
    assert mlflow_run.data.params["max_steps"] == "3" and mlflow_run.data.params["data.val_fraction"] == "0.2"
    checks = [(key, train_rows) for key in ("loss", "lr", "grad_norm", "tokens_per_s")] + [("eval_loss", eval_rows)]
    for key, written in checks:
        want = [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in written]
        assert [(e.step, e.value) for e in board.Scalars(key)] == want, key
        assert sorted((m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, key)) == want, key


def test_its_own_tests_pass():
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
