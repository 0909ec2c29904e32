"""What every bench script shares: the lesson's examples, the clocks, the peaks, the processes, the machine."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "science_tutor_train.messages.jsonl"
BATCH_SIZE, MAX_LENGTH, SEED = 8, 256, 0


def lesson_examples(n: int, tokenizer) -> list[dict]:
    """The first ``n`` conversations of the lesson's training file, encoded as the engine trains them."""
    from tunelab.core import data

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [data.encode_messages(r["messages"], tokenizer, MAX_LENGTH) for r in rows]


def lesson_batches(n: int = 64, pad_to: int = 1):
    """``(batches, tokenizer)``: the examples in TuneLab's length-grouped batches of 8, in its order, each
    padded as the engine pads it on the device it trains on (``pad_to``: ``tunelab.core.machine.pad_multiple``)."""
    from tunelab.core import data, models

    tokenizer = models.load_tokenizer("embedded")
    examples = lesson_examples(n, tokenizer)
    order = data.length_grouped_batches([len(e["input_ids"]) for e in examples], BATCH_SIZE, SEED)
    return [data.collate([examples[j] for j in idx], tokenizer.pad_token_id, pad_to, MAX_LENGTH)
            for idx in order], tokenizer


def matmul_tflops(device: str = "cpu", dtype=None, size: int = 2048, repeats: int = 20) -> float:
    """The best TFLOP/s of a ``size`` x ``size`` matmul on ``device``: the ceiling MFU is measured against."""
    import time

    import torch

    a = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    b = torch.randn(size, size, device=device, dtype=dtype or torch.float32)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up: kernel selection, page-in
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * size ** 3 / best / 1e12


def sync(device) -> None:
    """Wait for the GPU's queued work (a CPU runs synchronously): before reading a clock."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(config, length: float) -> float:
    """Training FLOPs per token: 6 N (forward and backward through N weights) + attention, as nanoGPT counts."""
    from tunelab.core.memory import _linear_shapes

    return 6 * _linear_shapes(config)[0] + 12 * config.num_hidden_layers * config.hidden_size * length


def bf16_gate() -> str | None:
    """None on a CPU with native bf16 maths; else the line a CPU bench prints as it skips its bf16 work.

    Without AVX-512 BF16 or AMX, PyTorch emulates bf16 through fp32: on an AMD EPYC without avx512_bf16 one
    2048² bf16 product took 60 s, so the bf16 matmul peak (and TRL's bf16 defaults) would keep a bench
    from ever ending there. What makes sense on such a CPU is fp32, which is what ``precision: auto`` trains in.
    """
    from tunelab.core import machine

    if machine.cpu_bf16_flags():
        return None
    return ("this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in /proc/cpuinfo): PyTorch would emulate "
            "it through fp32, so the bf16 matmul peak and the bf16 peers (TRL at its defaults and at its fastest, "
            "TuneLab in bf16) are skipped; TuneLab's defaults train in fp32 here")


def run_json(args: list[str], timeout: float | None = None) -> dict:
    """Run ``python ARGS`` from the repository in a fresh process; its last stdout line, read as JSON.

    ``{"error": ...}`` (with the end of its stderr) when it failed, printed no JSON or ran past ``timeout``
    seconds (then it is killed): one failing peer must not end a run that measures several.
    """
    try:
        proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"ran past its {timeout:.0f} s and was stopped"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-1500:] or proc.stdout.strip()[-500:]}"}


def versions(names=("torch", "transformers", "trl", "datasets", "accelerate", "peft", "ray")) -> str:
    """``torch 2.11.0, transformers 5.23.0, trl not installed, ..., Python 3.12.3``: read from the installed
    distributions, without importing them (importing trl alone takes seconds)."""
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"
    return ", ".join(f"{n} {version(n)}" for n in names) + f", Python {platform.python_version()}"


def cpu_name() -> str:
    """The CPU's model name and core count, as /proc/cpuinfo says."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or "unknown CPU")
    return f"{name}, {os.cpu_count()} cores"
