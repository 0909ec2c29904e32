"""The engine facade: the lesson's verbs, with plain data in and out.

Pages (and the remote service on a GPU box) call one object, an :class:`Engine`, never the
engine's modules one by one. Every argument and every result is plain data (str, numbers,
lists, dicts) so the same call can cross a network: :class:`LocalEngine` answers in this
process (training in a worker subprocess), a remote backend (``core.backends.ray``) answers
from a GPU box. Which one is chosen by :func:`get_engine`, from ``TUNELAB_BACKEND`` (or the
dashboard's ``[backend]`` secrets) through the ``register_backends`` plugin hook.

Names of models are strings: ``"embedded"``, a Hub id, a folder, or ``"run:<run_id>"`` — a
run's trained ``final/`` on whichever machine holds the run. Runs are named by their id, the
folder name in the run store (``core.runs.runs_root()``).

This module imports nothing heavy at import time: a thin dashboard without torch imports it.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

from .errors import UserError

RUN_PREFIX = "run:"
ACTIVE = ("queued", "running", "stopping")  # a run's states while it is not over (core.runs.ACTIVE)


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

    A backend that cannot do something raises :class:`core.errors.UserError` with a sentence a
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
        """Every plugin the engine loaded (``core.registry.Registry.listing``)."""
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
        """Anatomy of a model (``core.models.describe``), loading it if needed."""
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
        """The validation report of ``core.data.check_file`` (token lengths with ``model``'s tokenizer)."""
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
        """Estimated peak training memory of a run config (``core.memory.estimate``) and the verdict here:
        the estimate's parts plus ``available``, ``where``, ``verdict``, ``advice`` (the out-of-memory
        ladder against what is available; [] when it fits) and ``ladder`` (the rungs regardless)."""
        raise NotImplementedError

    def machine(self) -> dict:
        """The machine training runs on: cores, RAM, GPU, ``available`` bytes and ``where`` they are."""
        raise NotImplementedError

    def measure_memory(self, config: dict) -> dict:
        """Run one real training step of ``config`` in a worker process and measure its peak memory."""
        raise NotImplementedError

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
        """Every run, newest first: its status plus ``run_id``."""
        raise NotImplementedError

    def find_run(self, run_id: str | None) -> str | None:
        """``run_id`` if such a run exists, else None (ids are folder names, nothing more)."""
        raise NotImplementedError

    def run_progress(self, run_id: str) -> dict:
        """Status plus ``fraction``, ``eta_s``, ``last_loss`` (``core.runs.progress``)."""
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

    # -- lesson 5: generate ---------------------------------------------------------------------
    def next_token_distribution(self, model: str, prompt: str, sampler: str = "greedy",
                                params: dict | None = None, top: int = 15) -> dict:
        """``core.generate.next_token_distribution`` for a named model."""
        raise NotImplementedError

    def generate(self, model: str, prompt: str, sampler: str = "greedy", params: dict | None = None,
                 max_new_tokens: int = 128, seed: int = 0) -> Iterator[str]:
        """The answer, as pieces of text while the model writes them."""
        raise NotImplementedError

    # -- lesson 6: evaluate ---------------------------------------------------------------------
    def evaluate(self, run_id: str, data_path: str | None = None, evaluators: list[str] | None = None,
                 limit: int | None = None, max_new_tokens: int = 96, evaluator_params: dict | None = None,
                 progress=None) -> dict:
        """Base against tuned on held-out data (``core.evaluate.evaluate_run``); saved with the run.
        The report carries ``summary`` and ``ranking`` (``core.evaluate.with_comparison``)."""
        raise NotImplementedError

    def eval_report(self, run_id: str) -> dict | None:
        """The run's saved evaluation report with ``summary`` and ``ranking`` (as :meth:`evaluate`), or None."""
        raise NotImplementedError

    # -- after the lesson: export ---------------------------------------------------------------
    def export_run(self, run_id: str, out_dir: str, type: str = "f16", sampler: dict | None = None,
                   progress=None) -> dict:
        """GGUF + Ollama Modelfile of the run's model (``core.export.export_run``)."""
        raise NotImplementedError

    # -- plugins: switch, browse, install (on the machine that runs them) ------------------------
    def set_plugin_enabled(self, name: str, enabled: bool) -> None:
        """Switch an installed plugin on or off from the next load on (``core.registry.set_enabled``)."""
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
        """What a planned run means, for ``n_records`` examples in its data: ``{"n_train", "n_val",
        "total_steps", "warmup_steps", "lr_schedule" (the lr at each step), "effective_batch",
        "changed" ({key: value} that differ from the defaults), "cli_sets" (the same as
        ``--set key=value`` strings; ``data.params`` only fits in a file), "seconds"}``.

        ``seconds`` is ``core.train.estimate_seconds`` from a measured speed and the data's median
        example length, None when either is unknown. Pure: no model and no data file are read.
        """
        from . import train
        from .config import RunConfig, changed_keys

        cfg = RunConfig.from_dict(config, "the planned run")
        n_train, n_val = cfg.split_sizes(int(n_records or 0))
        total = cfg.total_steps(n_train)
        changed = changed_keys(cfg)
        cli_sets = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in changed.items() if k != "data.params"]
        seconds = (train.estimate_seconds(cfg, n_train, median_tokens, tokens_per_s)
                   if n_records and median_tokens and tokens_per_s else None)
        return {"n_train": n_train, "n_val": n_val, "total_steps": total,
                "warmup_steps": train.warmup_steps(cfg, total), "lr_schedule": train.lr_schedule(cfg, total),
                "effective_batch": cfg.batch_size * cfg.grad_accum, "changed": changed, "cli_sets": cli_sets,
                "seconds": seconds}

    def loop_source(self) -> dict:
        """``{"name", "source"}`` of the training step learners read (``core.train.train_step``;
        ``core.train.train`` until the step is its own function). Read from the file, not imported,
        so it needs no torch."""
        import ast

        path = Path(__file__).with_name("train.py")
        text = path.read_text(encoding="utf-8")
        functions = {node.name: node for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
        name = "train_step" if "train_step" in functions else "train"
        return {"name": f"core.train.{name}", "source": ast.get_source_segment(text, functions[name])}

    def save_upload(self, name: str, content: bytes) -> str:
        """Keep a file a learner uploaded (``core.uploads.save_upload``: a safe, unique name; old
        uploads expire) and return its path. Saved where the dashboard runs: a remote backend sends
        data files on to its box itself."""
        from .uploads import save_upload

        return str(save_upload(name, content))

    def allowed_data(self, path: str, uploads: list[str] | tuple = ()) -> str:
        """``path`` if the dashboard may read it (a bundled data set or one of ``uploads``), else a
        UserError saying which files it may read (``core.uploads.allowed_data``)."""
        from .uploads import allowed_data

        return str(allowed_data(path, uploads))

    def _not_offered(self, what: str) -> UserError:
        return UserError(f"The {self.name} backend does not offer {what}: do it on the machine that runs the "
                         "engine (`python -m core plugins` there).")


def _plugin_rows(registry, kind: str, extra=()) -> list[dict]:
    rows = []
    for name, obj in registry.items(kind).items():
        row = {"name": name, "description": obj.description, "params": list(getattr(obj, "params", None) or []),
               "owner": registry.owner(kind, name)}
        for attr in extra:
            value = getattr(obj, attr, None)
            row[attr] = list(value) if isinstance(value, tuple) else value
        rows.append(row)
    return rows


class ModelCache:
    """Loaded ``(model, tokenizer)`` pairs, least recently used dropped first.

    Bounded (``TUNELAB_MODEL_CACHE``, default 2: a base and a tuned model): a shared server
    that kept every model anyone loaded would run out of memory. A folder rewritten on disk
    (a resumed run that finished again) is loaded anew: the key holds its signature.
    """

    def __init__(self, size: int | None = None):
        self.size = max(1, int(size or os.environ.get("TUNELAB_MODEL_CACHE") or 2))
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, loader):
        from .models import folder_signature

        key = (path, folder_signature(path))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            for old in [k for k in self._items if k[0] == path]:
                del self._items[old]  # a stale version of this folder
        value = loader(path)  # outside the lock: loading takes seconds
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def peek(self, path: str):
        """What is loaded for ``path`` (None if nothing is), without loading it or reordering."""
        with self._lock:
            return next((value for key, value in self._items.items() if key[0] == path), None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class LocalEngine(Engine):
    """The engine in this process; training runs in a worker subprocess (``core.runs.launch``).

    ``settings``: ``model_cache`` (models kept loaded), ``standby`` (default True: keep a worker
    started ahead, :mod:`core.standby`, so Start's first loss comes sooner).
    """

    name = "local"

    def __init__(self, settings: dict | None = None):
        self.settings = dict(settings or {})
        self.models = ModelCache(self.settings.get("model_cache"))
        self.tokenizers = ModelCache(4)
        if self.settings.get("standby", True):
            from . import standby

            standby.prestart()  # a worker imports torch ahead of Start (TUNELAB_STANDBY=0: none)

    # -- helpers ------------------------------------------------------------------------------
    def _registry(self):
        from .registry import get_registry

        return get_registry()

    def _run_dir(self, run_id: str) -> Path:
        from . import runs

        found = self.find_run(run_id)
        if found is None:
            raise UserError(f"there is no run called '{run_id}' in {runs.runs_root()}")
        return runs.runs_root() / found

    def _model_path(self, model: str | None) -> str:
        """What ``core.models`` loads for a model name (a run's ``final/`` for ``run:<id>``)."""
        model = (model or "embedded").strip()
        if model.startswith(RUN_PREFIX):
            final = self._run_dir(model[len(RUN_PREFIX):]) / "final"
            if not final.is_dir():
                raise UserError(f"run {model[len(RUN_PREFIX):]} has no trained model yet (no final/ folder): "
                                "wait until it finishes, or resume it")
            return str(final)
        return model

    def load(self, model: str | None):
        """``(model, tokenizer)`` for a model name, from the bounded cache."""
        require_engine("Loading a model")
        from . import models

        return self.models.get(self._model_path(model), models.load_model)

    def tokenizer(self, model: str | None):
        require_engine("Reading tokens")
        from . import models

        path = self._model_path(model)
        loaded = self.models.peek(path)
        if loaded is not None:
            return loaded[1]  # the loaded model's own tokenizer
        return self.tokenizers.get(path, models.load_tokenizer)

    # -- where the work runs ----------------------------------------------------------------
    def health(self) -> dict:
        cores = os.cpu_count() or 1
        if not engine_installed():
            return {"ok": False, "backend": self.name, "where": "this machine",
                    "detail": "the training engine (torch) is not installed here"}
        from .memory import machine_memory

        gpu = machine_memory().get("gpu_name")
        return {"ok": True, "backend": self.name, "where": "this machine",
                "detail": f"{cores} CPU cores" + (f", {gpu}" if gpu else ", no GPU")}

    def capabilities(self) -> dict:
        from .limits import memory_limit

        if not engine_installed():
            return {"train": False, "measure": False, "install_plugins": False,
                    "why": "the training engine (torch) is not installed here"}
        limit = memory_limit()
        small = limit is not None and limit < 4 * 2**30
        why = (f"this app may use only {limit / 2**30:.1f} GiB of memory (its container's limit), less than a "
               "training run of even the smallest model needs (about 4 GiB)") if small else ""
        return {"train": not small, "measure": not small, "install_plugins": not small, "why": why}

    def plugins(self) -> list[dict]:
        return self._registry().listing()

    def data_formats(self) -> list[dict]:
        return _plugin_rows(self._registry(), "data_formats", ("extensions",))

    def samplers(self) -> list[dict]:
        return _plugin_rows(self._registry(), "samplers")

    def evaluators(self) -> list[dict]:
        return _plugin_rows(self._registry(), "evaluators", ("higher_is_better",))

    # -- a model --------------------------------------------------------------------------------
    def describe_model(self, model: str) -> dict:
        from .models import describe

        loaded, tok = self.load(model)
        return {"name": model, **describe(loaded, tok)}

    def tokenize(self, model: str, text: str) -> dict:
        tok = self.tokenizer(model)
        ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
        return {"ids": ids, "pieces": [tok.decode([i]) for i in ids]}

    def render_chat(self, model: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer(model).apply_chat_template(messages, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt)

    # -- data -----------------------------------------------------------------------------------
    def detect_format(self, path: str) -> str | None:
        from . import data

        return data.detect_format(path, self._registry())

    def check_data(self, path, format=None, params=None, model="embedded", max_length=512) -> dict:
        from . import data

        tok = self.tokenizer(model) if model and engine_installed() else None
        return data.check_file(path, format, params, tok, max_length, self._registry())

    def load_records(self, path, format=None, params=None, limit=None) -> list[dict]:
        from . import data

        dataset, _ = data.load_records(path, format, params, self._registry())
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return dataset.to_list()

    def encode_example(self, model, record, max_length, train_on_prompt=False) -> dict:
        from . import data

        tok = self.tokenizer(model)
        encoded = data.encode_record(record, tok, max_length, train_on_prompt)[0]
        return {"ids": encoded["input_ids"], "labels": encoded["labels"],
                "pieces": [tok.decode([i]) for i in encoded["input_ids"]],
                "truncated": bool(encoded.get("truncated")),
                "trained": sum(label != data.IGNORE_INDEX for label in encoded["labels"])}

    # -- memory ---------------------------------------------------------------------------------
    def estimate_memory(self, config: dict) -> dict:
        require_engine("Estimating memory")  # it reads the model's config with transformers
        from . import memory
        from .config import RunConfig

        cfg = RunConfig.from_dict(config)
        est = memory.estimate(cfg.model, method=cfg.method, precision=memory.resolve_precision(cfg.precision),
                              batch_size=cfg.batch_size, max_length=cfg.max_length,
                              gradient_checkpointing=cfg.gradient_checkpointing, lora_r=cfg.lora.r)
        where = self.machine()
        available = where["available"]
        return {**est, "available": available, "where": where["where"],
                "verdict": memory.verdict(est["total"], available) if available else None,
                "advice": memory.oom_advice(est, available) if available else [],
                "ladder": memory.oom_advice(est, est["total"])}  # the rungs, as if it had only just not fitted

    def machine(self) -> dict:
        from .memory import available_for_training, machine_memory

        from .limits import memory_limit, memory_used

        available, where = available_for_training()
        limit = memory_limit()
        if limit is not None and available is not None:  # a container: its cap, not the host's RAM, is what we have
            free_in_limit = max(0, limit - (memory_used() or 0))
            if free_in_limit < available:
                available, where = free_in_limit, f"this app's {limit / 2**30:.1f} GiB memory limit (cgroup)"
        return {"cpu_cores": os.cpu_count() or 1, **machine_memory(), "available": available, "where": where,
                "memory_limit": limit}

    def measure_memory(self, config: dict) -> dict:
        require_engine("Measuring a training step")
        from .measure import measure_in_worker

        caps = self.capabilities()
        if not caps["measure"]:
            raise UserError(f"Measuring a real step is turned off here: {caps['why']}.")
        return measure_in_worker(config)

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, config: dict, name=None, owner=None) -> str:
        require_engine("Training")
        from . import runs
        from .config import RunConfig

        caps = self.capabilities()
        if not caps["train"]:
            raise UserError(f"Training is turned off here: {caps['why']}. Point TuneLab at a GPU box "
                            "(TUNELAB_BACKEND=ray) to train.")
        cfg = RunConfig.from_dict(config)
        cfg.validate("the planned run")
        return runs.start(cfg, name, owner=owner).name

    def resume_run(self, run_id, owner=None) -> None:
        require_engine("Training")
        from . import runs

        run_dir = self._run_dir(run_id)
        runs.check_control(run_dir, owner, "resume")
        runs.launch(run_dir, resume=True)

    def stop_run(self, run_id, owner=None) -> None:
        from . import runs

        run_dir = self._run_dir(run_id)
        runs.check_control(run_dir, owner, "stop")
        runs.request_stop(run_dir)

    def list_runs(self) -> list[dict]:
        from . import runs, standby

        if self.settings.get("standby", True):
            standby.prestart_if_idle()  # one that timed out or died is replaced while nothing trains
        return runs.list_runs()

    def find_run(self, run_id):
        from . import runs

        if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
            return None
        return run_id if (runs.runs_root() / run_id / "status.json").is_file() else None

    def run_progress(self, run_id) -> dict:
        from . import runs

        return runs.progress(self._run_dir(run_id))

    def run_metrics(self, run_id) -> list[dict]:
        from . import runs

        return runs.read_metrics(self._run_dir(run_id))

    def run_config(self, run_id) -> dict:
        from . import runs

        return runs.load_config(self._run_dir(run_id)).to_dict()

    def run_log(self, run_id, lines=40) -> str:
        log = self._run_dir(run_id) / "log.txt"
        if not log.is_file():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    # -- generate -------------------------------------------------------------------------------
    def next_token_distribution(self, model, prompt, sampler="greedy", params=None, top=15) -> dict:
        require_engine("Reading the next-token probabilities")  # before core.generate, which imports torch
        from . import generate

        loaded, tok = self.load(model)
        return generate.next_token_distribution(loaded, tok, prompt, sampler, params, top=top,
                                                registry=self._registry())

    def generate(self, model, prompt, sampler="greedy", params=None, max_new_tokens=128, seed=0):
        require_engine("Generating text")  # before core.generate, which imports torch
        from . import generate

        loaded, tok = self.load(model)
        yield from generate.generate(loaded, tok, prompt, sampler, params, max_new_tokens, seed=seed, stream=True,
                                     registry=self._registry())

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, run_id, data_path=None, evaluators=None, limit=None, max_new_tokens=96,
                 evaluator_params=None, progress=None) -> dict:
        require_engine("Evaluating a run")
        from . import evaluate, runs

        run_dir = self._run_dir(run_id)
        base = self.load(runs.load_config(run_dir).model)
        tuned = self.load(run_model(run_id))
        return evaluate.with_comparison(evaluate.evaluate_run(
            run_dir, data_path, evaluators=evaluators, limit=limit, max_new_tokens=max_new_tokens, progress=progress,
            registry=self._registry(), evaluator_params=evaluator_params, loaded=(base, tuned)))

    def eval_report(self, run_id) -> dict | None:
        from . import evaluate

        return evaluate.with_comparison(evaluate.load_report(self._run_dir(run_id)))

    # -- export ---------------------------------------------------------------------------------
    def export_run(self, run_id, out_dir, type="f16", sampler=None, progress=None) -> dict:
        require_engine("Exporting a model")
        from . import export

        return export.export_run(self._run_dir(run_id), out_dir, type=type, sampler=sampler, progress=progress)

    # -- plugins --------------------------------------------------------------------------------
    def set_plugin_enabled(self, name, enabled) -> None:
        from .registry import reset_registry, set_enabled

        set_enabled(name, bool(enabled))
        reset_registry()  # the next verb loads the plugins again, with this one on or off

    def catalog(self) -> list[dict]:
        from .catalog import with_status

        return with_status()

    def install_plugin(self, package) -> dict:
        from . import catalog
        from .registry import reset_registry

        caps = self.capabilities()
        if not caps["install_plugins"]:
            raise UserError(f"Installing plugins is turned off here: {caps['why']}.")
        result = catalog.install(catalog.find(package))
        reset_registry()  # the next verb sees the new entry points
        return result

    def embedded_ready(self) -> bool:
        from .models import embedded_ready

        return embedded_ready()


def app_plugins() -> list[dict]:
    """The plugins of the process the dashboard runs in (no torch needed): with a remote backend they
    differ from :meth:`Engine.plugins`, the box's, and the Plugins page shows both."""
    from .registry import get_registry

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
            from .registry import get_registry

            name = settings["backend"]
            backends = get_registry().items("backends")
            if name not in backends:
                raise UserError(f"TUNELAB_BACKEND={name!r} is not a known backend; use one of "
                                f"{', '.join(sorted(backends))}")
            _engines[key] = backends[name].create(settings)
        return _engines[key]


def reset_engines() -> None:
    """Forget every engine (tests, and the dashboard after its backend settings change)."""
    with _engines_lock:
        _engines.clear()
