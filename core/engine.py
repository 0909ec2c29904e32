"""The engine facade: the lesson's verbs, with plain data in and out.

Pages (and the remote service on a GPU box) call one object, an :class:`Engine`, never the
engine's modules one by one. Every argument and every result is plain data (str, numbers,
lists, dicts) so the same call can cross a network: :class:`LocalEngine` answers in this
process (training in a worker subprocess), a remote backend (``tunelab.core.backends.ray``) answers
from a GPU box. Which one is chosen by :func:`get_engine`, from ``TUNELAB_BACKEND`` (or the
dashboard's ``[backend]`` secrets) through the ``register_backends`` plugin hook.

Names of models are strings: ``"embedded"``, a Hub id, a folder, or ``"run:<run_id>"`` — a
run's trained ``final/`` on whichever machine holds the run. Runs are named by their id, the
folder name in the run store (``tunelab.core.runs.runs_root()``).

This module imports nothing heavy at import time: a thin dashboard without torch imports it.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Iterator

from . import experiments, plan
from .config import RunConfig
from .errors import UserError
from .registry import get_registry
from .runs import ACTIVE  # noqa: F401 - pages read the run states through the facade
from .paths import REPO_ROOT
from .uploads import allowed_data, bundled_data, save_upload

RUN_PREFIX = "run:"


def engine_installed() -> bool:
    """Whether this Python has the training engine's packages (torch, transformers)."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


class EngineMissing(UserError):
    """A verb needs the engine, and neither it nor a remote backend is there."""


def require_engine(what: str) -> None:
    if not engine_installed():
        raise EngineMissing(
            f"{what} needs the training engine (torch and transformers), which is not installed here. "
            "Install it with `make setup` (or `pip install -r requirements-engine.txt`), or point TuneLab at a "
            "GPU box: set TUNELAB_BACKEND=ray with TUNELAB_RAY_ADDRESS and TUNELAB_RAY_TOKEN (on Streamlit Cloud, "
            "the [backend] table of the app's secrets).")


def run_model(run_id: str) -> str:
    """The model name of a run's trained ``final/``: ``run:<id>``."""
    return f"{RUN_PREFIX}{run_id}"


