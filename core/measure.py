"""Measure a real training step: its peak memory and its speed, on this machine.

:func:`measure_step` builds the model with :func:`tunelab.core.train.build_model` and runs
:func:`tunelab.core.train.train_step`, the training loop's own step, on random tokens of exactly the
shape the estimate (:mod:`tunelab.core.memory`) assumes: so the two can be compared.
:func:`measure_in_worker` runs it in a separate process (``python -m tunelab measure``), so a
dashboard never loads a model, or runs out of memory, inside its own process.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .config import RunConfig
from .errors import UserError
from .paths import REPO_ROOT
from .machine import resolve_precision
from . import train



def settings_config(model: str, method: str = "full", precision: str = "auto", batch_size: int = 4,
                    max_length: int = 256, gradient_checkpointing: bool = False, lora_r: int = 16) -> RunConfig:
    """A RunConfig from the memory estimate's settings (the rest at the defaults)."""
    return RunConfig.from_dict({"model": model, "method": method, "precision": precision, "batch_size": batch_size,
                                "max_length": max_length, "gradient_checkpointing": gradient_checkpointing,
                                "lora": {"r": lora_r}})


class PeakRSS:
    """Sample this process's anonymous resident memory every few ms in a background thread.

    Why sampling, not ``resource.getrusage().ru_maxrss``: ru_maxrss is the process's all-time
    high-water mark, so a step that stays below an earlier peak (loading the model, a previous
    step) reads as 0. Why *anonymous* memory (RSS minus file-backed pages): the first backward
    pass pages in hundreds of MB of libtorch's code, which is RSS but not training memory and is
    given back under pressure. PyTorch ops release the GIL, so the thread gets to run; a spike
    shorter than the interval can be missed.
    """

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc, self.interval = psutil.Process(), interval
        self._stop = threading.Event()

    def _anon(self) -> int:
        info = self.proc.memory_info()
        return info.rss - getattr(info, "shared", 0)

    def __enter__(self):
        release_free_memory()
        self.start = self.peak = self._anon()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._anon())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def increase(self) -> int:
        return max(0, self.peak - self.start)


def release_free_memory() -> None:
    """Give freed heap memory back to the OS (glibc), so the step's growth shows in RSS.

    Otherwise the step could reuse memory an earlier step freed but the process kept, and
    the increase would read low.
    """
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _tensor_bytes(model, optimizer=None) -> int:
    """Bytes held by the model's parameters and buffers (and the optimizer's state)."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    if optimizer is not None:
        tensors += [t for state in optimizer.state.values() for t in state.values() if hasattr(t, "nbytes")]
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.nbytes
    return total


def measure_step(cfg: RunConfig, steps: int = 2, model=None, device: str | None = None) -> dict:
    """Run ``steps`` real training steps of ``cfg`` on random tokens and measure the peak memory.

    The batch is ``batch_size`` x ``max_length`` random token ids, every one trained: the
    shape the estimate assumes. ``model`` (optional) is an already loaded model to use
    instead of loading ``cfg.model``.

    Why ``steps=2``: AdamW creates its state in the first step, so the first step's peak is lower
    than every later one's; the result is the peak over the steps, and ``step_peaks`` lists each.

    ``peak_bytes``: on CUDA, ``torch.cuda.max_memory_allocated`` (after resetting it), which
    includes the weights. On CPU, the peak RSS increase during the step (sampled, see
    :class:`PeakRSS`) plus the bytes of the weights and optimizer state already resident before
    it -- so both are comparable with the estimate's ``total``. On CPU the RSS also holds glibc's
    heap fragmentation (~0.1-0.2 GiB for SmolLM2-135M in full fine-tuning, ~0.5 GiB with LoRA's
    many small tensors; ``MALLOC_MMAP_THRESHOLD_=65536`` brings it to within 2% of the estimate).
    """
    import torch

    precision_name = resolve_precision(cfg.precision)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    loaded = (model, None) if model is not None else None
    model, _ = train.build_model(cfg, model=loaded, precision=precision_name, device_type=torch.device(device).type)
    model.to(device)
    optimizer = train.build_optimizer(model, cfg)
    scheduler = train.build_scheduler(optimizer, cfg, max(1, steps))
    precision = train.Precision(precision_name, device)
    ids = torch.randint(0, model.config.vocab_size, (cfg.batch_size, cfg.max_length),
                        generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}

    peaks, times = [], []
    for _ in range(max(1, steps)):
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            resident = _tensor_bytes(model, optimizer)
            meter = PeakRSS().__enter__()
        start = time.perf_counter()
        train.train_step(model, [batch], optimizer, scheduler, precision, cfg.max_grad_norm)
        if device == "cuda":
            torch.cuda.synchronize()
            peaks.append(torch.cuda.max_memory_allocated())
        else:
            meter.__exit__(None, None, None)
            peaks.append(resident + meter.increase)
        times.append(time.perf_counter() - start)
    total, trainable = 0, 0
    for p in {id(p): p for p in model.parameters()}.values():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"peak_bytes": int(max(peaks)), "step_peaks": [int(p) for p in peaks],
            "step_seconds": times[-1], "step_times": times, "device": device,
            "tokens_per_s": cfg.batch_size * cfg.max_length / times[-1],  # every sequence is max_length long
            "how": "torch.cuda.max_memory_allocated" if device == "cuda" else "resident tensors + sampled RSS increase",
            "method": cfg.method, "precision": precision_name, "batch_size": cfg.batch_size,
            "max_length": cfg.max_length, "gradient_checkpointing": cfg.gradient_checkpointing,
            "lora_r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "parameters": total, "trainable_parameters": trainable}


def measure_in_worker(config: dict, steps: int = 2, timeout: float = 1800) -> dict:
    """:func:`measure_step` in a new process (``python -m tunelab measure``); its result as a dict.

    A user's mistake in ``config`` raises ``UserError`` with the worker's own message; a worker
    killed for memory or crashing raises ``RuntimeError`` with the end of its output.
    """
    cfg = RunConfig.from_dict(config)  # bad keys are refused here, before a process starts
    with tempfile.TemporaryDirectory(prefix="tunelab-measure-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(cfg.to_yaml(), encoding="utf-8")
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
        try:
            proc = subprocess.run([sys.executable, "-m", "tunelab", "measure", str(path), "--steps", str(steps)],
                                  cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"measuring a training step took over {timeout:.0f} s and was stopped") from None
    if proc.returncode == 2:
        raise UserError(proc.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if proc.returncode != 0:
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        raise RuntimeError(f"the measuring worker exited with {proc.returncode}{killed}: {proc.stderr[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
