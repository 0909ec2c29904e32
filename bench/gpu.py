"""The GPU figures of issue 12, in one prepared run: bf16 MFU and the fp16 + grad-scaler path.

    python bench/gpu.py [--batch 16] [--length 1024] [--steps 10] [--out gpu.json]
    python bench/gpu.py --device cpu --batch 2 --length 32 --steps 2 --model tiny   # a dry run anywhere

Trains the embedded SmolLM2-135M with the engine's own step (``core.train.build_model``,
``build_optimizer``, ``train_step``: the fused layers, the trained-position loss, fused AdamW) on
random token ids, every position trained, at a batch and length chosen for a GPU. Reports, per
precision, the median seconds a step after warm-up, tokens per second, peak GPU memory and MFU:
FLOPs per token as nanoGPT counts them (6 N + 12 L h s) against the best bf16 (or fp16) square-matmul
rate measured on the same GPU in the same run (and against the dense peak the user gives with
``--peak-tflops``, such as 989 for an H100 SXM's bf16). fp16 also reports the grad scaler's final
scale and how many steps it skipped, and every row its losses (which must stay finite).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import flops_per_token, matmul_tflops, sync  # noqa: E402


def run(model_name: str, precision: str, device: str, batch: int, length: int, steps: int) -> dict:
    """Median step time and peak memory of the engine's step at ``precision`` on ``device``."""
    import torch

    from core import models, train
    from core.config import RunConfig

    cfg = RunConfig.from_dict({"model": model_name, "precision": precision, "lr": 1e-4, "warmup_ratio": 0.0,
                               "batch_size": batch, "max_length": length})
    torch.manual_seed(0)
    model, tokenizer = train.build_model(cfg, model=models.load_model(model_name, device=device), precision=precision)
    optimizer = train.build_optimizer(model, cfg)
    scheduler = train.build_scheduler(optimizer, cfg, steps + 2)
    prec = train.Precision(precision, device)
    vocab = model.config.vocab_size
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, losses, scales = [], [], []
    for _ in range(steps + 2):  # two warm-up steps: kernel selection, the optimizer's state
        ids = torch.randint(0, vocab, (batch, length))
        batch_ = {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}
        sync(device)
        t = time.perf_counter()
        out = train.train_step(model, [batch_], optimizer, scheduler, prec, 1.0)
        sync(device)
        times.append(time.perf_counter() - t)
        losses.append(round(out["loss"], 4))
        scales.append(float(prec.scaler.get_scale()) if precision == "fp16" else 1.0)
    seconds = statistics.median(times[2:])
    row = {"precision": precision, "s_per_step": round(seconds, 4), "tokens_per_s": round(batch * length / seconds),
           "losses": losses, "finite": all(x == x and abs(x) != float("inf") for x in losses),
           "flops_per_token": flops_per_token(model.config, length)}
    if torch.device(device).type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if precision == "fp16":
        row["grad_scale"] = scales[-1]
        # the scaler halves its scale at each step it skipped for inf/NaN gradients
        row["skipped_steps"] = sum(1 for a, b in zip([65536.0] + scales, scales) if b < a)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="embedded", help="embedded, a folder, or 'tiny' (a random 2-layer model)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--precisions", default="bf16,fp16", help="comma list of bf16, fp16, fp32")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense 16-bit peak, for a second MFU")
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()
    import tempfile

    import torch

    from core import models

    name = args.model
    if name == "tiny":
        name = models.make_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    dtype = torch.bfloat16 if torch.device(args.device).type == "cuda" else torch.float32
    peak = matmul_tflops(args.device, dtype, 8192 if torch.device(args.device).type == "cuda" else 512)
    gpu = torch.cuda.get_device_name(0) if torch.device(args.device).type == "cuda" else "cpu"
    result = {"device": gpu, "batch": args.batch, "length": args.length, "steps": args.steps,
              "matmul_peak_tflops": round(peak, 1), "rows": []}
    print(f"{gpu}: measured square-matmul peak {peak:.1f} TFLOP/s ({dtype}); batch {args.batch} x {args.length}")
    print("| precision | s / step | tokens / s | MFU (measured peak) | MFU (given peak) | peak memory | losses finite |")
    print("|---|---|---|---|---|---|---|")
    for precision in args.precisions.split(","):
        row = run(name, precision, args.device, args.batch, args.length, args.steps)
        achieved = row["flops_per_token"] * row["tokens_per_s"] / 1e12
        row["mfu_measured_peak"] = round(achieved / peak, 4)
        row["mfu_given_peak"] = round(achieved / args.peak_tflops, 4) if args.peak_tflops else None
        result["rows"].append(row)
        given = f"{row['mfu_given_peak']:.1%}" if row["mfu_given_peak"] is not None else "—"
        memory = f"{row['peak_memory_gib']} GiB" if "peak_memory_gib" in row else "—"
        extra = f" (scale {row['grad_scale']:g}, {row['skipped_steps']} skipped)" if precision == "fp16" else ""
        print(f"| {precision} | {row['s_per_step']:.3f} | {row['tokens_per_s']} | {row['mfu_measured_peak']:.1%} | "
              f"{given} | {memory} | {row['finite']}{extra} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
