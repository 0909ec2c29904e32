"""Each speed lever of the training step, measured alone on the same batches (CPU).

    python bench/levers.py [--examples 64] [--steps 4] [--no-bf16]

Runs, in one process and on the same batches of the lesson data (batch 8, max_length 256),
one optimizer step after another under each set-up (after a warm-up of each precision), from
the plain fp32 step (transformers' own loss over every position, AdamW's per-tensor loop) to
TuneLab's default, adding one lever at a time (``tunelab.core.fused``'s norms, SwiGLU and fp32 attention
on a second and third copy of the model). Prints the median seconds per step (after a warm-up step) and the change
each lever brings. Speed only: the peak memory of each set-up is in bench/compare.py, where
each peer has a process of its own.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import lesson_batches  # noqa: E402
from tunelab.core import train  # noqa: E402
from tunelab.core.config import RunConfig  # noqa: E402

LEVERS = [  # (label, model, precision, fused AdamW, loss: "all" positions / "trained" positions / "chunked")
    # model: "plain" as transformers builds it; "fused" with core.fused's RMSNorm and SwiGLU;
    # "fused+attention" with attention in fp32 as well (what core.fused does under bf16 on a CPU)
    ("fp32, transformers' loss, AdamW loop", "plain", "fp32", False, "all"),
    ("+ fused AdamW", "plain", "fp32", True, "all"),
    ("+ logits at trained positions only", "plain", "fp32", True, "trained"),
    ("+ chunked linear cross-entropy", "plain", "fp32", True, "chunked"),
    ("+ fused RMSNorm and SwiGLU = TuneLab in fp32", "fused", "fp32", True, "chunked"),
    ("bf16 autocast, transformers' loss, AdamW loop", "plain", "bf16", False, "all"),
    ("bf16: fused AdamW, chunked linear cross-entropy", "plain", "bf16", True, "chunked"),
    ("+ fused RMSNorm and SwiGLU", "fused", "bf16", True, "chunked"),
    ("+ attention in fp32 = TuneLab's default here", "fused+attention", "bf16", True, "chunked"),
]


def _plain_linear_cross_entropy(hidden, weight, targets):
    import torch.nn.functional as F

    return F.cross_entropy((hidden @ weight.T).float(), targets, reduction="sum")


def time_setup(model, batches, precision: str, fused: bool, loss: str, steps: int) -> list[float]:
    import torch

    cfg = RunConfig.from_dict({"precision": precision, "lr": 1e-4, "warmup_ratio": 0.0})
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, fused=True if fused else None, foreach=None if fused else False)
    scheduler = train.build_scheduler(optimizer, cfg, steps + 1)
    real = train._body_and_head, train.linear_cross_entropy
    if loss == "all":  # the model's own loss: logits and cross-entropy at every position
        train._body_and_head = lambda m: None
    elif loss == "trained":  # logits at the trained positions, all at once
        train.linear_cross_entropy = _plain_linear_cross_entropy
    try:
        times = []
        for batch in batches[: steps + 1]:
            t = time.perf_counter()
            train.train_step(model, [batch], optimizer, scheduler, train.Precision(precision, "cpu"), 1.0)
            times.append(time.perf_counter() - t)
    finally:
        train._body_and_head, train.linear_cross_entropy = real
    return times[1:]  # the first step warms up kernels and allocates the optimizer's state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-bf16", action="store_true", help="fp32 levers only (a CPU without native bf16)")
    args = ap.parse_args()
    from tunelab.core import models

    from tunelab.core import fused

    batches, tokenizer = lesson_batches(args.examples)
    variants = {}
    for name in ("plain", "fused", "fused+attention"):
        model, _ = models.load_model("embedded")
        if name != "plain":
            fused.fuse(model, "bf16" if name == "fused+attention" else "fp32")
        variants[name] = model.train()
    precisions = ("fp32",) if args.no_bf16 else ("fp32", "bf16")
    for precision in precisions:  # warm-up: first calls page in libtorch and pick kernels
        time_setup(variants["plain"], batches, precision, True, "chunked", 1)
    results = []
    for label, name, precision, fused_adamw, loss in [lever for lever in LEVERS if lever[2] in precisions]:
        t = statistics.median(time_setup(variants[name], batches, precision, fused_adamw, loss, args.steps))
        results.append((label, t))
        print(f"{label:<52} {t:6.2f} s/step", flush=True)
    base = results[0][1]
    print("\n| set-up | s / step | vs the first row |\n|---|---|---|")
    for label, t in results:
        print(f"| {label} | {t:.2f} | {base / t:.2f}x |")


if __name__ == "__main__":
    main()
