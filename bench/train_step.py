"""Benchmark: the engine's training step against a bare PyTorch loop on the same batches.

    python bench/train_step.py [--model embedded] [--steps 12] [--batch-size 4] [--max-length 256]

Prints, for each side, median tokens/s over the steps after two warm-up steps,
the ratio (target: the engine within 10% of bare PyTorch), the padding check
(no batch is padded past its longest member) and the peak RSS of this process.
Both sides use the same model weights, data, batches, AdamW settings and clipping.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core import data, models, runs, train  # noqa: E402
from core.config import RunConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def bare_pytorch(cfg: RunConfig, examples, pad_id, steps: int) -> list[float]:
    """The textbook loop: forward, backward, clip, step. Returns tokens/s per step."""
    import torch

    torch.manual_seed(cfg.seed)
    model, _ = models.load_model(cfg.model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    batches = train.micro_batches(examples, cfg, pad_id, epoch=0, skip=0)
    rates = []
    for _ in range(steps):
        t0 = time.time()
        _, _, batch = next(batches)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(int(batch["attention_mask"].sum()) / (time.time() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--data", default=str(REPO / "data" / "science_tutor_train.alpaca.json"))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    args = ap.parse_args()
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu"
          + (f" / cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    cfg = RunConfig.from_dict({"model": args.model, "data": {"path": args.data, "val_fraction": 0.0},
                               "max_length": args.max_length, "batch_size": args.batch_size,
                               "max_steps": args.steps, "lr": 5e-5, "warmup_ratio": 0.0, "eval_every": 0,
                               "scheduler": "constant", "precision": "fp32"})
    tokenizer = models.load_tokenizer(cfg.model)
    prepared = data.prepare(cfg.data.path, tokenizer, cfg.max_length, val_fraction=0.0, seed=cfg.seed)

    # padding: every batch is exactly as wide as its longest member
    lengths = [len(e["input_ids"]) for e in prepared.train]
    order = data.length_grouped_batches(lengths, cfg.batch_size, cfg.seed)
    widths = [data.collate([prepared.train[j] for j in idx], tokenizer.pad_token_id)["input_ids"].shape[1]
              for idx in order]
    assert widths == [max(lengths[j] for j in idx) for idx in order], "a batch is padded past its longest member"
    real = sum(lengths)
    padded = sum(w * len(idx) for w, idx in zip(widths, order))
    grouped_pad = 1 - real / padded
    naive = [list(range(i, min(i + cfg.batch_size, len(lengths)))) for i in range(0, len(lengths), cfg.batch_size)]
    naive_pad = 1 - real / sum(max(lengths[j] for j in idx) * len(idx) for idx in naive)
    print(f"padding: {len(order)} batches, none wider than its longest member; padding share "
          f"{grouped_pad:.1%} grouped by length vs {naive_pad:.1%} in file order "
          f"(vs {1 - real / (args.max_length * len(lengths)):.1%} if padded to max_length)")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TUNELAB_RUNS_DIR"] = tmp
        train.train(cfg, Path(tmp) / "bench")
        engine = [r["tokens_per_s"] for r in runs.read_metrics(Path(tmp) / "bench") if "loss" in r]
    bare = bare_pytorch(cfg, prepared.train, tokenizer.pad_token_id, args.steps)
    e, b = statistics.median(engine[2:]), statistics.median(bare[2:])
    print(f"engine train step : {e:8.1f} tokens/s (median of steps 3-{args.steps})")
    print(f"bare PyTorch step : {b:8.1f} tokens/s")
    print(f"engine / bare     : {e / b:8.3f}  ({'within' if e / b >= 0.9 else 'NOT within'} 10%)")
    print(f"peak RSS          : {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")


if __name__ == "__main__":
    main()
