"""The local backend: the engine's verbs answered in this process, training in a worker subprocess.

The default on a laptop or a single GPU machine, and what the GPU box's service (``tunelab.core.service``)
wraps. Models are loaded once into a bounded cache (:class:`ModelCache`) on the device the device
rule picks (``tunelab.core.machine.device``), in the precision training would use there.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from .. import (catalog, data, engine, evaluate, experiment_driver, experiments, export, generate, machine, memory,
               models, readers, registry, runs, standby, workers)
from ..config import RunConfig
from ..engine import RUN_PREFIX, Engine, run_model
from ..errors import UserError
from ..limits import memory_limit
from ..machine import machine_facts
from ..measure import measure_in_worker


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

    On a GPU it also accounts the device's memory: ``free_bytes()`` says what is free there, and
    before a model of ``need`` bytes loads, the least recently used ones are dropped (and
    ``release()`` hands their memory back to the device) until it fits with a margin.
    """

    MARGIN = 1.25  # weights are not all: activations and the KV cache of an answer need room too

    def __init__(self, size: int | None = None, free_bytes=None, release=None):
        self.size = max(1, int(size or os.environ.get("TUNELAB_MODEL_CACHE") or 2))
        self.free_bytes, self.release = free_bytes, release or (lambda: None)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, loader, need: int = 0):
        key = (path, models.folder_signature(path))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            for old in [k for k in self._items if k[0] == path]:
                del self._items[old]  # a stale version of this folder
            self._make_room(need)
        value = loader(path)  # outside the lock: loading takes seconds
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def _make_room(self, need: int) -> None:
        """Drop the least recently used models until ``need`` bytes fit on the device (never the last
        chance: with nothing left to drop, the load goes ahead and says so itself if it does not fit)."""
        if self.free_bytes is None or not need:
            return
        while self._items and self.free_bytes() < need * self.MARGIN:
            self._items.popitem(last=False)
            self.release()

    def peek(self, path: str):
        """What is loaded for ``path`` (None if nothing is), without loading it or reordering."""
        with self._lock:
            return next((value for key, value in self._items.items() if key[0] == path), None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
        self.release()


def weights_bytes(path: str) -> int:
    """Bytes of a model's weights on disk (0 when they cannot be found without loading it)."""
    try:
        folder = Path(models.resolve(path))
    except Exception:  # noqa: BLE001 - a Hub id not downloaded yet: the load says what is wrong
        return 0
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))


