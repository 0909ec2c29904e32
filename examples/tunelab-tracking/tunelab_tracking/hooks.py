"""The four lifecycle hooks, the settings read from the environment, and the fan-out to backends.

TuneLab calls each hook with ``run``, a dict: ``run_dir``, ``config`` (the run config as a
plain dict), ``total_steps`` and ``start_step`` (0 for a fresh run, the checkpoint's step on
resume). One process may train several runs one after another, so the open trackers are kept
per ``run_dir``.

A tracking failure never reaches training: every hook catches it, prints one
``[tunelab-tracking]`` line on stderr (the run's ``log.txt``) and stops that backend for the
rest of the run; the other backend and the training carry on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")

BACKENDS = ("tensorboard", "mlflow")
OFF = ("", "off", "none", "0", "false")
# Bookkeeping columns: ``step`` is the x axis, not a metric. An evaluation row repeats the
# position columns that the training row of the same step already logged.
NOT_METRICS = {"step"}
POSITION = {"epoch", "elapsed_s", "tokens"}
STATE_FILE = "tracking.json"  # in the run folder: where this run is tracked (and MLflow's run id, to resume it)

_trackers: dict[str, "_Tracker"] = {}


def report(message: str) -> None:
    """One line on stderr: a training worker's stderr is the run's log.txt."""
    print(f"[tunelab-tracking] {message}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------------

@dataclass
class Settings:
    """Where this run is tracked, read from ``TUNELAB_*`` variables (see the README)."""

    backends: list[str]
    tensorboard_dir: Path
    mlflow_uri: str
    mlflow_experiment: str


def choose_backends(env=None) -> list[str]:
    """The backends ``TUNELAB_TRACKING`` names (``tensorboard``, ``mlflow``, both comma-separated,
    or ``off``). Unset: those whose own variable is set (``TUNELAB_TENSORBOARD_DIR``,
    ``TUNELAB_MLFLOW_TRACKING_URI``), else TensorBoard if it is installed, else MLflow."""
    env = os.environ if env is None else env
    value = env.get("TUNELAB_TRACKING")
    if value is not None:
        if value.strip().lower() in OFF:
            return []
        names = []
        for name in (n.strip().lower() for n in value.split(",")):
            if name in BACKENDS and name not in names:
                names.append(name)
            elif name and name not in BACKENDS:
                report(f"TUNELAB_TRACKING: unknown backend {name!r} ignored (use {', '.join(BACKENDS)} or off)")
        return names
    named = [b for b, var in (("tensorboard", "TUNELAB_TENSORBOARD_DIR"), ("mlflow", "TUNELAB_MLFLOW_TRACKING_URI"))
             if env.get(var)]
    if named:
        return named
    found = installed()
    if not found:
        report("neither tensorboard nor mlflow is installed: this run is not tracked "
               "(pip install tensorboard, or 'tunelab-tracking[mlflow]'; TUNELAB_TRACKING=off to silence this)")
    return found[:1]


def installed() -> list[str]:
    """The tracking libraries importable here (looked up, not imported: that waits for a run)."""
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def settings(run: dict, env=None) -> Settings:
    """The settings for ``run``, with the defaults under its run folder."""
    env = os.environ if env is None else env
    run_dir = Path(run["run_dir"]).resolve()
    # A shared TensorBoard folder gets one sub-folder per run, so `tensorboard --logdir` compares them.
    shared = env.get("TUNELAB_TENSORBOARD_DIR")
    tensorboard_dir = Path(shared).expanduser().resolve() / run_dir.name if shared else run_dir / "tensorboard"
    # A team's MLFLOW_TRACKING_URI (its server) is honoured; without one, a SQLite file in the run folder.
    uri = env.get("TUNELAB_MLFLOW_TRACKING_URI") or env.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(run_dir / 'mlflow.db').as_posix()}"
    return Settings(backends=choose_backends(env), tensorboard_dir=tensorboard_dir, mlflow_uri=uri,
                    mlflow_experiment=env.get("TUNELAB_MLFLOW_EXPERIMENT") or "tunelab")


def is_main_process(env=None) -> bool:
    """True except on the non-zero ranks of a multi-GPU run: every process calls the hooks, one logs."""
    env = os.environ if env is None else env
    return env.get("RANK", "0") in ("", "0")


# -- rows to metrics and params ------------------------------------------------------------------

def numeric(row: dict, skip=()) -> dict[str, float]:
    """The numeric columns of a metrics row, as floats (booleans, strings and None are left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in NOT_METRICS and k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """A nested run config as flat ``"lora.r": "16"`` strings, the shape of MLflow params."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def read_state(run_dir) -> dict:
    try:
        return json.loads((Path(run_dir) / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_state(run_dir, state: dict) -> None:
    path = Path(run_dir) / STATE_FILE
    path.write_text(json.dumps(state, indent=2), encoding="utf-8")


# -- the fan-out ---------------------------------------------------------------------------------

def make_backend(name: str, s: Settings):
    """A backend object: ``start(run) -> str`` (where it logs), ``log(step, values)``, ``end(result)``, ``close()``."""
    if name == "tensorboard":
        from .tensorboard_backend import TensorBoardBackend

        return TensorBoardBackend(s.tensorboard_dir)
    from .mlflow_backend import MlflowBackend

    return MlflowBackend(s.mlflow_uri, s.mlflow_experiment)


class _Tracker:
    """The backends of one run. A backend that fails is reported once, closed and dropped."""

    def __init__(self, backends):
        self.backends = list(backends)

    def call(self, method: str, *args) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as exc:  # noqa: BLE001 - tracking must never stop training
                self.drop(backend, method, exc)

    def drop(self, backend, method: str, exc: Exception) -> None:
        report(f"{backend.name}: {method} failed ({type(exc).__name__}: {exc}); {backend.name} tracking stops "
               f"for this run, training continues")
        if backend in self.backends:
            self.backends.remove(backend)
        close_quietly(backend)


def close_quietly(backend) -> None:
    """Release what a failed backend holds (a writer, a queue); its failure is already reported."""
    try:
        backend.close()
    except Exception:  # noqa: BLE001
        pass


@hookimpl
def on_train_start(run):
    """Open each chosen backend and log the run config as params (MLflow) or a text summary (TensorBoard)."""
    try:
        if not is_main_process():
            return
        s = settings(run)
        old = _trackers.pop(run["run_dir"], None)
        if old is not None:  # a start without an end (a crash in this process): close what it left open
            old.call("close")
        tracker = _Tracker([])
        state = read_state(run["run_dir"])  # kept for a backend that fails to start now: a later resume finds it
        for name in s.backends:
            backend = None
            try:
                backend = make_backend(name, s)
                where = backend.start(run)
            except Exception as exc:  # noqa: BLE001 - e.g. the library is missing, the server is down
                report(f"{name}: could not start ({type(exc).__name__}: {exc}); training continues without it")
                if backend is not None:
                    close_quietly(backend)
                continue
            tracker.backends.append(backend)
            state[name] = backend.state()
            report(f"{name}: {where}")
        if tracker.backends:
            _trackers[run["run_dir"]] = tracker
            write_state(run["run_dir"], state)
    except Exception as exc:  # noqa: BLE001
        report(f"on_train_start failed ({type(exc).__name__}: {exc}); training continues untracked")


@hookimpl
def on_log(run, metrics):
    """Log every numeric column of the training row (loss, lr, grad_norm, tokens_per_s, ...) at its step."""
    _log(run, metrics, skip=())


@hookimpl
def on_evaluate(run, metrics):
    """Log the validation row (eval_loss, eval_ppl) at its step."""
    _log(run, metrics, skip=POSITION)


def _log(run, metrics, skip) -> None:
    try:
        tracker = _trackers.get(run["run_dir"])
        if tracker is None or "step" not in metrics:
            return
        values, step = numeric(metrics, skip), int(metrics["step"])
    except Exception as exc:  # noqa: BLE001 - a row this plugin does not understand is skipped
        report(f"a metrics row was not logged ({type(exc).__name__}: {exc})")
        return
    if values:
        tracker.call("log", step, values)  # catches and reports a backend's failure itself


@hookimpl
def on_train_end(run, result):
    """Record how the run ended (finished, stopped, failed), flush and close every backend."""
    try:
        tracker = _trackers.pop(run["run_dir"], None)
    except Exception as exc:  # noqa: BLE001
        report(f"on_train_end failed ({type(exc).__name__}: {exc})")
        return
    if tracker is not None:
        tracker.call("end", result)
