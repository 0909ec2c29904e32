"""The ``qa_jsonl`` data format: question/answer pairs, one JSON object a line.

What it teaches: how to map *your own* schema onto TuneLab's canonical records.
TuneLab trains on ``{"messages": [{"role", "content"}, ...]}``; a Q&A file has
``{"question", "answer"}`` (and, for reading comprehension, an optional
``"context"`` passage). ``load`` does the mapping, row by row, and reports every
bad row with its line number and field, so a learner can fix the file.

Only pluggy and datasets: nothing from TuneLab's ``core``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")

MAX_REPORTED = 50  # enough errors to fix a file, not enough to flood a page


def sniff(path: str, head: str) -> bool:
    """Cheap and never raising: does the first record look like {"question": ..., "answer": ...}?

    ``head`` is the file's first 64 KiB; its first line may be cut short, so look at
    the text, not at parsed JSON.
    """
    first = head.lstrip("\ufeff \t\r\n")[:1]
    return first in ("{", "[") and '"question"' in head and '"answer"' in head


def _rows(path: str):
    """``[(line number, value)]`` from JSON lines, or ``[(record number, value)]`` from a JSON array."""
    name = Path(path).name
    text = Path(path).read_text(encoding="utf-8-sig")
    if not text.strip():
        raise ValueError(f"{name}: the file is empty; add at least one question and answer")
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}, line {exc.lineno}: invalid JSON ({exc.msg}); "
                             "check for a missing comma, quote or bracket") from None
        if not isinstance(data, list):
            raise ValueError(f"{name}: expected a JSON array of {{question, answer}} objects")
        return list(enumerate(data, start=1))
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{name}, row {lineno}: invalid JSON ({exc.msg} at column {exc.colno}); "
                             "each line must be one JSON object") from None
    return rows


def to_messages(item: dict, system_prompt: str = "", include_context: bool = True) -> list[dict]:
    """One Q&A record as a chat: [system], user (context + question), assistant (answer).

    A bad field raises ``_FieldError`` (field, message), collected per row by :func:`load`.
    """
    for field in ("question", "answer"):
        value = item.get(field)
        if value is None:
            raise _FieldError(field, f"'{field}' is missing; every line needs \"question\" and \"answer\"")
        if not isinstance(value, str) or not value.strip():
            raise _FieldError(field, f"'{field}' must be a non-empty string")
    context = item.get("context")
    if context is not None and not isinstance(context, str):
        raise _FieldError("context", "'context' must be a string (or left out)")
    question = item["question"].strip()
    if include_context and context and context.strip():
        # The passage comes first, so the model reads it before the question it must answer from it.
        question = f"{context.strip()}\n\nQuestion: {question}"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
    return messages + [{"role": "user", "content": question},
                       {"role": "assistant", "content": item["answer"].strip()}]


class _FieldError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field, self.message = field, message


def load(path: str, system_prompt: str = "", include_context: bool = True):
    """The file as a ``datasets.Dataset`` of ``{"messages": [...]}`` records.

    Malformed rows raise one ``ValueError`` that names the file, the first bad row
    (its line number) and field, and says how to fix it; ``.errors`` lists them all
    as ``{"row", "field", "message"}`` (the shape TuneLab's data report shows).
    """
    records, errors = [], []
    for row, item in _rows(path):
        try:
            if not isinstance(item, dict):
                raise _FieldError(None, f"expected a JSON object, got {type(item).__name__}")
            records.append({"messages": to_messages(item, system_prompt, include_context)})
        except _FieldError as exc:
            errors.append({"row": row, "field": exc.field, "message": exc.message})
            if len(errors) >= MAX_REPORTED:
                break
    if errors:
        first = errors[0]
        where = f"{Path(path).name}, row {first['row']}" + (f", field '{first['field']}'" if first["field"] else "")
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        error = ValueError(f"{where}: {first['message']}{more}")
        error.errors = errors
        raise error
    if not records:
        raise ValueError(f"{Path(path).name}: no records found; add at least one question and answer")
    from datasets import Dataset  # imported late: a bad file's error comes back fast

    return Dataset.from_list(records)


QA_JSONL = SimpleNamespace(
    name="qa_jsonl",
    description="Question/answer pairs as JSON lines: {question, answer}, with an optional context passage "
                "for reading comprehension.",
    extensions=[".jsonl", ".json"],
    params=[
        {"name": "system_prompt", "type": "str", "default": "",
         "help": "An optional system message put before every question, e.g. 'You are a patient science "
                 "tutor.' Leave empty for none."},
        {"name": "include_context", "type": "bool", "default": True,
         "help": "When a row has a 'context' passage, show it to the model before the question, so it "
                 "learns to answer from the passage. Switch off to train on the bare questions."},
    ],
    sniff=sniff,
    load=load,
)


@hookimpl
def register_data_formats(register):
    register(QA_JSONL)
