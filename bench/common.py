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
