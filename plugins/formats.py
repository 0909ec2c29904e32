"""Built-in data formats: alpaca, sharegpt, messages, csv, text.

A plugin like any other: it imports only pluggy and datasets, registers plain
objects through the ``register_data_formats`` hook, and turns each file into
canonical records (``{"messages": [...]}`` or ``{"text": ...}``).

Malformed input raises ``ValueError`` whose message names the file, the row
(1-based: the record number in a JSON array, the line number in JSONL, CSV and
text files) and the field, and says how to fix it. The error also carries
``.errors``, a list of ``{"row", "field", "message"}`` for every bad row, so a
validation report can show them all.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pluggy

hookimpl = pluggy.HookimplMarker("tunelab")

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bing": "assistant", "bard": "assistant", "system": "system"}
MAX_REPORTED = 200  # errors kept per file: enough to fix a file, not enough to flood a page


class RowErrors(ValueError):
    """Every bad row of a file; ``str()`` is the first one plus a count."""

    def __init__(self, path, errors):
        self.errors = errors
        first = errors[0]
        where = f"{Path(path).name}, row {first['row']}" + (f", field '{first['field']}'" if first["field"] else "")
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        super().__init__(f"{where}: {first['message']}{more}")


def read_text(path) -> str:
    """UTF-8 text (a byte-order mark is fine); clear errors for empty and undecodable files."""
    data = Path(path).read_bytes()
    if not data.strip():
        raise ValueError(f"{Path(path).name}: the file is empty; add at least one example")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValueError(f"{Path(path).name}, line {line}: bytes that are not UTF-8 (at byte {exc.start}); "
                         "re-save the file as UTF-8") from None


def read_json_rows(path) -> list[tuple[int, object]]:
    """``[(row, value)]`` from a JSON array (row = record number) or JSON lines (row = line number)."""
    text = read_text(path)
    name = Path(path).name
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            row = _array_row_at(text, exc.pos)
            raise RowErrors(path, [{"row": row, "field": None,
                                    "message": f"invalid JSON at line {exc.lineno}, column {exc.colno} ({exc.msg}); "
                                               "check for a missing comma, quote or bracket there"}]) from None
        if not isinstance(data, list):
            raise ValueError(f"{name}: expected a JSON array of records, got {type(data).__name__}")
        return [(i + 1, item) for i, item in enumerate(data)]
    rows, errors = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            errors.append({"row": lineno, "field": None,
                           "message": f"invalid JSON ({exc.msg} at column {exc.colno}); each line must be one JSON object"})
    if errors:
        raise RowErrors(path, errors[:MAX_REPORTED])
    if not rows:
        raise ValueError(f"{name}: no records found; add at least one example")
    return rows


def _array_row_at(text: str, error_pos: int) -> int:
    """The 1-based record of a JSON array in which a syntax error at ``error_pos`` lies."""
    decoder = json.JSONDecoder()
    pos, row = text.index("[") + 1, 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return row
        if end > error_pos:
            return row
        pos = end
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text) or text[pos] != ",":
            return row + 1 if pos < len(text) else row  # a missing comma: the error is at the next record
        pos, row = pos + 1, row + 1


def convert_rows(path, rows, convert):
    """Apply ``convert(item) -> record`` to every row, collecting ``(field, message)`` errors."""
    records, errors = [], []
    for row, item in rows:
        try:
            if not isinstance(item, dict):
                raise FieldError(None, f"expected a JSON object, got {type(item).__name__}")
            records.append(convert(item))
        except FieldError as exc:
            errors.append({"row": row, "field": exc.field, "message": exc.message})
            if len(errors) >= MAX_REPORTED:
                break
    if errors:
        raise RowErrors(path, errors)
    from datasets import Dataset  # imported only for good files: a bad file's error comes back fast

    return Dataset.from_list(records)


class FieldError(Exception):
    def __init__(self, field, message):
        super().__init__(message)
        self.field, self.message = field, message


def get_str(item, field, required=True, default=""):
    if field not in item or item[field] is None:
        if required:
            raise FieldError(field, f"'{field}' is missing; every record needs it")
        return default
    value = item[field]
    if not isinstance(value, str):
        raise FieldError(field, f"'{field}' must be a string, got {type(value).__name__}")
    return value


def check_messages(messages, field="messages"):
    """Validate a canonical conversation: known roles, string contents, at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise FieldError(field, f"'{field}' must be a non-empty list of turns")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise FieldError(f"{field}[{i}]", "each turn must be an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise FieldError(f"{field}[{i}].role", f"unknown role {m.get('role')!r}; use system, user or assistant")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)  # OpenAI content parts: [{"type": "text", "text"}]
        if not isinstance(content, str):
            raise FieldError(f"{field}[{i}].content",
                             f"'content' must be a string, got {type(content).__name__}")
        out.append({"role": m["role"], "content": content})
    if not any(m["role"] == "assistant" for m in out):
        raise FieldError(field, "no assistant turn: there is nothing for the model to learn from this record")
    return out


def looks_like_json(head: str, *keys: str) -> bool:
    start = head.lstrip("\ufeff \t\r\n")[:1]
    return start in ("[", "{") and all(f'"{k}"' in head for k in keys)


class Format:
    """A data format: the attributes the ``register_data_formats`` contract asks for."""

    def __init__(self, name, description, extensions, sniff, load, params=()):
        self.name, self.description, self.extensions = name, description, list(extensions)
        self.sniff, self.load, self.params = sniff, load, list(params)


# -- alpaca ------------------------------------------------------------------
def alpaca_record(item):
    instruction = get_str(item, "instruction")
    extra = get_str(item, "input", required=False)
    output = get_str(item, "output")
    messages = []
    system = get_str(item, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    history = item.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        raise FieldError("history", "'history' must be a list of [question, answer] pairs")
    for question, answer in history:
        messages += [{"role": "user", "content": str(question)}, {"role": "assistant", "content": str(answer)}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return {"messages": messages}


# -- sharegpt ----------------------------------------------------------------
def sharegpt_record(item):
    turns = item.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise FieldError("conversations", "'conversations' must be a non-empty list of {from, value} turns")
    messages = []
    system = get_str(item, "system", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FieldError(f"conversations[{i}]", "each turn must be an object with 'from' and 'value'")
        role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise FieldError(f"conversations[{i}].from",
                             f"unknown speaker {turn.get('from')!r}; use human, gpt or system")
        if not isinstance(turn.get("value"), str):
            raise FieldError(f"conversations[{i}].value", "'value' must be a string")
        messages.append({"role": role, "content": turn["value"]})
    return {"messages": check_messages(messages, "conversations")}


# -- messages ----------------------------------------------------------------
def messages_record(item):
    if "messages" not in item:
        raise FieldError("messages", "'messages' is missing; each line needs {\"messages\": [{role, content}, ...]}")
    return {"messages": check_messages(item["messages"])}


# -- csv ---------------------------------------------------------------------
def load_csv(path, prompt_column="prompt", response_column="response", system_column=""):
    text = read_text(path)
    name = Path(path).name
    if str(path).lower().endswith(".tsv"):
        dialect = csv.excel_tab
    else:
        try:
            dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    columns = reader.fieldnames or []
    needed = [c for c in (prompt_column, response_column, system_column) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{name}, row 1 (header): no column {', '.join(repr(m) for m in missing)} "
                         f"(columns are: {', '.join(columns) or 'none'}); rename the column or set "
                         "prompt_column / response_column")
    records, errors = [], []
    for row in reader:
        line = reader.line_num
        for col in (prompt_column, response_column):
            if row.get(col) is None:
                errors.append({"row": line, "field": col, "message": f"the row has no value for '{col}' (too few columns?)"})
        if errors and errors[-1]["row"] == line:
            continue
        messages = [{"role": "system", "content": row[system_column]}] if system_column and row.get(system_column) else []
        messages += [{"role": "user", "content": row[prompt_column]},
                     {"role": "assistant", "content": row[response_column]}]
        records.append({"messages": messages})
    if errors:
        raise RowErrors(path, errors[:MAX_REPORTED])
    if not records:
        raise ValueError(f"{name}: the CSV has a header but no rows; add at least one example")
    from datasets import Dataset

    return Dataset.from_list(records)


# -- text --------------------------------------------------------------------
def load_text(path, split="paragraph"):
    if str(path).endswith((".jsonl", ".json")):
        return convert_rows(path, read_json_rows(path), lambda item: {"text": get_str(item, "text")})
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    # paragraphs are separated by blank lines; a file without blank lines is one paragraph a line
    paragraphs = re.split(r"\n[ \t]*\n", text)
    chunks = paragraphs if split == "paragraph" and len(paragraphs) > 1 else text.splitlines()
    records = [{"text": c.strip()} for c in chunks if c.strip()]
    from datasets import Dataset

    return Dataset.from_list(records)


def _ext(path, *exts):
    return str(path).lower().endswith(exts)


FORMATS = [
    Format("alpaca", "Instruction tuning: {instruction, input, output} records (a JSON array or JSON lines).",
           [".json", ".jsonl"],
           lambda path, head: looks_like_json(head, "instruction", "output"),
           lambda path: convert_rows(path, read_json_rows(path), alpaca_record)),
    Format("sharegpt", "Multi-turn chats: {conversations: [{from: human|gpt|system, value}]}.",
           [".json", ".jsonl"],
           lambda path, head: looks_like_json(head, "conversations", "from"),
           lambda path: convert_rows(path, read_json_rows(path), sharegpt_record)),
    Format("messages", "OpenAI-style chat JSON lines: {messages: [{role, content}]}.",
           [".jsonl", ".json"],
           lambda path, head: looks_like_json(head, "messages", "role"),
           lambda path: convert_rows(path, read_json_rows(path), messages_record)),
    Format("csv", "A table with a prompt column and a response column (CSV or TSV).",
           [".csv", ".tsv"],
           lambda path, head: _ext(path, ".csv", ".tsv"),
           load_csv,
           params=[{"name": "prompt_column", "type": "str", "default": "prompt",
                    "help": "The column holding what the user asks."},
                   {"name": "response_column", "type": "str", "default": "response",
                    "help": "The column holding the answer the model should learn to give."},
                   {"name": "system_column", "type": "str", "default": "",
                    "help": "Optional column with a system prompt per row; leave empty for none."}]),
    Format("text", "Raw text for continued pre-training: a .txt file, or JSON lines of {text}.",
           [".txt", ".md", ".jsonl"],
           lambda path, head: _ext(path, ".txt", ".md") or looks_like_json(head, "text"),
           load_text,
           params=[{"name": "split", "type": "choice", "default": "paragraph", "choices": ["paragraph", "line"],
                    "help": "How a .txt file becomes examples: one per paragraph (blank-line separated) "
                            "or one per line."}]),
]


@hookimpl
def register_data_formats(register):
    """The five built-in formats."""
    for fmt in FORMATS:
        register(fmt)
