"""Prepare data: file -> format plugin -> canonical records -> chat template -> tokens -> batches.

1. A data-format plugin reads the file into canonical records:
   ``{"messages": [{"role", "content"}, ...]}`` or ``{"text": ...}``.
2. Each conversation is rendered with the tokenizer's chat template and
   tokenized once; ``labels`` copy ``input_ids`` but are -100 (ignored by the
   loss) everywhere except the assistant's replies, so the model learns to
   answer, not to repeat questions. ``train_on_prompt=True`` trains on all.
3. Sequences longer than ``max_length`` are truncated (conversations) or cut
   into consecutive chunks (raw text), and counted.
4. A seeded split gives train and validation sets.
5. Batches group similar lengths and are padded to their longest member,
   never to ``max_length``: padding is compute spent on nothing.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .registry import get_registry

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips
SNIFF_BYTES = 64 * 1024


def check_path(path) -> Path:
    """The path of a readable, non-empty data file, or a UserError saying what is wrong."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path} is a folder; point at a data file (.json, .jsonl, .csv, .txt)")
    if path.stat().st_size == 0:
        raise UserError(f"{path.name}: the file is empty; add at least one example")
    return path


def detect_format(path, registry=None) -> str:
    """The first format (in plugin call order) whose ``sniff`` says yes."""
    registry = registry or get_registry()
    path = check_path(path)
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES).decode("utf-8", errors="replace")
    if path.stat().st_size <= SNIFF_BYTES:
        bare = head.lstrip("\ufeff").strip()
        if not bare:
            raise UserError(f"{path.name}: the file holds only whitespace; add at least one example")
        if bare.replace(" ", "").replace("\n", "").replace("\r", "").replace("\t", "") == "[]":
            raise UserError(f"{path.name}: the JSON array is empty; add at least one example")
    for name, fmt in registry.items("data_formats").items():
        try:
            if fmt.sniff(str(path), head):
                return name
        except Exception:  # noqa: BLE001 - a broken sniffer must not hide the others
            continue
    names = ", ".join(registry.items("data_formats"))
    raise UserError(f"{path.name}: could not tell the format from its content; choose one with --format "
                    f"(installed: {names})")


def load_records(path, format: str | None = None, params: dict | None = None, registry=None):
    """Read a file with a format plugin. Returns ``(datasets.Dataset, format_name)``.

    Raises ``UserError`` naming the file, row and field for malformed input; the
    exception's ``errors`` attribute lists every bad row when the format gives them.
    """
    from .registry import resolve_params

    registry = registry or get_registry()
    path = check_path(path)
    format = format or detect_format(path, registry)
    fmt = registry.get("data_formats", format)
    try:
        params = resolve_params(fmt.params, params)
    except UserError as exc:
        raise UserError(f"{path.name}: format '{format}': {exc}") from None
    try:
        dataset = fmt.load(str(path), **params)
    except UserError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        message = str(exc)
        if path.name not in message:
            message = f"{path.name}: {message}"
        error = UserError(f"{message} (read as format '{format}')")
        error.errors = getattr(exc, "errors", None) or [{"row": None, "field": None, "message": str(exc)}]
        raise error from None
    except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported, not raised as a traceback
        raise UserError(f"{path.name}: format plugin '{format}' failed: {type(exc).__name__}: {exc}") from None
    if len(dataset) == 0:
        raise UserError(f"{path.name}: no examples found (read as format '{format}')")
    return dataset, format


def _assistant_spans(messages, text: str, tokenizer) -> list[tuple[int, int]]:
    """Character spans of the assistant replies in ``text`` (content + end-of-turn marker).

    Render the conversation up to each reply (with the generation prompt) and up to
    the end of that turn: what lies between is what the model must learn to say.
    Whitespace the template puts after the end-of-turn marker is not part of the
    reply. When a template renders a prefix differently from the whole (a default
    system prompt only for non-empty lists, thinking blocks dropped from earlier
    turns), fall back to finding the reply's text itself, plus the EOS marker.
    """
    spans, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = end = None
        if i:
            before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
            upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if text.startswith(before) and text.startswith(upto) and len(upto) > len(before) >= pos:
                start, end = len(before), len(upto)
        if start is None:
            start = text.find(m["content"], pos)
            if start < 0 or not m["content"]:
                continue
            end = start + len(m["content"])
            eos = tokenizer.eos_token
            if eos and text.startswith(eos, end):
                end += len(eos)
        reply = text[start:end].rstrip()
        if reply:
            end = start + len(reply)
        spans.append((start, end))
        pos = end
    return spans


def encode_messages(messages, tokenizer, max_length: int, train_on_prompt: bool = False) -> dict:
    """Tokenize one conversation; label only the assistant's tokens.

    The labelled tokens are each assistant reply and its end-of-turn token (so
    the model learns to stop); the system prompt, the user's turns and the
    template's role headers are masked with -100.
    """
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = _assistant_spans(messages, text, tokenizer)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    for token_id, (a, b) in zip(ids, enc["offset_mapping"]):
        trained = train_on_prompt or any(s <= a < e for s, e in spans)
        labels.append(token_id if trained else IGNORE_INDEX)
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated,
            "length": len(ids)}


