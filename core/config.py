"""The run configuration: every key, its default and what it means, in one place.

A ``RunConfig`` is a plain dataclass that round-trips through YAML. Unknown
keys and bad values are refused with a clear error *before* any model loads.
``python -m tunelab train config.yaml --set lr=1e-4 --set lora.r=8`` overrides keys.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .machine import PRECISIONS

METHODS = ("full", "lora")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a config may say; core.machine resolves "auto"

# key -> (help, (min, max) or choices or None). Defaults live on the dataclasses below.
CONFIG_DOCS: dict[str, tuple[str, object]] = {
    "model": ("'embedded' (SmolLM2-135M-Instruct, offline), a Hugging Face Hub id, or a local model folder.", None),
    "data.path": ("The training file (.json, .jsonl, .csv, .txt).", None),
    "data.format": ("A data-format plugin name; empty = detect from the file.", None),
    "data.params": ("Options for the data format (e.g. csv column names).", None),
    "data.val_fraction": ("Share of examples held out to measure validation loss (0 to 0.5).", (0.0, 0.5)),
    "method": ("'full' trains every weight; 'lora' trains small low-rank adapters and freezes the rest.", METHODS),
    "lora.r": ("LoRA rank: the adapters' width. 8-32 is typical; higher = more capacity and memory.", (1, 512)),
    "lora.alpha": ("LoRA scaling numerator (effective scale alpha/r); commonly 2 x r.", (1, 4096)),
    "lora.dropout": ("Dropout on the adapters' input, against overfitting small data sets.", (0.0, 0.9)),
    "lora.target_modules": ("Layers to adapt; empty = sensible defaults for the architecture.", None),
    "max_length": ("Longest sequence in tokens; longer conversations are truncated.", (8, 32768)),
    "epochs": ("Passes over the training set (ignored when max_steps > 0).", (0.01, 1000)),
    "max_steps": ("Optimizer steps to run; 0 = derive from epochs.", (0, 10_000_000)),
    "batch_size": ("Examples per forward pass. Memory grows with it.", (1, 4096)),
    "grad_accum": ("Micro-batches per optimizer step: effective batch = batch_size x grad_accum, "
                   "at the memory cost of one batch.", (1, 4096)),
    "workers": ("Training processes in data parallel (one per GPU; CPU processes without one), each with a copy "
                "of the model and every N-th micro-batch: effective batch = batch_size x grad_accum x workers.",
                (1, 1024)),
    "lr": ("Peak learning rate. Full fine-tuning: 1e-5 to 1e-4; LoRA: 1e-4 to 1e-3.", (1e-8, 1.0)),
    "scheduler": ("How the learning rate moves after warmup: linear decay, cosine decay, or constant.", SCHEDULERS),
    "warmup_ratio": ("Share of steps spent ramping the learning rate up from 0 (0 to 0.5).", (0.0, 0.5)),
    "weight_decay": ("AdamW weight decay: pulls weights gently towards zero (0 to 0.1 typical).", (0.0, 1.0)),
    "max_grad_norm": ("Clip the gradient norm to this (0 = no clipping). Guards against loss spikes.", (0.0, 1000.0)),
    "eval_every": ("Run validation every N optimizer steps (0 = only at the end).", (0, 10_000_000)),
    "save_every": ("Save a checkpoint every N optimizer steps (0 = only when stopping and at the end).", (0, 10_000_000)),
    "keep_checkpoints": ("How many of the newest checkpoints to keep while training (older ones are deleted as new "
                         "ones are saved). A full fine-tuning checkpoint is about 3x the model (weights and AdamW's "
                         "two moments); a finished run keeps none, only final/.", (1, 1000)),
    "log_every": ("Write a metrics row every N optimizer steps (1 = every step).", (1, 10_000)),
    "seed": ("Random seed: same seed, same data order and initial adapters, same curve.", (0, 2**31 - 1)),
    "precision": ("'auto' = bf16 autocast on CPUs with native bf16 (AVX-512 BF16 or AMX), else fp32 on CPU; bf16 on GPUs that support it, else fp16 with a grad scaler.", PRECISION_CHOICES),
    "gradient_checkpointing": ("Recompute activations in the backward pass: much less memory, ~30% slower.", None),
    "train_on_prompt": ("Also train on the user's tokens (normally only the assistant's reply is learned).", None),
}

# Names a transformers/TRL user may type, and the key TuneLab uses for them (for the error's hint).
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
           "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
           "num_workers": "workers", "num_processes": "workers", "world_size": "workers",
           "lr_scheduler_type": "scheduler", "max_seq_length": "max_length", "warmup": "warmup_ratio",
           "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
           "save_total_limit": "keep_checkpoints"}

# Why each range is what it is: said beside a refused value (the page's widget, --set, a config file).
RANGE_REASONS = {
    "data.val_fraction": "it is a share of the examples, and holding out more than half leaves less to learn from "
                         "than to check with",
    "lora.r": "the adapters need a width of at least 1, and past 512 they are as large as the layers they adapt",
    "lora.alpha": "the adapters' scale is alpha / r; commonly alpha = 2 x r",
    "lora.dropout": "it is a probability; above 0.9 the adapters would see almost nothing",
    "max_length": "an example needs room for a question and an answer (8 tokens at least), and 32,768 is beyond "
                  "what any model here reads at once (and what memory holds)",
    "epochs": "it counts passes over the data, so 0 trains nothing; for an exact number of steps set max_steps",
    "max_steps": "0 means 'count the steps from epochs'; 10 million steps would not finish on any machine here",
    "batch_size": "a forward pass needs at least one example",
    "grad_accum": "an optimizer step needs at least one micro-batch",
    "workers": "training needs at least one process",
    "lr": "it is the size of each step: at 0 nothing is learned, below 0 the model is pushed the wrong way, and "
          "above 1 every step overshoots (full fine-tuning: 1e-5 to 1e-4; LoRA: 1e-4 to 1e-3)",
    "warmup_ratio": "it is a share of the steps; warming up for more than half of them leaves little at full speed",
    "weight_decay": "it is a share of each weight taken away per step; 0 to 0.1 is typical, 1 would erase them",
    "max_grad_norm": "0 turns clipping off; a negative norm means nothing",
    "eval_every": "0 means 'only at the end'; a negative interval means nothing",
    "save_every": "0 means 'only when stopping and at the end'; a negative interval means nothing",
    "log_every": "a metrics row needs at least one step",
    "seed": "random seeds are whole numbers from 0 to 2,147,483,647",
    "keep_checkpoints": "resuming needs at least the newest checkpoint",
}


@dataclass
class DataConfig:
    path: str = "data/science_tutor_train.alpaca.json"
    format: str = ""
    val_fraction: float = 0.1
    params: dict = field(default_factory=dict)


@dataclass
class LoraConfig:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list = field(default_factory=list)


@dataclass
class RunConfig:
    """One training run. Field names are the YAML keys (nested: ``data.*``, ``lora.*``).

    The defaults are the default lesson (configs/lesson.yaml), chosen from measured trials
    recorded in docs/trials.md: full fine-tuning of the embedded model on the bundled set.
    """

    model: str = "embedded"
    data: DataConfig = field(default_factory=DataConfig)
    method: str = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    max_length: int = 256
    epochs: float = 2.0
    max_steps: int = 0
    batch_size: int = 8
    grad_accum: int = 1
    workers: int = 1
    lr: float = 1e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 10
    save_every: int = 0
    keep_checkpoints: int = 1
    log_every: int = 1
    seed: int = 0
    precision: str = "auto"
    gradient_checkpointing: bool = False
    train_on_prompt: bool = False

    # -- conversions ---------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "config") -> "RunConfig":
        """Build and validate; unknown keys and bad values raise ``UserError``."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise UserError(f"{where}: expected a mapping of keys to values, got {type(raw).__name__}")
        cfg = cls()
        for key, value in _flatten(raw).items():
            cfg.set(key, value, where)
        cfg.validate(where)
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def set(self, key: str, value, where: str = "config") -> None:
        """Set a dotted key (``lora.r``), converting ``value`` to the field's type (its range is
        checked by :meth:`validate`, or at once by :func:`value_problem`)."""
        unknown = _unknown_key(key, value)
        if unknown:
            raise UserError(f"{where}: {unknown}")
        target, name = self, key
        if "." in key:
            section, name = key.split(".", 1)
            target = getattr(self, section)
        current = getattr(target, name)
        setattr(target, name, _convert(key, value, current, where))

    def validate(self, where: str = "config") -> None:
        """UserError naming the first key with a problem (:func:`problems`: the one set of rules)."""
        found = problems(self)
        if found:
            raise UserError(f"{where}: {next(iter(found.values()))}")

    def get(self, key: str):
        target = self
        for part in key.split("."):
            target = getattr(target, part)
        return target

    def total_steps(self, n_train: int) -> int:
        """Optimizer steps for ``n_train`` examples (``max_steps`` wins when set)."""
        if self.max_steps:
            return self.max_steps
        return max(1, round(self.steps_per_epoch(n_train) * self.epochs))

    def steps_per_epoch(self, n_train: int) -> int:
        """Optimizer steps in one pass over ``n_train`` examples (each step takes ``grad_accum`` micro-batches
        from each of ``workers`` processes)."""
        return max(1, -(-n_train // self.batch_size) // (self.grad_accum * self.workers))

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step: ``batch_size x grad_accum x workers``."""
        return self.batch_size * self.grad_accum * self.workers

    def split_sizes(self, n_examples: int) -> tuple[int, int]:
        """``(n_train, n_val)``: how ``data.val_fraction`` splits ``n_examples`` (see :func:`split_sizes`)."""
        return split_sizes(n_examples, self.data.val_fraction)


def split_sizes(n_examples: int, val_fraction: float) -> tuple[int, int]:
    """``(n_train, n_val)`` for ``n_examples``: the validation share rounded, at least one example
    when ``val_fraction > 0``, and never all of them (training needs one). ``tunelab.core.data.prepare``
    splits with it, and the pages count steps with it, so the two always agree."""
    if n_examples <= 1:
        return max(0, n_examples), 0
    n_val = int(round(n_examples * val_fraction))
    n_val = min(max(n_val, 1 if val_fraction > 0 else 0), n_examples - 1)
    return n_examples - n_val, n_val


# -- the rules: one owner for the config file, --set and the pages' widgets -----------------------
TINY_DATA = 20  # fewer examples than this: a caution (memorised, not learned)


MAX_EVAL_SAMPLES = 10_000  # both models answer each one: 10,000 is hours on a GPU, days on a CPU


def eval_samples_problem(n, label: str = "limit") -> str | None:
    """Why ``n`` cannot be how many held-out examples an evaluation answers, or None.

    ``label`` names the field the value was typed into (the Evaluate page's "Samples", the CLI's
    ``--limit``). Zero is refused, not read as "all": a learner who types 0 meant something else.
    """
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not 1 <= n <= MAX_EVAL_SAMPLES or n != int(n):
        return (f"{label} = {n}: answer at least 1 held-out example (both models answer each one) and at most "
                f"{MAX_EVAL_SAMPLES:,}; on a CPU 8 takes a minute or two")
    return None


def value_problem(key: str, value) -> str | None:
    """Why ``value`` cannot be ``key``, in one sentence that names the key; None when it can.

    ``value`` is what was typed: a number from a widget, a YAML value, or text after ``--set``.
    The checks are the config's own: the key exists, the value has the key's type, and it lies in
    the key's range or among its choices (:data:`CONFIG_DOCS`), with the reason (:data:`RANGE_REASONS`).
    """
    unknown = _unknown_key(key, value)
    if unknown:
        return unknown
    try:
        converted = _convert(key, value, RunConfig().get(key), "")
    except UserError as exc:
        return str(exc)
    return _range_problem(key, converted)


def problems(config) -> dict[str, str]:
    """Every problem of a config, by key: ``{"epochs": "epochs = 0.0 is out of range ...: why"}``; {} when
    there is none. ``config`` is a :class:`RunConfig` or a mapping (nested or dotted keys, as in a
    YAML file or from a page). :meth:`RunConfig.validate`, ``--set`` and the pages all ask this."""
    if isinstance(config, RunConfig):
        flat = _flatten(config.to_dict())
    elif isinstance(config, dict):
        flat = _flatten(config)
    else:
        return {"": f"expected a mapping of keys to values, got {type(config).__name__}"}
    found = {key: problem for key, value in flat.items() if (problem := value_problem(key, value))}
    path = flat.get("data.path", RunConfig().data.path)
    if "data.path" not in found and not (path or "").strip():
        found["data.path"] = "data.path is empty; point it at a training file"
    return found


def cautions(cfg: RunConfig, records: int | None, over_max_length: int | None = None,
             median_tokens: float | None = None, p95_tokens: int | None = None) -> list[str]:
    """What a valid plan will probably regret, for its data (``records`` examples, ``over_max_length`` of
    them longer than ``cfg.max_length``): plain sentences, for the pages to show before Start."""
    out = []
    if records is not None and 0 < records < TINY_DATA:
        out.append(f"Only {records} example{'s' if records != 1 else ''}: the model will learn them by heart in a "
                   f"few steps rather than learn a skill from them. Fine for a quick try; a fine-tune that "
                   "teaches something typically has a few hundred.")
    if records and over_max_length:
        share = over_max_length / records
        size = (f" The median example is {median_tokens:.0f} tokens" if median_tokens else "") + (
            f"; max_length = {p95_tokens} would keep 95% of them whole" if p95_tokens else "")
        out.append(f"{over_max_length} of {records} examples ({share:.0%}) are longer than max_length = "
                   f"{cfg.max_length} tokens and will be cut: the model trains on their first {cfg.max_length} "
                   "tokens only, so answers lose their endings (or are dropped entirely when the prompt fills "
                   f"them).{size + '.' if size else ''}")
    return out


def _unknown_key(key: str, value) -> str | None:
    """Why ``key`` is not a config key (with the closest one), or None."""
    if key in ("data", "lora"):
        keys = ", ".join(k for k in CONFIG_DOCS if k.startswith(key + "."))
        return f"'{key}' must be a section of keys ({keys}), got {value!r}"
    if key in CONFIG_DOCS:
        return None
    close = [k for k in CONFIG_DOCS if k.split(".")[-1] == key.split(".")[-1]]
    close = close or [ALIASES[key]] if key in ALIASES else close
    close = close or difflib.get_close_matches(key, list(CONFIG_DOCS), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(CONFIG_DOCS)}"
    return f"unknown key '{key}'{hint}"


def _range_problem(key: str, value) -> str | None:
    """Why a value of the right type is outside ``key``'s range or choices, or None."""
    rule = CONFIG_DOCS[key][1]
    if isinstance(rule, tuple) and rule and isinstance(rule[0], str):
        return None if value in rule else f"{key} must be one of {', '.join(rule)}, got {value!r}"
    if isinstance(rule, tuple):
        lo, hi = rule
        if not lo <= value <= hi:  # NaN is refused too: it compares false
            reason = RANGE_REASONS.get(key)
            return f"{key} = {value} is out of range [{lo}, {hi}]" + (f": {reason}" if reason else "")
    return None


def changed_keys(cfg: RunConfig) -> dict:
    """The keys of ``cfg`` that differ from the defaults, dotted (``lora.r``), with their values."""
    base = _flatten(RunConfig().to_dict())
    return {k: v for k, v in _flatten(cfg.to_dict()).items() if base.get(k) != v}


def _flatten(raw: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict) and full in ("data", "lora"):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def _convert(key: str, value, current, where: str):
    """Coerce ``value`` (YAML value or ``--set`` string) to the type of the default ``current``."""
    import yaml

    if isinstance(value, str) and not isinstance(current, str):
        try:
            value = yaml.safe_load(value)  # "1e-4" -> float, "true" -> bool, "[a, b]" -> list
        except yaml.YAMLError:
            pass
        except RecursionError:  # thousands of nested brackets: say so instead of a 3,000-line traceback
            head = where if key in where else (f"{where}: {key}" if where else key)
            raise UserError(f"{head}: the value is nested too deeply to read; give a plain value "
                            "such as a number, a word or a short list") from None
        if isinstance(current, (int, float)) and not isinstance(current, bool) and isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
    kind = type(current)
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif kind is list:
        if value is None:
            return []
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    elif kind is dict:
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
    elif kind is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    expected = {"bool": "true or false", "int": "a whole number", "float": "a number",
                "list": "a list of names (a, b or [a, b])", "dict": "a mapping", "str": "text"}[kind.__name__]
    raise UserError(f"{where + ': ' if where else ''}{key} must be {expected}, got {value!r}")


def load_config(path, overrides=()) -> RunConfig:
    """Read a YAML config file and apply ``key=value`` overrides."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}{at}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    except RecursionError:
        raise UserError(f"{path}: the YAML is nested too deeply to read (thousands of levels); a config is "
                        "keys with plain values, and data/lora sections one level deep") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected keys and values at the top level, got {type(raw).__name__}")
    cfg = RunConfig.from_dict(raw, where=str(path))
    apply_overrides(cfg, overrides)
    return cfg


def apply_overrides(cfg: RunConfig, overrides) -> RunConfig:
    for item in overrides or ():
        if "=" not in item:
            raise UserError(f"--set {item}: expected key=value, e.g. --set lr=1e-4")
        key, value = (part.strip() for part in item.split("=", 1))
        cfg.set(key, value, where=f"--set {key}")
        problem = _range_problem(key, cfg.get(key))
        if problem:  # named at once, with the value as typed
            raise UserError(f"--set {key}={value}: {problem}")
    cfg.validate("--set")
    return cfg


def defaults_table() -> list[dict]:
    """Every key with its default and help: for the README, the dashboard and ``--help``."""
    base = RunConfig()
    return [{"key": k, "default": base.get(k), "help": h, "range": r} for k, (h, r) in CONFIG_DOCS.items()]
