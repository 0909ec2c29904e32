"""This machine: its memory, its accelerator, and the precision training uses on it.

One place answers "what is this computer?" for the memory estimate, the training loop, the CLI
and the pages. torch is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UserError
from .limits import memory_limit, memory_used

PRECISIONS = ("fp32", "bf16", "fp16")
# CPU flags of native bf16 maths (x86): AVX-512 BF16 dot products, or AMX tiles. Without them
# PyTorch emulates bf16 through fp32 and autocast is slower than plain fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags this CPU reports in ``/proc/cpuinfo`` ([] elsewhere, e.g. macOS)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break  # every core reports the same flags
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


# -- the device rule: where a model lives -------------------------------------------------------
DEVICE_ENV = "TUNELAB_DEVICE"


def choose_device(override: str | None, cuda_free: list[int], mps: bool, local_rank: int | None = None) -> str:
    """The device rule, as a plain function of the facts (tested without a GPU).

    ``override``: ``TUNELAB_DEVICE`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``), which wins when it names
    a device that is there. ``cuda_free``: free bytes of each visible GPU. ``local_rank``: this
    process's place in a data-parallel group on its node (each rank takes its own GPU).
    Otherwise: the GPU with the most free memory, else Apple's MPS, else the CPU.
    """
    if override:
        want = override.strip().lower()
        if want == "cpu" or (want == "mps" and mps):
            return want
        if want.startswith("cuda") and cuda_free:
            index = want.partition(":")[2]
            if not index:
                return f"cuda:{max(range(len(cuda_free)), key=cuda_free.__getitem__)}"
            if index.isdigit() and int(index) < len(cuda_free):
                return f"cuda:{int(index)}"
        there = ", ".join(["cpu"] + [f"cuda:{i}" for i in range(len(cuda_free))] + (["mps"] if mps else []))
        raise UserError(f"{DEVICE_ENV}={override!r} is not a device on this machine; use one of {there}, "
                        "or unset it to let TuneLab choose")
    if cuda_free:
        if local_rank is not None:
            return f"cuda:{local_rank % len(cuda_free)}"
        return f"cuda:{max(range(len(cuda_free)), key=cuda_free.__getitem__)}"
    return "mps" if mps else "cpu"


def device(local_rank: int | None = None) -> str:
    """Where models load and train here (:func:`choose_device` on this machine's facts).

    The one owner of the device: training, describe, the next-token chart, generate, evaluate and
    export's read-back all ask here, so a GPU box answers every verb on its GPU.
    """
    import torch

    cuda_free = []
    if torch.cuda.is_available():
        cuda_free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return choose_device(os.environ.get(DEVICE_ENV), cuda_free, mps, local_rank)


def pad_multiple(device_name: str) -> int:
    """How a batch's length is rounded up on ``device_name``: the one rule for the step's shapes.

    On a GPU every new sequence length costs a first step of its own (attention kernels and plans are
    chosen per shape: on an H200 the lesson's first epoch took 17 s against 4.95 s for the same epoch
    again), so lengths round up to multiples of 64: a handful of shapes, at the price of some padding.
    On a CPU nothing is chosen per shape and padding is compute spent on nothing: the longest member.
    """
    return 64 if device_name.startswith("cuda") else 1


def inference_dtype(device_name: str):
    """The weights' dtype for answering (not training) on ``device_name``: what ``precision: auto``
    trains in there on a GPU (bf16, or fp16 without bf16), fp32 on a CPU or MPS (whose 16-bit
    maths would be emulated or unsupported; a CPU with native bf16 uses autocast instead)."""
    import torch

    if not device_name.startswith("cuda"):
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(auto_precision("cuda")[0], torch.float32)


def auto_precision(device_type: str | None = None) -> tuple[str, str]:
    """What ``precision: auto`` means here, and why: ``(precision, reason)``.

    - a CUDA GPU: bf16 where it supports it (Ampere and later), else fp16 with a grad scaler;
    - a CPU with native bf16 (AVX-512 BF16 or AMX): bf16 autocast, about 2x fp32 for a training
      step with the same curve (docs/bench.md);
    - any other CPU, or Apple's MPS: fp32.

    ``device_type="cpu"`` asks for a model kept on the CPU even where there is a GPU.
    """
    import torch

    if device_type != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {name} supports bf16"
        return "fp16", f"auto: {name} has no bf16, so fp16 with a grad scaler"
    if device_type != "cpu" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "fp32", "auto: Apple GPU (MPS) trains in fp32"
    flags = cpu_bf16_flags()
    if flags:
        return "bf16", f"auto: this CPU has native bf16 ({', '.join(flags)}), so bf16 autocast"
    return "fp32", "auto: this CPU has no native bf16, so fp32"


def resolve_precision(precision: str, device_type: str | None = None) -> str:
    """``auto`` -> what this machine trains fastest in (see :func:`auto_precision`); others as given.

    Refuses ``fp16`` without a CUDA GPU: PyTorch's CPU kernels for fp16 training are missing or
    slow, and its grad scaler is meant for GPUs.
    """
    if precision == "auto":
        return auto_precision(device_type)[0]
    if precision not in PRECISIONS:
        raise UserError(f"precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    import torch

    if precision == "fp16" and not torch.cuda.is_available():
        raise UserError("precision fp16 needs a CUDA GPU (CPU kernels for fp16 training are missing); "
                        "use auto, fp32 or bf16")
    return precision


def machine_memory() -> dict:
    """RAM (total, available) and, when there is one, the GPU: name, memory in bytes, count, bf16 support.

    ``cpu_bf16`` lists the CPU's native-bf16 flags (empty when it has none).
    """
    import psutil

    vm = psutil.virtual_memory()
    info = {"ram_total": vm.total, "ram_available": vm.available, "cuda": False, "cpu_bf16": cpu_bf16_flags()}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            free, total = torch.cuda.mem_get_info(0)
            info.update(cuda=True, gpu_name=props.name, gpu_total=total, gpu_available=free,
                        gpu_count=torch.cuda.device_count(), bf16=torch.cuda.is_bf16_supported())
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            info.update(gpu_name="Apple GPU (MPS)")
    except Exception:  # noqa: BLE001 - a broken CUDA set-up must not break the estimate page
        pass
    return info


def available_for_training(info: dict | None = None) -> tuple[int, str]:
    """(bytes training can use, where): the GPU's memory when there is one, else free RAM, and in a
    container (a cgroup memory limit, e.g. Streamlit Cloud's 2.7 GB) no more than what its limit leaves.

    The one owner of "what this machine has": the Memory page, the queue and the CLI all ask here.
    """
    info = info or machine_memory()
    if info["cuda"]:
        return info["gpu_total"], f"GPU memory ({info['gpu_name']})"
    available, where = info["ram_available"], "free RAM"
    limit = memory_limit()
    if limit is not None:  # a container: its cap, not the host's RAM, is what we have
        free_in_limit = max(0, limit - (memory_used() or 0))
        if free_in_limit < available:
            available, where = free_in_limit, f"this app's {limit / 2**30:.1f} GiB memory limit (cgroup)"
    return available, where


def machine_facts() -> dict:
    """Everything the pages show about this machine: cores, RAM, GPU, the container's limit, and what
    training may use (:func:`available_for_training`)."""
    info = machine_memory()
    available, where = available_for_training(info)
    return {"cpu_cores": os.cpu_count() or 1, **info, "available": available, "where": where,
            "memory_limit": memory_limit()}


def fmt_bytes(n: float) -> str:
    """``1288490188`` -> ``'1.2 GiB'`` (binary units, as ``nvidia-smi`` and ``free`` use)."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"


class Precision:
    """How the maths runs: ``torch.autocast`` to ``dtype`` (None = fp32), and fp16's grad scaler.

    Mixed precision keeps the fp32 weights (the master copy AdamW updates) and runs matrix
    multiplies in 16 bits. fp16's narrow range needs the loss scaled up before backward and the
    gradients scaled back before clipping; bf16 has fp32's range and needs no scaler.
    """

    def __init__(self, precision: str, device):
        import torch

        self.name, self.device_type = precision, torch.device(device).type
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=precision == "fp16")

    def autocast(self):
        import torch

        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.dtype is not None)
