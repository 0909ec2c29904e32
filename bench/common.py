"""What every bench script shares: the lesson's first examples, tokenized and batched once."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "science_tutor_train.messages.jsonl"
BATCH_SIZE, MAX_LENGTH, SEED = 8, 256, 0


def lesson_examples(n: int, tokenizer) -> list[dict]:
    """The first ``n`` conversations of the lesson's training file, encoded as the engine trains them."""
    import json

    from core import data

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()][:n]
    return [data.encode_messages(r["messages"], tokenizer, MAX_LENGTH) for r in rows]


def lesson_batches(n: int = 64):
    """``(batches, tokenizer)``: the examples in TuneLab's length-grouped batches of 8, in its order."""
    from core import data, models

    tokenizer = models.load_tokenizer("embedded")
    examples = lesson_examples(n, tokenizer)
    order = data.length_grouped_batches([len(e["input_ids"]) for e in examples], BATCH_SIZE, SEED)
    return [data.collate([examples[j] for j in idx], tokenizer.pad_token_id) for idx in order], tokenizer


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
    from core.memory import _linear_shapes

    return 6 * _linear_shapes(config)[0] + 12 * config.num_hidden_layers * config.hidden_size * length