class LocalEngine(Engine):
    """The engine in this process; training runs in a worker subprocess (``tunelab.core.workers.launch``).

    ``settings``: ``model_cache`` (models kept loaded), ``standby`` (default True: keep a worker
    started ahead, :mod:`tunelab.core.standby`, so Start's first loss comes sooner).
    """

    name = "local"

    def __init__(self, settings: dict | None = None):
        self.settings = dict(settings or {})
        self.models = ModelCache(self.settings.get("model_cache"))
        self._device = None
        self.tokenizers = ModelCache(4)
        if self.settings.get("standby", True):
            standby.prestart()  # a worker imports torch ahead of Start (TUNELAB_STANDBY=0: none)

    # -- helpers ------------------------------------------------------------------------------
    def _registry(self):
        return registry.get_registry()

    def _run_dir(self, run_id: str) -> Path:
        found = self.find_run(run_id)
        if found is None:
            raise UserError(f"there is no run called '{run_id}' in {runs.runs_root()}")
        return runs.runs_root() / found

    def _model_path(self, model: str | None) -> str:
        """What ``tunelab.core.models`` loads for a model name (a run's ``final/`` for ``run:<id>``)."""
        model = (model or "embedded").strip()
        if model.startswith(RUN_PREFIX):
            final = self._run_dir(model[len(RUN_PREFIX):]) / "final"
            if not final.is_dir():
                raise UserError(f"run {model[len(RUN_PREFIX):]} has no trained model yet (no final/ folder): "
                                "wait until it finishes, or resume it")
            return str(final)
        return model

    def device(self) -> str:
        """Where this engine's models sit: ``tunelab.core.machine.device`` (the one rule), once per engine."""
        if self._device is None:
            self._device = self.settings.get("device") or machine.device()
            if self._device.startswith("cuda"):
                import torch

                index = torch.device(self._device).index or 0
                self.models.free_bytes = lambda: torch.cuda.mem_get_info(index)[0]
                self.models.release = torch.cuda.empty_cache
        return self._device

    def _load_on_device(self, path: str):
        """``tunelab.core.models.load_model`` (fp32, on the CPU), then onto the device in the precision answering
        takes there: bf16 weights on a GPU that has it, not fp32."""
        loaded, tok = models.load_model(path)
        where = self.device()
        if where != "cpu":
            loaded.to(device=where, dtype=machine.inference_dtype(where))
        return loaded, tok

    def load(self, model: str | None):
        """``(model, tokenizer)`` for a model name, from the bounded cache, on :meth:`device`."""
        engine.require_engine("Loading a model")
        path = self._model_path(model)
        self.device()  # the cache accounts the device's memory from the first load on
        dtype_bytes = 2 if self._device.startswith("cuda") else 4
        need = weights_bytes(path) * dtype_bytes // 4  # on disk in fp32 (or 16-bit: then an over-estimate)
        return self.models.get(path, self._load_on_device, need)

    def tokenizer(self, model: str | None):
        engine.require_engine("Reading tokens")
        path = self._model_path(model)
        loaded = self.models.peek(path)
        if loaded is not None:
            return loaded[1]  # the loaded model's own tokenizer
        return self.tokenizers.get(path, models.load_tokenizer)

    # -- where the work runs ----------------------------------------------------------------
    def health(self) -> dict:
        cores = os.cpu_count() or 1
        if not engine.engine_installed():
            return {"ok": False, "backend": self.name, "where": "this machine",
                    "detail": "the training engine (torch) is not installed here"}
        gpu = machine_facts().get("gpu_name")
        return {"ok": True, "backend": self.name, "where": "this machine",
                "detail": f"{cores} CPU cores" + (f", {gpu}" if gpu else ", no GPU")}

    def capabilities(self) -> dict:
        if not engine.engine_installed():
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
        loaded, tok = self.load(model)
        weight = next(loaded.parameters())
        return {"name": model, **models.describe(loaded, tok), "device": str(weight.device),
                "dtype": str(weight.dtype).replace("torch.", "")}

    def tokenize(self, model: str, text: str) -> dict:
        tok = self.tokenizer(model)
        ids = tok(text, add_special_tokens=False)["input_ids"] if text else []
        return {"ids": ids, "pieces": [tok.decode([i]) for i in ids]}

    def render_chat(self, model: str, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer(model).apply_chat_template(messages, tokenize=False,
                                                         add_generation_prompt=add_generation_prompt)

    # -- data -----------------------------------------------------------------------------------
    def detect_format(self, path: str) -> str | None:
        return data.detect_format(path, self._registry())

    def check_data(self, path, format=None, params=None, model="embedded", max_length=512) -> dict:
        tok = self.tokenizer(model) if model and engine.engine_installed() else None
        return data.check_file(path, format, params, tok, max_length, self._registry())

    def table_columns(self, path) -> list[str]:
        if Path(path).suffix.lower() not in (".csv", ".tsv"):
            return []
        try:
            return [c for c in readers.csv_reader(path)[1] if c]
        except (OSError, ValueError, UserError):  # unreadable: the data check says why
            return []

    def load_records(self, path, format=None, params=None, limit=None) -> list[dict]:
        dataset, _ = data.load_records(path, format, params, self._registry())
        if limit is not None:
            dataset = dataset.select(range(min(limit, len(dataset))))
        return dataset.to_list()

    def encode_example(self, model, record, max_length, train_on_prompt=False) -> dict:
        tok = self.tokenizer(model)
        encoded = data.encode_record(record, tok, max_length, train_on_prompt)[0]
        return {"ids": encoded["input_ids"], "labels": encoded["labels"],
                "pieces": [tok.decode([i]) for i in encoded["input_ids"]],
                "truncated": bool(encoded.get("truncated")),
                "trained": sum(label != data.IGNORE_INDEX for label in encoded["labels"])}

    # -- memory ---------------------------------------------------------------------------------
    def estimate_memory(self, config: dict) -> dict:
        engine.require_engine("Estimating memory")  # it reads the model's config with transformers
        est = memory.estimate_run(RunConfig.from_dict(config))
        where = self.machine()
        available = where["available"]
        return {**est, "available": available, "where": where["where"],
                "verdict": memory.verdict(est["total"], available) if available else None,
                "advice": memory.oom_advice(est, available) if available else [],
                "ladder": memory.oom_advice(est, est["total"])}  # the rungs, as if it had only just not fitted

    def machine(self) -> dict:
        return machine_facts()

    def measure_memory(self, config: dict) -> dict:
        engine.require_engine("Measuring a training step")
        caps = self.capabilities()
        if not caps["measure"]:
            raise UserError(f"Measuring a real step is turned off here: {caps['why']}.")
        return measure_in_worker(config)

    def training_speed(self, config, measured=None) -> dict | None:
        return runs.observed_speed(RunConfig.from_dict(config), measured=measured)

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, config: dict, name=None, owner=None) -> str:
        engine.require_engine("Training")
        caps = self.capabilities()
        if not caps["train"]:
            raise UserError(f"Training is turned off here: {caps['why']}. Point TuneLab at a GPU box "
                            "(TUNELAB_BACKEND=ray) to train.")
        cfg = RunConfig.from_dict(config)
        cfg.validate("the planned run")
        return workers.start(cfg, name, owner=owner).name

    def resume_run(self, run_id, owner=None) -> None:
        engine.require_engine("Training")
        run_dir = self._run_dir(run_id)
        runs.check_control(run_dir, owner, "resume")
        workers.launch(run_dir, resume=True)

    def stop_run(self, run_id, owner=None) -> None:
        run_dir = self._run_dir(run_id)
        runs.check_control(run_dir, owner, "stop")
        workers.request_stop(run_dir)

    def list_runs(self) -> list[dict]:
        if self.settings.get("standby", True):
            standby.prestart_if_idle()  # one that timed out or died is replaced while nothing trains
        return runs.list_runs()

    def delete_run(self, run_id, owner=None) -> dict:
        freed = runs.delete_run(self._run_dir(run_id), owner)
        return {"run_id": run_id, "freed_bytes": freed}

    def find_run(self, run_id):
        if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
            return None
        return run_id if (runs.runs_root() / run_id / "status.json").is_file() else None

    def run_progress(self, run_id) -> dict:
        return runs.progress(self._run_dir(run_id))

    def run_metrics(self, run_id) -> list[dict]:
        return runs.read_metrics(self._run_dir(run_id))

    def run_config(self, run_id) -> dict:
        return runs.run_config(self._run_dir(run_id)).to_dict()

    def run_log(self, run_id, lines=40) -> str:
        log = self._run_dir(run_id) / "log.txt"
        if not log.is_file():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    # -- experiments: the runs one after another, chained by a driver process (core.experiment_driver) ----
    def start_experiment(self, plan, setting, values, budget_s=120, owner=None) -> str:
        engine.require_engine("Running an experiment")
        caps = self.capabilities()
        if not caps["train"]:
            raise UserError(f"Training is turned off here: {caps['why']}. Point TuneLab at a GPU box "
                            "(TUNELAB_BACKEND=ray) to run experiments.")
        folder = experiments.create_experiment(None, self.plan_experiment(plan, setting, values, budget_s), owner)
        experiment_driver.launch_driver(folder)
        return folder.name

    def experiment(self, exp_id) -> dict:
        record = experiments.read_experiment(experiments.experiment_folder(exp_id))
        experiment_driver.ensure_driver(record["path"], record)  # its driver died with values to run: again
        return record

    def list_experiments(self) -> list[dict]:
        return experiments.list_experiments()

    def stop_experiment(self, exp_id, owner=None) -> None:
        experiment_driver.stop_experiment_runs(experiments.experiment_folder(exp_id), owner)

    # -- generate -------------------------------------------------------------------------------
    def next_token_distribution(self, model, prompt, sampler="greedy", params=None, top=15) -> dict:
        engine.require_engine("Reading the next-token probabilities")  # before core.generate, which imports torch
        loaded, tok = self.load(model)
        return generate.next_token_distribution(loaded, tok, prompt, sampler, params, top=top,
                                                registry=self._registry())

    def generate(self, model, prompt, sampler="greedy", params=None, max_new_tokens=128, seed=0):
        engine.require_engine("Generating text")  # before core.generate, which imports torch
        loaded, tok = self.load(model)
        yield from generate.generate(loaded, tok, prompt, sampler, params, max_new_tokens, seed=seed, stream=True,
                                     registry=self._registry())

    # -- evaluate -------------------------------------------------------------------------------
    def evaluate(self, run_id, data_path=None, evaluators=None, limit=None, max_new_tokens=96,
                 evaluator_params=None, progress=None) -> dict:
        engine.require_engine("Evaluating a run")
        run_dir = self._run_dir(run_id)
        base = self.load(runs.run_config(run_dir).model)
        tuned = self.load(run_model(run_id))
        return evaluate.with_comparison(evaluate.evaluate_run(
            run_dir, data_path, evaluators=evaluators, limit=limit, max_new_tokens=max_new_tokens, progress=progress,
            registry=self._registry(), evaluator_params=evaluator_params, loaded=(base, tuned)))

    def eval_report(self, run_id) -> dict | None:
        return evaluate.with_comparison(evaluate.load_report(self._run_dir(run_id)))

    # -- export ---------------------------------------------------------------------------------
    def export_run(self, run_id, out_dir, type="f16", sampler=None, progress=None, keep_anyway=False) -> dict:
        engine.require_engine("Exporting a model")
        return export.export_run(self._run_dir(run_id), out_dir, type=type, sampler=sampler, progress=progress,
                                 keep_anyway=keep_anyway)

    # -- plugins --------------------------------------------------------------------------------
    def set_plugin_enabled(self, name, enabled) -> None:
        registry.set_enabled(name, bool(enabled))
        registry.reset_registry()  # the next verb loads the plugins again, with this one on or off

    def catalog(self) -> list[dict]:
        return catalog.with_status()

    def install_plugin(self, package) -> dict:
        caps = self.capabilities()
        if not caps["install_plugins"]:
            raise UserError(f"Installing plugins is turned off here: {caps['why']}.")
        result = catalog.install(catalog.find(package))
        registry.reset_registry()  # the next verb sees the new entry points
        return result

    def embedded_ready(self) -> bool:
        return models.embedded_ready()
