"""The planning rules: what a planned run means before anything runs.

The learning-rate schedule, the step count and the time estimate, and the training step's source
for the Fine-tune page. Pure functions of a :class:`~core.config.RunConfig`: no torch, no data file,
no run folder, so the thin dashboard (Streamlit Cloud, no torch) answers them itself and the
training loop (``tunelab.core.train``) uses the very same functions.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

from .config import RunConfig, changed_keys
from .errors import UserError


def lr_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based): linear warm-up, then decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # linear


def warmup_steps(cfg: RunConfig, total_steps: int) -> int:
    """Optimizer steps spent ramping the learning rate up: ``warmup_ratio`` of them, rounded up."""
    return math.ceil(cfg.warmup_ratio * total_steps)


def lr_schedule_at(cfg: RunConfig, total_steps: int, step: int) -> float:
    """The lr used by optimizer step ``step`` (0-based), as logged in ``metrics.jsonl``."""
    return cfg.lr * lr_factor(step, total_steps, warmup_steps(cfg, total_steps), cfg.scheduler)


def lr_schedule(cfg: RunConfig, total_steps: int) -> list[float]:
    """The learning rate used at each optimizer step: what the Set-up page charts."""
    return [lr_schedule_at(cfg, total_steps, s) for s in range(total_steps)]


def estimate_seconds(cfg: RunConfig, n_train: int, median_tokens: float, tokens_per_s: float) -> float:
    """Training time from a measured speed: steps x examples per step x tokens per example / speed.

    ``tokens_per_s`` is one worker's speed; ``workers`` processes share a step's examples, so ideally
    they take 1/workers of the time (less ideal in practice: they also exchange gradients every step,
    and on a CPU they share its cores).
    """
    tokens = min(median_tokens, cfg.max_length)  # a longer example is cut at max_length: its tail costs nothing
    return cfg.total_steps(n_train) * cfg.effective_batch * tokens / tokens_per_s / cfg.workers


def plan_summary(config: dict, n_records: int | None, median_tokens: float | None = None,
                 tokens_per_s: float | None = None) -> dict:
    """What a planned run means, for ``n_records`` examples in its data: ``{"n_train", "n_val",
    "total_steps", "warmup_steps", "lr_schedule" (the lr at each step), "effective_batch",
    "changed" ({key: value} that differ from the defaults), "cli_sets" (the same as
    ``--set key=value`` strings; ``data.params`` only fits in a file), "seconds"}``.

    ``seconds`` is :func:`estimate_seconds` from a measured speed and the data's median example
    length (``tokens_per_example``: capped at max_length), None when either is unknown. Pure: no model
    and no data file are read.
    """
    cfg = RunConfig.from_dict(config, "the planned run")
    n_train, n_val = cfg.split_sizes(int(n_records or 0))
    total = cfg.total_steps(n_train)
    changed = changed_keys(cfg)
    cli_sets = [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in changed.items() if k != "data.params"]
    seconds = (estimate_seconds(cfg, n_train, median_tokens, tokens_per_s)
               if n_records and median_tokens and tokens_per_s else None)
    return {"n_train": n_train, "n_val": n_val, "total_steps": total,
            "warmup_steps": warmup_steps(cfg, total), "lr_schedule": lr_schedule(cfg, total),
            "effective_batch": cfg.effective_batch, "workers": cfg.workers, "changed": changed, "cli_sets": cli_sets,
            "seconds": seconds,
            "tokens_per_example": min(median_tokens, cfg.max_length) if median_tokens else None}


def loop_source() -> dict:
    """``{"name", "source"}`` of the training step learners read (``tunelab.core.train.train_step``;
    ``tunelab.core.train.train`` until the step is its own function). Read from the file, not imported,
    so it needs no torch."""
    text = Path(__file__).with_name("train.py").read_text(encoding="utf-8")
    functions = {node.name: node for node in ast.parse(text).body if isinstance(node, ast.FunctionDef)}
    name = "train_step" if "train_step" in functions else "train"
    return {"name": f"core.train.{name}", "source": ast.get_source_segment(text, functions[name])}


def check_resources(workers: int, gpus: float, cpus: float) -> bool:
    """Whether the group uses GPUs; a UserError when the cluster cannot hold ``workers`` ranks.

    A group waits until every rank has its resources: asking for more than the cluster has would
    leave the run pending forever, so it is refused before it starts.
    """
    if gpus >= 1:
        if workers > gpus:
            raise UserError(f"workers: {workers} asks for {workers} GPUs, one per worker, but the cluster has "
                            f"{int(gpus)}; set workers to {int(gpus)} or fewer (or add GPU nodes)")
        return True
    if workers > cpus:
        raise UserError(f"workers: {workers} asks for {workers} CPU processes, but the cluster has {int(cpus)} "
                        f"CPUs; set workers to {int(cpus)} or fewer")
    return False
