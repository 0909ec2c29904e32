"""The contenders of ``bench/compare.py``, one function each; each runs in a process of its own.

Every peer trains the embedded SmolLM2-135M on the same first examples of the lesson's training
file, batch 8, max_length 256, one epoch, lr 1e-4, and returns the seconds of its training loop
alone (model loading and tokenization excluded), the real (unpadded) tokens it trained on per
epoch, its last logged loss and the steps it ran. ``python bench/compare.py --peer NAME`` runs one.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import BATCH_SIZE, DATA, MAX_LENGTH, SEED, lesson_batches, lesson_examples, matmul_tflops

LR = 1e-4


def _records(n: int) -> list[dict]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n]


def tunelab(n: int, precision: str = "auto") -> dict:
    """The engine end to end (``tunelab.core.train.train``), at its defaults but for the shared settings."""
    from tunelab.core import runs, train
    from tunelab.core.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in _records(n)), encoding="utf-8")
        cfg = RunConfig.from_dict({"model": "embedded", "data": {"path": str(path), "val_fraction": 0.0},
                                   "batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "epochs": 1, "lr": LR,
                                   "eval_every": 0, "precision": precision, "seed": SEED})
        result = train.train(cfg, Path(tmp) / "run")
        assert result["state"] == "finished", result
        rows = [r for r in runs.read_metrics(Path(tmp) / "run") if "loss" in r]
        status = runs.read_status(Path(tmp) / "run")
    return {"seconds": rows[-1]["elapsed_s"], "tokens": rows[-1]["tokens"], "loss": rows[-1]["loss"],
            "steps": len(rows), "precision": status["precision"]}


def bare(n: int) -> dict:
    """The textbook fp32 loop on TuneLab's batches: forward (transformers' loss), backward, clip, step."""
    import torch

    from tunelab.core import models

    batches, _ = lesson_batches(n)
    torch.manual_seed(SEED)
    model, _ = models.load_model("embedded")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    started, tokens = time.perf_counter(), 0
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    return {"seconds": time.perf_counter() - started, "tokens": tokens, "loss": loss.item(), "steps": len(batches),
            "precision": "fp32"}


class _LoopTimer:
    """A transformers callback timing ``Trainer.train``'s loop (from its first step to its last)."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Timer(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                self.started = time.perf_counter()

            def on_train_end(self, args, state, control, **kw):
                self.seconds = time.perf_counter() - self.started
        return Timer()


def _last_loss(trainer) -> float:
    return next(h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h)


def seed_recipe(n: int) -> dict:
    """The seed's recipe: HF ``Trainer``, fp32, every example padded to max_length."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments, default_data_collator

    from tunelab.core import models

    path = models.ensure_embedded()
    tokenizer = models.load_tokenizer("embedded")
    rows = []
    for e in lesson_examples(n, tokenizer):
        pad = MAX_LENGTH - len(e["input_ids"])
        rows.append({"input_ids": e["input_ids"] + [tokenizer.pad_token_id] * pad,
                     "labels": e["labels"] + [-100] * pad, "attention_mask": [1] * len(e["input_ids"]) + [0] * pad})
    model = AutoModelForCausalLM.from_pretrained(path)
    timer = _LoopTimer()
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(tmp, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1, learning_rate=LR,
                                 report_to="none", save_strategy="no", logging_steps=1, seed=SEED,
                                 disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=default_data_collator, callbacks=[timer])
        trainer.train()
    return {"seconds": timer.seconds, "tokens": sum(sum(r["attention_mask"]) for r in rows),
            "loss": _last_loss(trainer), "steps": trainer.state.global_step, "precision": "fp32"}


def trl(n: int, fastest: bool = False) -> dict:
    """TRL's ``SFTTrainer`` at its defaults (bf16, gradient checkpointing), or at its fastest CPU settings.

    The data is given as prompt/completion conversations, so TRL trains on the answers only, as
    TuneLab does (its default for that format); everything else is TRL's default.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from tunelab.core import models

    path = models.ensure_embedded()
    tokenizer = models.load_tokenizer("embedded")
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in _records(n)])
    model = AutoModelForCausalLM.from_pretrained(path)
    timer = _LoopTimer()
    extra = {"bf16": True, "gradient_checkpointing": False} if fastest else {}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(tmp, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1, learning_rate=LR,
                         max_length=MAX_LENGTH, report_to="none", save_strategy="no", logging_steps=1, seed=SEED,
                         disable_tqdm=True, use_cpu=not torch.cuda.is_available(), **extra)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        trainer.train()
    return {"seconds": timer.seconds, "tokens": tokens, "loss": _last_loss(trainer), "steps": trainer.state.global_step,
            "precision": "bf16" if args.bf16 else "fp32", "gradient_checkpointing": bool(args.gradient_checkpointing)}


def matmul_peak(bf16: bool = True) -> dict:
    """The best TFLOP/s of a square matmul on the CPU, fp32 and bf16: the ceiling MFU is measured against.

    ``bf16=False`` (a CPU without native bf16, see ``bench.common.bf16_gate``): fp32 only, bf16 None.
    """
    import torch

    return {"fp32": matmul_tflops("cpu", torch.float32),
            "bf16": matmul_tflops("cpu", torch.bfloat16) if bf16 else None}


PEERS = {
    "tunelab": ("TuneLab at its defaults (precision auto)", lambda n: tunelab(n, "auto")),
    "tunelab-fp32": ("TuneLab with precision: fp32", lambda n: tunelab(n, "fp32")),
    "seed": ("the seed's recipe: HF Trainer, fp32, padded to max_length", seed_recipe),
    "trl": ("TRL SFTTrainer at its defaults", lambda n: trl(n, fastest=False)),
    "trl-fastest": ("TRL SFTTrainer, bf16, no gradient checkpointing", lambda n: trl(n, fastest=True)),
    "bare": ("a bare fp32 PyTorch loop, TuneLab's batches", bare),
}