def encode_text(text: str, tokenizer, max_length: int) -> list[dict]:
    """Raw text for continued pre-training: every token trained, cut into ``max_length`` chunks."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]  # marks where one document ends
    chunks = [ids[i: i + max_length] for i in range(0, len(ids), max_length)]
    # A long document counts once as cut (on its first chunk), not once per chunk.
    return [{"input_ids": c, "labels": list(c), "truncated": k == 0 and len(ids) > max_length,
             "length": len(ids)} for k, c in enumerate(chunks) if len(c) > 1]


def encode_record(record: dict, tokenizer, max_length: int, train_on_prompt: bool = False) -> list[dict]:
    if record.get("messages"):
        return [encode_messages(record["messages"], tokenizer, max_length, train_on_prompt)]
    return encode_text(record.get("text") or "", tokenizer, max_length)


@dataclass
class Prepared:
    """Tokenized train/validation examples and what happened on the way."""

    train: list[dict]
    val: list[dict]
    format: str
    records: int
    truncated: int = 0
    dropped: list[int] = field(default_factory=list)  # rows with no trained token left

    def summary(self) -> dict:
        return {"format": self.format, "records": self.records, "train_examples": len(self.train),
                "val_examples": len(self.val), "truncated": self.truncated, "dropped": len(self.dropped),
                "train_tokens": sum(len(e["input_ids"]) for e in self.train)}


def prepare(path, tokenizer, max_length: int, format: str | None = None, params: dict | None = None,
            val_fraction: float = 0.1, seed: int = 0, train_on_prompt: bool = False, registry=None) -> Prepared:
    """The whole pipeline up to tokenized examples, split into train and validation."""
    dataset, fmt = load_records(path, format, params, registry)
    examples, truncated, dropped = [], 0, []
    for row, record in enumerate(dataset, 1):
        for ex in encode_record(record, tokenizer, max_length, train_on_prompt):
            truncated += ex["truncated"]
            if all(label == IGNORE_INDEX for label in ex["labels"][1:]):
                dropped.append(row)  # the answer was cut off entirely: nothing to learn
                continue
            examples.append({"input_ids": ex["input_ids"], "labels": ex["labels"]})
    if not examples:
        raise UserError(f"{Path(path).name}: no example has a trainable token left after truncation to "
                        f"max_length={max_length}; raise max_length")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = int(round(len(examples) * val_fraction)) if len(examples) > 1 else 0
    n_val = min(max(n_val, 1 if val_fraction > 0 and len(examples) > 1 else 0), len(examples) - 1)
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return Prepared(train, val, fmt, len(dataset), truncated, dropped)


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int = 0,
                           group: int = 50) -> list[list[int]]:
    """Indices in batches of similar length, in a seeded random order.

    Shuffle, then sort within windows of ``batch_size * group`` examples, cut
    into batches and shuffle the batches: little padding, still random.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * group
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i: i + window], key=lambda j: lengths[j])
        batches += [chunk[k: k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[dict], pad_token_id: int) -> dict:
    """Pad a batch to its longest member (right padding; labels -100, attention 0 on padding)."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def check_file(path, format: str | None = None, params: dict | None = None, tokenizer=None,
               max_length: int = 512, registry=None) -> dict:
    """A validation report: records, errors by row and field, empty and duplicate examples, token lengths.

    Malformed files do not raise: the report's ``errors`` lists them (``ok`` is False).
    """
    report = {"file": str(path), "format": format, "ok": True, "records": 0, "errors": [], "empty": [],
              "duplicates": [], "kinds": {}, "token_lengths": None, "over_max_length": 0, "max_length": max_length}
    try:
        dataset, report["format"] = load_records(path, format, params, registry)
    except UserError as exc:
        report["ok"] = False
        report["error"] = str(exc)
        report["errors"] = getattr(exc, "errors", None) or [{"row": None, "field": None, "message": str(exc)}]
        return report
    report["records"] = len(dataset)
    seen, lengths = {}, []
    for row, record in enumerate(dataset, 1):
        kind = "messages" if record.get("messages") else "text"
        report["kinds"][kind] = report["kinds"].get(kind, 0) + 1
        if kind == "messages":
            contents = [m["content"] for m in record["messages"]]
            if any(not c.strip() for c in contents):
                report["empty"].append(row)
            key = tuple((m["role"], m["content"].strip()) for m in record["messages"])
        else:
            if not (record.get("text") or "").strip():
                report["empty"].append(row)
            key = (record.get("text") or "").strip()
        if key in seen:
            report["duplicates"].append({"row": row, "same_as": seen[key]})
        else:
            seen[key] = row
        if tokenizer is not None:
            if kind == "messages":
                lengths.append(encode_messages(record["messages"], tokenizer, max_length)["length"])
            else:
                lengths.append(len(tokenizer(record.get("text") or "", add_special_tokens=False)["input_ids"]) + 1)
    if lengths:
        ordered = sorted(lengths)
        report["token_lengths"] = {"min": ordered[0], "median": statistics.median(ordered),
                                   "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                                   "max": ordered[-1], "total": sum(ordered), "values": lengths}
        report["over_max_length"] = sum(n > max_length for n in lengths)
    return report
