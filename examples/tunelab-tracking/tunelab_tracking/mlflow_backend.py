"""MLflow: one MLflow run per TuneLab run, through ``MlflowClient``.

The explicit client, not the fluent ``mlflow.start_run()``: the fluent API keeps one global
active run and tracking URI per process, which would clash with a user's own MLflow code and
with a process that trains several runs. Any store MLflow supports works (a server over http,
Databricks, a SQLite file); the default is ``sqlite:///<run folder>/mlflow.db``.
View with ``mlflow ui --backend-store-uri <uri>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .hooks import flatten, read_state

STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}
BATCH = 100  # MLflow accepts at most 100 params per log_batch
MAX_PARAM = 6000  # and values up to 6000 characters (tags: 8000)
MAX_PENDING = 50  # asynchronous metric batches in flight before we wait for them


class MlflowBackend:
    name = "mlflow"

    def __init__(self, uri: str, experiment: str):
        self.uri, self.experiment = uri, experiment
        self.client = self.run_id = None
        self.pending = []

    def start(self, run: dict) -> str:
        # MLflow 3 sends usage telemetry by default; a training worker makes no calls nobody asked
        # for (TuneLab runs offline). MLFLOW_DISABLE_TELEMETRY=false in the environment wins.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            experiment_id = self.client.create_experiment(self.experiment)
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":  # deleted in the UI: bring it back rather than fail
                self.client.restore_experiment(experiment_id)
        self.run_id = self._resumed(run)
        if self.run_id is None:
            run_dir = str(run["run_dir"])
            created = self.client.create_run(experiment_id, run_name=Path(run_dir).name,
                                             tags={"tunelab.run_dir": run_dir,
                                                   "tunelab.total_steps": str(run.get("total_steps"))})
            self.run_id = created.info.run_id
            self._log_params(flatten(run.get("config") or {}))
        return (f"run {self.run_id} in experiment '{self.experiment}' at {self.uri} "
                f"(view: mlflow ui --backend-store-uri {self.uri})")

    def _resumed(self, run: dict) -> str | None:
        """On resume, the MLflow run this TuneLab run started (its id is in the run folder's tracking.json)."""
        if not run.get("start_step"):
            return None
        saved = read_state(run["run_dir"]).get("mlflow") or {}
        if saved.get("tracking_uri") != self.uri or not saved.get("run_id"):
            return None
        try:
            self.client.get_run(saved["run_id"])
        except Exception:  # noqa: BLE001 - gone from the store: start a new MLflow run
            return None
        self.client.update_run(saved["run_id"], status="RUNNING")
        return saved["run_id"]

    def _log_params(self, flat: dict[str, str]) -> None:
        from mlflow.entities import Param

        params = [Param(key, value[:MAX_PARAM]) for key, value in flat.items()]
        for i in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[i:i + BATCH])

    def state(self) -> dict:
        return {"tracking_uri": self.uri, "experiment": self.experiment, "run_id": self.run_id}

    def log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(key, value, timestamp, step) for key, value in values.items()]
        # synchronous=False queues the batch on MLflow's own thread: a slow store (a remote
        # server) does not slow the training loop. end() waits for the queue.
        self.pending.append(self.client.log_batch(self.run_id, metrics=metrics, synchronous=False))
        if len(self.pending) >= MAX_PENDING:
            self.wait()

    def wait(self) -> None:
        """Wait for the queued batches; the first one that failed raises here."""
        pending, self.pending = self.pending, []
        for operation in pending:
            operation.wait()

    def end(self, result: dict) -> None:
        self.wait()
        tags = {"tunelab.state": str(result.get("state")), "tunelab.step": str(result.get("step"))}
        if result.get("error"):
            tags["tunelab.error"] = str(result["error"])[:5000]
        if result.get("final_dir"):
            tags["tunelab.final_dir"] = str(result["final_dir"])
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)
        self.client.set_terminated(self.run_id, status=STATUS.get(result.get("state"), "FAILED"))
        self.close()

    def close(self) -> None:
        self.pending = []
