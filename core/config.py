"""The run configuration: every key, its default and what it means, in one place.

A ``RunConfig`` is a plain dataclass that round-trips through YAML. Unknown
keys and bad values are refused with a clear error *before* any model loads.
``python -m core train config.yaml --set lr=1e-4 --set lora.r=8`` overrides keys.
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
    "lr": ("Peak learning rate. Full fine-tuning: 1e-5 to 1e-4; LoRA: 1e-4 to 1e-3.", (1e-8, 1.0)),
    "scheduler": ("How the learning rate moves after warmup: linear decay, cosine decay, or constant.", SCHEDULERS),
    "warmup_ratio": ("Share of steps spent ramping the learning rate up from 0 (0 to 0.5).", (0.0, 0.5)),
    "weight_decay": ("AdamW weight decay: pulls weights gently towards zero (0 to 0.1 typical).", (0.0, 1.0)),
    "max_grad_norm": ("Clip the gradient norm to this (0 = no clipping). Guards against loss spikes.", (0.0, 1000.0)),
    "eval_every": ("Run validation every N optimizer steps (0 = only at the end).", (0, 10_000_000)),
    "save_every": ("Save a checkpoint every N optimizer steps (0 = only when stopping and at the end).", (0, 10_000_000)),
    "log_every": ("Write a metrics row every N optimizer steps (1 = every step).", (1, 10_000)),
    "seed": ("Random seed: same seed, same data order and initial adapters, same curve.", (0, 2**31 - 1)),
    "precision": ("'auto' = bf16 autocast on CPUs with native bf16 (AVX-512 BF16 or AMX), else fp32 on CPU; bf16 on GPUs that support it, else fp16 with a grad scaler.", PRECISION_CHOICES),
    "gradient_checkpointing": ("Recompute activations in the backward pass: much less memory, ~30% slower.", None),
    "train_on_prompt": ("Also train on the user's tokens (normally only the assistant's reply is learned).", None),
}

# Names a transformers/TRL user may type, and the key TuneLab uses for them (for the error's hint).
ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs",
           "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
           "lr_scheduler_type": "scheduler", "max_seq_length": "max_length", "warmup": "warmup_ratio",
           "lora_r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout"}


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
    lr: float = 1e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 10
    save_every: int = 0
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
        """Set a dotted key (``lora.r``), converting ``value`` to the field's type."""
        if key in ("data", "lora"):
            keys = ", ".join(k for k in CONFIG_DOCS if k.startswith(key + "."))
            raise UserError(f"{where}: '{key}' must be a section of keys ({keys}), got {value!r}")
        if key not in CONFIG_DOCS:
            close = [k for k in CONFIG_DOCS if k.split(".")[-1] == key.split(".")[-1]]
            close = close or [ALIASES[key]] if key in ALIASES else close
            close = close or difflib.get_close_matches(key, list(CONFIG_DOCS), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else f"; known keys: {', '.join(CONFIG_DOCS)}"
            raise UserError(f"{where}: unknown key '{key}'{hint}")
        target, name = self, key
        if "." in key:
            section, name = key.split(".", 1)
            target = getattr(self, section)
        current = getattr(target, name)
        setattr(target, name, _convert(key, value, current, where))

    def validate(self, where: str = "config") -> None:
        for key, (_, rule) in CONFIG_DOCS.items():
            value = self.get(key)
            if isinstance(rule, tuple) and len(rule) and isinstance(rule[0], str):
                if value not in rule:
                    raise UserError(f"{where}: {key} must be one of {', '.join(rule)}, got {value!r}")
            elif isinstance(rule, tuple):
                lo, hi = rule
                if not lo <= value <= hi:
                    raise UserError(f"{where}: {key} = {value} is out of range [{lo}, {hi}]")
        if not self.data.path:
            raise UserError(f"{where}: data.path is empty; point it at a training file")

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
        """Optimizer steps in one pass over ``n_train`` examples."""
        return max(1, -(-n_train // self.batch_size) // self.grad_accum)

    def split_sizes(self, n_examples: int) -> tuple[int, int]:
        """``(n_train, n_val)``: how ``data.val_fraction`` splits ``n_examples`` (see :func:`split_sizes`)."""
        return split_sizes(n_examples, self.data.val_fraction)


def split_sizes(n_examples: int, val_fraction: float) -> tuple[int, int]:
    """``(n_train, n_val)`` for ``n_examples``: the validation share rounded, at least one example
    when ``val_fraction > 0``, and never all of them (training needs one). ``core.data.prepare``
    splits with it, and the pages count steps with it, so the two always agree."""
    if n_examples <= 1:
        return max(0, n_examples), 0
    n_val = int(round(n_examples * val_fraction))
    n_val = min(max(n_val, 1 if val_fraction > 0 else 0), n_examples - 1)
    return n_examples - n_val, n_val


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
            raise UserError(f"{where}{'' if key in where else ': ' + key}: the value is nested too deeply to read; give a plain value "
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
    raise UserError(f"{where}: {key} must be {expected}, got {value!r}")


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
        key, value = item.split("=", 1)
        cfg.set(key.strip(), value.strip(), where=f"--set {key.strip()}")
    cfg.validate("--set")
    return cfg


def defaults_table() -> list[dict]:
    """Every key with its default and help: for the README, the dashboard and ``--help``."""
    base = RunConfig()
    return [{"key": k, "default": base.get(k), "help": h, "range": r} for k, (h, r) in CONFIG_DOCS.items()]