class Engine:
    """The verbs every backend offers. Subclasses implement them; this class documents them.

    A backend that cannot do something raises :class:`tunelab.core.errors.UserError` with a sentence a
    learner can act on, never a bare exception.
    """

    name = "engine"

    # -- where the work runs ----------------------------------------------------------------
    def health(self) -> dict:
        """``{"ok": bool, "backend": name, "where": "this machine" | address, "detail": str}``."""
        raise NotImplementedError

    def capabilities(self) -> dict:
        """What may run here: ``{"train": bool, "measure": bool, "install_plugins": bool, "why": str}``."""
        raise NotImplementedError

    def plugins(self) -> list[dict]:
        """Every plugin the engine loaded (``tunelab.core.registry.Registry.listing``)."""
        raise NotImplementedError

    def data_formats(self) -> list[dict]:
        """``[{"name", "description", "extensions", "params", "owner"}]``."""
        raise NotImplementedError

    def samplers(self) -> list[dict]:
        """``[{"name", "description", "params", "owner"}]``."""
        raise NotImplementedError

    def evaluators(self) -> list[dict]:
        """``[{"name", "description", "params", "higher_is_better", "owner"}]``."""
        raise NotImplementedError

    # -- lesson 1: a model --------------------------------------------------------------------
    def describe_model(self, model: str) -> dict:
        """Anatomy of a model (``tunelab.core.models.describe``), loading it if needed."""
        raise NotImplementedError

    def tokenize(self, model: str, text: str) -> dict:
        """``{"ids": [...], "pieces": [...]}``: the model's tokens for ``text``, each as readable text."""
        raise NotImplementedError

    def render_chat(self, model: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
        """The text the model reads for a conversation (its chat template)."""
        raise NotImplementedError

    # -- lesson 2: data -----------------------------------------------------------------------
    def detect_format(self, path: str) -> str | None:
        """The data format that reads ``path`` (None when none does)."""
        raise NotImplementedError

    def check_data(self, path: str, format: str | None = None, params: dict | None = None,
                   model: str | None = "embedded", max_length: int = 512) -> dict:
        """The validation report of ``tunelab.core.data.check_file`` (token lengths with ``model``'s tokenizer)."""
        raise NotImplementedError

    def table_columns(self, path: str) -> list[str]:
        """The column names in a CSV or TSV file's header ([] for any other file): what a learner picks
        the prompt and response columns from."""
        raise NotImplementedError

    def load_records(self, path: str, format: str | None = None, params: dict | None = None,
                     limit: int | None = None) -> list[dict]:
        """The file's canonical records (the first ``limit``)."""
        raise NotImplementedError

    def encode_example(self, model: str, record: dict, max_length: int, train_on_prompt: bool = False) -> dict:
        """One record as the model trains on it: ``{"ids", "pieces", "labels", "truncated", "trained"}``."""
        raise NotImplementedError

    # -- lessons 3 and 7: memory --------------------------------------------------------------
    def estimate_memory(self, config: dict) -> dict:
        """Estimated peak training memory of a run config (``tunelab.core.memory.estimate``) and the verdict here:
        the estimate's parts plus ``available``, ``where``, ``verdict``, ``advice`` (the out-of-memory
        ladder against what is available; [] when it fits) and ``ladder`` (the rungs regardless)."""
        raise NotImplementedError

    def machine(self) -> dict:
        """The machine training runs on: cores, RAM, GPU, ``available`` bytes and ``where`` they are."""
        raise NotImplementedError

    def measure_memory(self, config: dict) -> dict:
        """Run one real training step of ``config`` in a worker process and measure its peak memory."""
        raise NotImplementedError

    def training_speed(self, config: dict, measured: list[dict] | None = None) -> dict | None:
        """The speed a planned run can expect where training runs, learned from the runs there and from
        ``measured`` steps (``tunelab.core.runs.observed_speed``): ``{"tokens_per_s", "source", "differs", "sure",
        "error"}``, or None when nothing comparable ran (the default: a backend that cannot tell)."""
        return None

    # -- lesson 4: runs -----------------------------------------------------------------------
    def start_run(self, config: dict, name: str | None = None, owner: str | None = None) -> str:
        """Create a run from a config dict and start its worker. Returns the run id."""
        raise NotImplementedError

    def resume_run(self, run_id: str, owner: str | None = None) -> None:
        raise NotImplementedError

    def stop_run(self, run_id: str, owner: str | None = None) -> None:
        """Ask the run to save a checkpoint and stop."""
        raise NotImplementedError

    def list_runs(self) -> list[dict]:
        """Every run, newest first: its status plus ``run_id`` and ``disk_bytes`` (what its folder takes)."""
        raise NotImplementedError

    def delete_run(self, run_id: str, owner: str | None = None) -> dict:
        """Delete a run that is not live (``tunelab.core.runs.delete_run``): ``{"run_id", "freed_bytes"}``. A queued,
        running or stopping run is refused (stop it first), as is another session's on a shared server."""
        raise self._not_offered("deleting runs")

    def find_run(self, run_id: str | None) -> str | None:
        """``run_id`` if such a run exists, else None (ids are folder names, nothing more)."""
        raise NotImplementedError

    def run_progress(self, run_id: str) -> dict:
        """Status plus ``fraction``, ``eta_s``, ``last_loss`` (``tunelab.core.runs.progress``)."""
        raise NotImplementedError

    def run_metrics(self, run_id: str) -> list[dict]:
        """Every metrics row of the run so far."""
        raise NotImplementedError

    def run_config(self, run_id: str) -> dict:
        """The run's config as a plain dict."""
        raise NotImplementedError

    def run_log(self, run_id: str, lines: int = 40) -> str:
        """The last ``lines`` of the worker's log."""
        raise NotImplementedError

    # -- lesson 4b: experiments (one setting, 2 to 4 values, short runs side by side) -------------
    def start_experiment(self, plan: dict, setting: str, values: list, budget_s: float = 120,
                         owner: str | None = None) -> str:
        """Start an experiment and return its id: one short run of the planned run ``plan`` (a config dict)
        per value of ``setting`` (2 to 4 values, numbers or text such as ``"1e-4"``), each with the same seed,
        data and steps, the steps sized by :meth:`plan_experiment` to fit ``budget_s`` seconds. Its runs are
        ordinary runs (listed, resumed, evaluated like any other). Locally they run one after another, chained
        by a driver process, so a closed tab does not stop them (``tunelab.core.experiment_driver``); on a remote
        backend they are submitted at once and the box schedules them. A setting that cannot vary, a bad value
        or a budget too short for curves worth reading is a UserError that says so."""
        raise self._not_offered("experiments")

    def experiment(self, exp_id: str) -> dict:
        """An experiment as it stands (``tunelab.core.experiments.read_experiment``): its record (``plan``, with the
        ``steps`` it chose and ``why``; ``stopped``, ``owner``), each value's run (``label``, ``run_id``,
        ``state``: pending, deleted or the run's own, ``progress``, ``rows``), the experiment's ``state``
        (running | waiting | stopped | finished), ``final``, and the ``verdict`` so far in words
        (``tunelab.core.curves.experiment_verdict``: ``text``, ``best``, ``diverged``, ``too_slow``, ...)."""
        raise self._not_offered("experiments")

    def list_experiments(self) -> list[dict]:
        """Every experiment, newest first, each as :meth:`experiment` reads it ([] where none can run)."""
        return []

    def stop_experiment(self, exp_id: str, owner: str | None = None) -> None:
        """Stop an experiment: no further run of it starts, and each of its queued or running runs is asked
        to stop (it saves a checkpoint, as :meth:`stop_run`). On a shared server only its own session may."""
        raise self._not_offered("experiments")

    # -- lesson 5: generate ---------------------------------------------------------------------
    def next_token_distribution(self, model: str, prompt: str, sampler: str = "greedy",
                                params: dict | None = None, top: int = 15) -> dict:
        """``tunelab.core.generate.next_token_distribution`` for a named model."""
        raise NotImplementedError

    def generate(self, model: str, prompt: str, sampler: str = "greedy", params: dict | None = None,
                 max_new_tokens: int = 128, seed: int = 0) -> Iterator[str]:
        """The answer, as pieces of text while the model writes them."""
        raise NotImplementedError

    # -- lesson 6: evaluate ---------------------------------------------------------------------
    def evaluate(self, run_id: str, data_path: str | None = None, evaluators: list[str] | None = None,
                 limit: int | None = None, max_new_tokens: int = 96, evaluator_params: dict | None = None,
                 progress=None) -> dict:
        """Base against tuned on held-out data (``tunelab.core.evaluate.evaluate_run``); saved with the run.
        The report carries ``summary`` and ``ranking`` (``tunelab.core.evaluate.with_comparison``)."""
        raise NotImplementedError

    def eval_report(self, run_id: str) -> dict | None:
        """The run's saved evaluation report with ``summary`` and ``ranking`` (as :meth:`evaluate`), or None."""
        raise NotImplementedError

    # -- after the lesson: export ---------------------------------------------------------------
    def export_run(self, run_id: str, out_dir: str, type: str = "f16", sampler: dict | None = None,
                   progress=None, keep_anyway: bool = False) -> dict:
        """GGUF + Ollama Modelfile of the run's model (``tunelab.core.export.export_run``). A failed read-back check
        raises ``tunelab.core.export.ExportCheckFailed`` (its ``check`` holds the figures) unless ``keep_anyway``."""
        raise NotImplementedError

    # -- plugins: switch, browse, install (on the machine that runs them) ------------------------
    def set_plugin_enabled(self, name: str, enabled: bool) -> None:
        """Switch an installed plugin on or off from the next load on (``tunelab.core.registry.set_enabled``)."""
        raise self._not_offered("switching plugins on and off")

    def catalog(self) -> list[dict]:
        """The reviewed community plugins (``catalog.json``), each with ``installed`` (a version or None)."""
        raise self._not_offered("the plugin catalog")

    def install_plugin(self, package: str) -> dict:
        """pip-install a catalog entry: ``{"ok", "message", "installed", "plugins", "restart_needed", ...}``."""
        raise self._not_offered("installing plugins")

    def embedded_ready(self) -> bool:
        """Whether the embedded model is converted already (using it takes a second, not the first
        conversion's 20). A remote box converts it on first use, so the default is True."""
        return True

    # -- answered here, the same for every backend: pure rules on plain data ---------------------
    def plan_summary(self, config: dict, n_records: int | None, median_tokens: float | None = None,
                     tokens_per_s: float | None = None) -> dict:
        """What a planned run means for ``n_records`` examples (:func:`tunelab.core.plan.plan_summary`)."""
        return plan.plan_summary(config, n_records, median_tokens, tokens_per_s)

    def loop_source(self) -> dict:
        """The training step learners read (:func:`tunelab.core.plan.loop_source`)."""
        return plan.loop_source()

    def experiment_settings(self, config: dict) -> list[dict]:
        """The settings an experiment may vary for the planned run ``config``: key, label, explanation, caveat,
        current value and the values that teach (``tunelab.core.experiments.settings_table``)."""
        return experiments.settings_table(RunConfig.from_dict(config, "the planned run"))

    def plan_experiment(self, plan: dict, setting: str, values: list, budget_s: float = 120) -> dict:
        """What :meth:`start_experiment` would run, without running it (``tunelab.core.experiments.plan_experiment``):
        ``steps`` per run and ``why`` in words, ``runs``, ``estimated_s``, ``notes``, plus ``speed_source``.
        Sized from the data (:meth:`check_data`: how many examples, the median one's tokens) and the speed
        training had where it runs (:meth:`training_speed`); with no speed known a slow machine's is assumed,
        and the plan says so."""
        cfg = RunConfig.from_dict(plan, "the planned run")
        cfg.validate("the planned run")
        experiments.check_values(cfg, setting, values, budget_s)  # a bad setting or value: before the data is read
        report = self.check_data(cfg.data.path, cfg.data.format or None, cfg.data.params, cfg.model, cfg.max_length)
        if not report.get("ok", True):
            raise UserError(report.get("error") or f"{cfg.data.path}: the data cannot be read")
        n_train, _ = cfg.split_sizes(int(report.get("kept") or report.get("records") or 0))
        median = (report.get("token_lengths") or {}).get("median")
        speed = self.training_speed(cfg.to_dict())
        seconds = experiments.step_seconds(cfg, median, speed["tokens_per_s"]) if speed and median else None
        planned = experiments.plan_experiment(cfg, setting, values, budget_s, seconds, n_train, median)
        planned["speed_source"] = speed["source"] if seconds else None
        return planned

    def save_upload(self, name: str, content: bytes) -> str:
        """Keep a file a learner uploaded (``tunelab.core.uploads.save_upload``: a safe, unique name; old
        uploads expire) and return its path. Saved where the dashboard runs: a remote backend sends
        data files on to its box itself."""
        return str(save_upload(name, content))

    def data_choices(self, uploads: list[str] | tuple = ()) -> list[str]:
        """The data files the dashboard may read, to pick from: the bundled sets (repository-relative, as the
        pages show them) and then ``uploads`` (``tunelab.core.uploads.bundled_data``)."""
        bundled = [str(p.relative_to(REPO_ROOT)) for p in bundled_data()
                   if p.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv", ".txt")]
        return bundled + [u for u in uploads or () if u not in bundled]

    def allowed_data(self, path: str, uploads: list[str] | tuple = ()) -> str:
        """``path`` if the dashboard may read it (a bundled data set or one of ``uploads``), else a
        UserError saying which files it may read (``tunelab.core.uploads.allowed_data``)."""
        return str(allowed_data(path, uploads))

    def _not_offered(self, what: str) -> UserError:
        return UserError(f"The {self.name} backend does not offer {what}: do it on the machine that runs the "
                         "engine (`python -m tunelab plugins` there).")


def app_plugins() -> list[dict]:
    """The plugins of the process the dashboard runs in (no torch needed): with a remote backend they
    differ from :meth:`Engine.plugins`, the box's, and the Plugins page shows both."""

    return get_registry().listing()


# -- choosing the backend ---------------------------------------------------------------------

SETTING_ENV = {"backend": "TUNELAB_BACKEND", "address": "TUNELAB_RAY_ADDRESS", "token": "TUNELAB_RAY_TOKEN"}


def backend_settings(overrides: dict | None = None) -> dict:
    """The backend settings: ``TUNELAB_BACKEND`` / ``TUNELAB_RAY_ADDRESS`` / ``TUNELAB_RAY_TOKEN``,
    with ``overrides`` (the dashboard's ``[backend]`` secrets) filling what the environment leaves unset."""
    settings = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
    for key, env in SETTING_ENV.items():
        if os.environ.get(env):
            settings[key] = os.environ[env]
    settings.setdefault("backend", "local")
    return settings


_engines: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(settings: dict | None = None) -> Engine:
    """The engine for these settings (see :func:`backend_settings`), one per distinct setting."""
    settings = backend_settings(settings)
    key = tuple(sorted((k, str(v)) for k, v in settings.items()))
    with _engines_lock:
        if key not in _engines:

            name = settings["backend"]
            registry = get_registry()
            backends = registry.items("backends")
            if name not in backends:
                raise UserError(f"TUNELAB_BACKEND={name!r} is not a known backend; use one of "
                                f"{', '.join(sorted(backends))}")
            with registry.guard("backends", name, "create"):  # a broken backend plugin: one line naming it
                _engines[key] = backends[name].create(settings)
        return _engines[key]


def reset_engines() -> None:
    """Forget every engine (tests, and the dashboard after its backend settings change)."""
    with _engines_lock:
        _engines.clear()
