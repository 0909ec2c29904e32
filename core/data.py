"""Prepare data: file -> format plugin -> canonical records -> chat template -> tokens -> batches.

1. A data-format plugin reads the file into canonical records:
   ``{"messages": [{"role", "content"}, ...]}``, ``{"text": ...}`` or
   ``{"segments": [{"text", "label"}, ...]}`` (:func:`canonical_problem` says what is not).
2. Each conversation is rendered with the tokenizer's chat template and
   tokenized once; ``labels`` copy ``input_ids`` but are -100 (ignored by the
   loss) everywhere except the assistant's replies, so the model learns to
   answer, not to repeat questions. ``train_on_prompt=True`` trains on all.
   Segments are raw text without a template: each piece is tokenized on its own
   and masked unless its ``label`` is true.
3. Sequences longer than ``max_length`` are truncated (conversations, segments) or
   cut into consecutive chunks (raw text), and counted.
4. A seeded split gives train and validation sets.
5. Batches group similar lengths and are padded to their longest member,
   never to ``max_length``: padding is compute spent on nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from . import readers
from .errors import UserError
from .registry import PluginError, get_registry, resolve_params
from .config import split_sizes

IGNORE_INDEX = -100  # the label value torch's cross-entropy skips
HUGE_RECORD_CHARS = 100_000  # a record this long is cut to max_length whatever it is; say so
TOKEN_SAMPLE = 20_000  # data check tokenizes at most this many records (evenly spread) for the lengths
ROLES = ("system", "user", "assistant", "tool")  # the roles of a canonical conversation


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
    """The first format (in plugin call order) whose ``sniff`` says yes.

    Files that are not text data at all (gzip, Parquet, UTF-16, YAML, a lone JSON value) are
    refused first, saying what they are.
    """
    registry = registry or get_registry()
    path = check_path(path)
    raw, head = readers.sniff_head(path)
    readers.diagnose_container(path, raw)
    if path.stat().st_size <= readers.SNIFF_BYTES:
        bare = head.lstrip("\ufeff").strip()
        if not bare:
            raise UserError(f"{path.name}: the file holds only whitespace; add at least one example")
        if re.sub(r"\s", "", bare) == "[]":
            raise UserError(f"{path.name}: the JSON array is empty; add at least one example")
    broken = []
    for name, fmt in registry.items("data_formats").items():
        try:
            with registry.guard("data_formats", name, "sniff"):
                said = fmt.sniff(str(path), head)
        except PluginError as exc:  # recorded by the guard; a broken sniffer must not hide the others
            broken.append(f"format '{name}' of plugin '{exc.plugin}' could not tell: its sniff raised {exc.exc_type}")
            continue
        if said:
            return name
    raise UserError(readers.unknown_format(path, head, list(registry.items("data_formats")))
                    + "".join(f" ({b})" for b in broken))


def _user_error(path, format, exc) -> UserError:
    """A format's ValueError/TypeError as a one-line UserError naming the file, with ``.errors`` kept."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    if Path(path).name not in message:
        message = f"{Path(path).name}: {message}"
    error = UserError(f"{message} (read as format '{format}')")
    error.errors = getattr(exc, "errors", None) or [{"row": None, "field": None, "message": str(exc)}]
    return error


def _format_and_params(path, format, params, registry):
    path = check_path(path)
    if format:
        with path.open("rb") as f:
            readers.diagnose_container(path, f.read(4096))
    format = format or detect_format(path, registry)
    fmt = registry.get("data_formats", format)
    try:
        params = resolve_params(fmt.params, params)
    except UserError as exc:
        raise UserError(f"{path.name}: format '{format}': {exc}") from None
    return path, format, fmt, params


def load_records(path, format: str | None = None, params: dict | None = None, registry=None):
    """Read a file with a format plugin. Returns ``(datasets.Dataset, format_name)``.

    Raises ``UserError`` naming the file, row and field for malformed input; the
    exception's ``errors`` attribute lists every bad row when the format gives them.
    """
    registry = registry or get_registry()
    path, format, fmt, params = _format_and_params(path, format, params, registry)
    with format_code(path, format, registry, "load"):
        dataset = fmt.load(str(path), **params)
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__iter__"):
            raise TypeError(f"load returned {type(dataset).__name__}, not a datasets.Dataset of records")
    if len(dataset) == 0:
        raise UserError(f"{path.name}: no examples found (read as format '{format}')")
    return dataset, format


def iter_events(path, format: str | None = None, params: dict | None = None, registry=None):
    """``(format_name, events)``: one event per row, streamed when the format can.

    An event is ``{"row", "record", "warnings"}`` (kept), ``{"row", "dropped": reason}`` or
    ``{"row", "error": {"field", "message"}}``. Formats without ``iter_records`` are read
    whole with ``load``. File-level problems raise ``UserError`` while iterating; a format
    that breaks (or yields something that is not an event of a canonical record) raises
    ``PluginError``.
    """
    registry = registry or get_registry()
    path, format, fmt, params = _format_and_params(path, format, params, registry)
    if hasattr(fmt, "iter_records"):
        where = "iter_records"

        def source():
            return fmt.iter_records(str(path), **params)
    else:
        where = "load"

        def source():
            dataset, _ = load_records(path, format, params, registry)
            return ({"row": i, "record": r, "warnings": []} for i, r in enumerate(dataset, 1))

    def events():
        with format_code(path, format, registry, where):
            for event in source():
                yield checked_event(event)
    return format, events()


@contextlib.contextmanager
def format_code(path, format: str, registry, where: str):
    """Run a format's own code (``where``: sniff, load, iter_records) under the registry's guard.

    Bad data is the user's: a ``ValueError`` (``RowErrors`` included) becomes a one-line
    ``UserError`` naming the file (with ``.errors``), as does nesting too deep to read. Anything
    else the format raises is its bug: a ``PluginError`` naming the plugin and the exception type.
    """
    try:
        with registry.guard("data_formats", format, where, passes=(ValueError, RecursionError)):
            yield
    except RecursionError:
        raise UserError(f"{Path(path).name}: nested too deeply to read (read as format '{format}'); a record "
                        "holds strings and short lists, so the file is probably damaged") from None
    except ValueError as exc:
        raise _user_error(path, format, exc) from None


def checked_event(event):
    """A format's event, unchanged if well formed; else a ``TypeError`` (the format's bug, which
    :func:`format_code` turns into a ``PluginError``)."""
    if not isinstance(event, dict) or "row" not in event or not {"record", "dropped", "error"} & set(event):
        raise TypeError(f"iter_records yielded {str(event)[:80]!r}, not an event: a dict with 'row' and one of "
                        "'record', 'dropped' or 'error'")
    if "error" in event and not (isinstance(event["error"], dict) and "message" in event["error"]):
        raise TypeError(f"row {event['row']}: an error event needs 'error': {{'field', 'message'}}")
    if "record" in event:
        problem = canonical_problem(event["record"])
        if problem:
            raise TypeError(f"row {event['row']}: the record is not canonical: {problem}")
    return event


def canonical_problem(record) -> str | None:
    """What makes ``record`` not a canonical record, or None when it is one (``core/hookspecs.py``).

    ``{"messages": [{"role", "content": str}, ...]}`` with an assistant turn, ``{"text": str}``, or
    ``{"segments": [{"text": str, "label": bool}, ...]}``. Keys a ``datasets.Dataset`` fills with
    None for other records are ignored.
    """
    if not isinstance(record, dict):
        return f"a record must be a dict, got {type(record).__name__}"
    if record.get("messages") is not None:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list of turns"
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}"
            if m.get("role") not in ROLES:
                return f"messages[{i}].role {m.get('role')!r} is not one of {', '.join(ROLES)}"
            if not isinstance(m.get("content"), str):
                return f"messages[{i}].content must be a string, got {type(m.get('content')).__name__}"
        if not any(m["role"] == "assistant" for m in messages):
            return "no assistant turn: there is nothing to learn from the record"
        return None
    if record.get("segments") is not None:
        segments = record["segments"]
        if not isinstance(segments, list) or not segments:
            return "'segments' must be a non-empty list of {text, label}"
        for i, segment in enumerate(segments):
            if not isinstance(segment, dict) or not isinstance(segment.get("text"), str):
                return f"segments[{i}].text must be a string"
            if not isinstance(segment.get("label"), bool):
                return f"segments[{i}].label must be true or false, got {segment.get('label')!r}"
        return None
    if not isinstance(record.get("text"), str):
        return ("a record needs 'messages' (a list of turns), 'segments' (a list of {text, label}) or 'text' "
                f"(a string); it has {', '.join(map(repr, record)) or 'no keys'}")
    return None


def read_records(path, format: str | None = None, params: dict | None = None, registry=None) -> dict:
    """Every kept record with what was dropped and warned: ``{"format", "records", "rows", "dropped", "warnings"}``.

    ``rows`` are the source rows of ``records``; raises ``UserError`` (with ``.errors``) for bad rows.
    """
    name, events = iter_events(path, format, params, registry)
    out = {"format": name, "records": [], "rows": [], "dropped": [], "warnings": []}
    stream = readers.CappedEvents(events)
    for event in stream:
        if "dropped" in event:
            out["dropped"].append({"row": event["row"], "reason": event["dropped"]})
        else:
            out["records"].append(event["record"])
            out["rows"].append(event["row"])
        out["warnings"] += [{"row": event["row"], "message": w} for w in event.get("warnings") or ()]
    if stream.errors:
        raise _row_errors(path, name, stream.errors)
    if not out["records"]:
        raise UserError(f"{Path(path).name}: no example is left to train on (read as format '{name}')"
                        + (f": {out['dropped'][0]['reason']}" if out["dropped"] else ""))
    return out


def _row_errors(path, format, errors) -> UserError:
    first = errors[0]
    where = Path(path).name + (f", row {first['row']}" if first.get("row") is not None else "")
    where += f", field '{first['field']}'" if first.get("field") else ""
    more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
    error = UserError(f"{where}: {first['message']}{more} (read as format '{format}')")
    error.errors = errors
    return error


def supports_tools(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders tool calls and tool results."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):  # several named templates
        template = " ".join(template.values())
    return "tool" in template


def uses_tools(record: dict) -> str | None:
    """The field that makes a record tool-calling data (``tools``, a ``tool`` turn, ``tool_calls``), or None."""
    if record.get("tools") and record["tools"] != "[]":
        return "tools"
    for i, m in enumerate(record.get("messages") or ()):
        if m.get("role") == "tool":
            return f"messages[{i}] (a tool result)"
        if m.get("tool_calls"):
            return f"messages[{i}].tool_calls"
    return None


def tools_refusal(path, row, field, model_name: str = "this model") -> UserError:
    return UserError(f"{Path(path).name}, row {row}, field '{field}': tool-calling data needs a model whose chat "
                     f"template supports tools, and the template of {model_name} has no tool roles; choose such a "
                     "model (e.g. Qwen/Qwen2.5-0.5B-Instruct) or remove the tool turns")


def _for_template(messages) -> list[dict]:
    """Canonical turns as chat templates expect them (tool calls decoded, TuneLab's own keys removed)."""
    out = []
    for m in messages:
        turn = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            turn["tool_calls"] = [{"type": "function", "function": c} for c in json.loads(m["tool_calls"])]
        out.append(turn)
    return out


def _render(messages, tokenizer, tools=None, **kwargs) -> str:
    kwargs = dict(kwargs, tools=tools) if tools else kwargs
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def _assistant_spans(messages, text: str, tokenizer, tools=None) -> list[tuple[int, int]]:
    """Character spans of the trained assistant replies in ``text`` (content + end-of-turn marker).

    Render the conversation up to each reply (with the generation prompt) and up to
    the end of that turn: what lies between is what the model must learn to say.
    Whitespace the template puts after the end-of-turn marker is not part of the
    reply. When a template renders a prefix differently from the whole (a default
    system prompt only for non-empty lists, thinking blocks dropped from earlier
    turns), fall back to finding the reply's text itself, plus the EOS marker.
    A turn marked ``"train": False`` is found (so later turns are found after it) but not trained.
    """
    spans, pos = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        start = end = None
        if i:
            before = _render(messages[:i], tokenizer, tools, add_generation_prompt=True)
            upto = _render(messages[: i + 1], tokenizer, tools)
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
        if m.get("train") is not False:
            spans.append((start, end))
        pos = end
    return spans


def _trim(messages, max_length: int):
    """Drop text that cannot survive truncation: ``(messages, characters removed)``.

    No token spans more than 64 characters, so only the first ``64 * max_length``
    characters can be kept; a 2 MB record is not tokenized whole to keep 512 tokens.
    """
    budget, out, removed = 64 * max_length, [], 0
    for m in messages:
        if budget <= 0:
            removed += len(m["content"])
            continue
        if len(m["content"]) > budget:
            removed += len(m["content"]) - budget
            m = dict(m, content=m["content"][:budget])
        budget -= len(m["content"])
        out.append(m)
    return out, removed


def encode_messages(messages, tokenizer, max_length: int, train_on_prompt: bool = False, tools=None) -> dict:
    """Tokenize one conversation; label only the assistant's tokens.

    The labelled tokens are each assistant reply and its end-of-turn token (so
    the model learns to stop), except replies marked ``"train": False``; the system
    prompt, the user's turns and the template's role headers are masked with -100.
    ``tools`` is the record's JSON list of tool schemas, passed to the template.
    """
    messages, removed = _trim(_canonical_turns(messages), max_length)
    tools = json.loads(tools) if isinstance(tools, str) else tools
    template_messages = _for_template(messages)
    text = _render(template_messages, tokenizer, tools)
    spans = _assistant_spans([dict(t, train=m.get("train")) for t, m in zip(template_messages, messages)],
                             text, tokenizer, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    for token_id, (a, b) in zip(ids, enc["offset_mapping"]):
        trained = train_on_prompt or any(s <= a < e for s, e in spans)
        labels.append(token_id if trained else IGNORE_INDEX)
    length = len(ids) + removed // 4  # the cut text counted at about 4 characters a token
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": length > max_length,
            "length": length}


def _canonical_turns(messages) -> list[dict]:
    """Turns as plain dicts without the keys ``datasets`` fills with None for other records."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def encode_text(text: str, tokenizer, max_length: int) -> list[dict]:
    """Raw text for continued pre-training: every token trained, cut into ``max_length`` chunks."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]  # marks where one document ends
    chunks = [ids[i: i + max_length] for i in range(0, len(ids), max_length)]
    # A long document counts once as cut (on its first chunk), not once per chunk.
    return [{"input_ids": c, "labels": list(c), "truncated": k == 0 and len(ids) > max_length,
             "length": len(ids)} for k, c in enumerate(chunks) if len(c) > 1]


def encode_segments(segments, tokenizer, max_length: int, train_on_prompt: bool = False) -> dict:
    """Raw text pieces, no chat template: each trained (``label`` true) or masked with -100.

    Each piece is tokenized on its own (no special tokens added: write BOS/EOS into the text where
    they belong) and the pieces' tokens are joined, so a label covers exactly its piece; a word cut
    across two pieces is two tokens. ``train_on_prompt=True`` trains every piece. Longer than
    ``max_length``: truncated, like a conversation (the untrained text first is usually the prompt
    the trained text needs).
    """
    ids, labels, budget, removed = [], [], 64 * max_length, 0
    for segment in segments:
        text = segment["text"]
        if len(text) > budget:  # as _trim: no token spans 64 characters, so the rest cannot survive
            removed += len(text) - max(budget, 0)
            text = text[:max(budget, 0)]
        budget -= len(text)
        piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        ids += piece
        labels += piece if (segment["label"] or train_on_prompt) else [IGNORE_INDEX] * len(piece)
    length = len(ids) + removed // 4  # the cut text counted at about 4 characters a token
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": length > max_length,
            "length": length}


def encode_record(record: dict, tokenizer, max_length: int, train_on_prompt: bool = False) -> list[dict]:
    """The training examples of one canonical record (a conversation or segments make one; raw text one per chunk)."""
    if record.get("messages"):
        return [encode_messages(record["messages"], tokenizer, max_length, train_on_prompt, record.get("tools"))]
    if record.get("segments"):
        return [encode_segments(record["segments"], tokenizer, max_length, train_on_prompt)]
    return encode_text(record.get("text") or "", tokenizer, max_length)


def record_kind(record: dict) -> str:
    """``messages``, ``segments`` or ``text``: which canonical shape a record has."""
    return "messages" if record.get("messages") else "segments" if record.get("segments") else "text"


@dataclass
class Prepared:
    """Tokenized train/validation examples and what happened on the way."""

    train: list[dict]
    val: list[dict]
    format: str
    records: int
    truncated: int = 0
    dropped: list[int] = field(default_factory=list)  # rows with no trained token left
    skipped: list[dict] = field(default_factory=list)  # rows the format read but left out: {"row", "reason"}
    warnings: list[dict] = field(default_factory=list)  # {"row", "message"}

    def summary(self) -> dict:
        return {"format": self.format, "records": self.records, "train_examples": len(self.train),
                "val_examples": len(self.val), "truncated": self.truncated, "dropped": len(self.dropped),
                "skipped": len(self.skipped), "warnings": len(self.warnings),
                "train_tokens": sum(len(e["input_ids"]) for e in self.train)}


def prepare(path, tokenizer, max_length: int, format: str | None = None, params: dict | None = None,
            val_fraction: float = 0.1, seed: int = 0, train_on_prompt: bool = False, registry=None) -> Prepared:
    """The whole pipeline up to tokenized examples, split into train and validation."""
    read = read_records(path, format, params, registry)
    examples, truncated, dropped = [], 0, []
    tools_ok = None
    for row, record in zip(read["rows"], read["records"]):
        field_name = uses_tools(record)
        if field_name:
            tools_ok = supports_tools(tokenizer) if tools_ok is None else tools_ok
            if not tools_ok:
                raise tools_refusal(path, row, field_name)
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
    n_val = split_sizes(len(examples), val_fraction)[1]
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return Prepared(train, val, read["format"], len(read["records"]), truncated, dropped, read["dropped"],
                    read["warnings"])


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


def collate(examples: list[dict], pad_token_id: int, multiple: int = 1, max_length: int | None = None) -> dict:
    """Pad a batch to its longest member (right padding; labels -100, attention 0 on padding), rounded up
    to a ``multiple`` of tokens (not past ``max_length``): a few shapes instead of one per length."""
    import torch

    width = max(len(e["input_ids"]) for e in examples)
    if multiple > 1:
        width = max(width, min(-(-width // multiple) * multiple, max_length or width))
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
               max_length: int = 512, registry=None, load_tokenizer=None, model_name: str | None = None) -> dict:
    """A validation report, reading the file as a stream (a 1 GB file is fine).

    Plain data, for the CLI and the Prepare-data page:

    - ``ok``, ``error`` (one line) and ``errors`` (``{"row", "field", "message"}`` per bad row);
    - ``records`` (rows read), ``kept`` (records to train on), ``dropped`` (``{"row", "reason"}``:
      rows the format left out, such as undesirable KTO answers) and ``warnings``
      (``{"row", "message"}``: unfilled placeholders, media dropped, very long records);
    - ``kinds``, ``empty`` and ``duplicates`` (rows), ``token_lengths`` and ``over_max_length``;
    - ``counts``: the totals of ``empty``, ``duplicates``, ``dropped`` and ``warnings`` (each list
      keeps at most ``LIST_LIMIT`` rows, so a huge file's report stays small).

    The file is parsed before any tokenizer is needed: pass ``load_tokenizer`` (a function
    returning one) instead of ``tokenizer`` so a bad file is refused without loading a model.
    Token lengths come from every record, or from ``TOKEN_SAMPLE`` records spread evenly
    through a bigger file (``token_lengths["sampled"]`` says how many).
    """
    report = {"file": str(path), "format": format, "ok": True, "records": 0, "kept": 0, "dropped": [],
              "warnings": [], "errors": [], "empty": [], "duplicates": [], "kinds": {}, "token_lengths": None,
              "over_max_length": 0, "max_length": max_length, "tools": None,
              "counts": {"empty": 0, "duplicates": 0, "dropped": 0, "warnings": 0}}
    try:
        _scan(path, format, params, registry, report)
    except UserError as exc:
        report.update(ok=False, records=0, kept=0, error=str(exc))
        report["errors"] = getattr(exc, "errors", None) or [{"row": None, "field": None, "message": str(exc)}]
        return report
    if tokenizer is None and load_tokenizer is not None:
        tokenizer = load_tokenizer()
    if tokenizer is not None:
        if report["tools"] and not supports_tools(tokenizer):
            row, field_name = report["tools"]
            exc = tools_refusal(path, row, field_name, f"'{model_name}'" if model_name else "this model")
            report.update(ok=False, error=str(exc), errors=[{"row": row, "field": field_name, "message": str(exc)}])
            return report
        _token_lengths(path, report, params, registry, tokenizer, max_length)
    return report


LIST_LIMIT = readers.MAX_REPORTED * 50  # rows kept per list in a report; ``counts`` has the totals


def _note(report, kind: str, item) -> None:
    """Count one ``empty`` / ``duplicates`` / ``dropped`` / ``warnings`` item; keep it while the list is short."""
    report["counts"][kind] += 1
    if len(report[kind]) < LIST_LIMIT:
        report[kind].append(item)


def _scan(path, format, params, registry, report) -> None:
    """Pass 1: parse every row; fill the report's counts, problems and warnings (raises UserError on bad rows).

    Memory stays small whatever the file's size: one record at a time, an 8-byte digest
    per record for the duplicates, and bounded lists.
    """
    name, events = iter_events(path, format, params, registry)
    report["format"] = name
    report["counts"] = {"empty": 0, "duplicates": 0, "dropped": 0, "warnings": 0}
    seen, stream = {}, readers.CappedEvents(events)
    for event in stream:
        row = event["row"]
        for message in event.get("warnings") or ():
            _note(report, "warnings", {"row": row, "message": message})
        report["records"] += 1
        if "dropped" in event:
            _note(report, "dropped", {"row": row, "reason": event["dropped"]})
            continue
        record = event["record"]
        report["kept"] += 1
        kind, key, empty, size = _record_facts(record)
        report["kinds"][kind] = report["kinds"].get(kind, 0) + 1
        if kind == "messages" and report["tools"] is None and uses_tools(record):
            report["tools"] = (row, uses_tools(record))
            _note(report, "warnings", {"row": row, "message": (
                f"tool-calling data ('{report['tools'][1]}'): it needs a model whose chat template supports "
                "tools; the check with a tokenizer says whether yours does")})
        if empty:
            _note(report, "empty", row)
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        if digest in seen:
            _note(report, "duplicates", {"row": row, "same_as": seen[digest]})
        else:
            seen[digest] = row
        if size > HUGE_RECORD_CHARS and kind != "text":
            _note(report, "warnings", {"row": row, "message": (
                f"a {size:,}-character record (about {size // 4:,} tokens): it will be cut to "
                f"max_length={report['max_length']} tokens, so most of it is never trained on")})
    if stream.errors:
        raise _row_errors(path, name, stream.errors)
    if not report["kept"]:
        reason = f": {report['dropped'][0]['reason']}" if report["dropped"] else ""
        raise UserError(f"{Path(path).name}: no example is left to train on (read as format '{name}'){reason}")


def _record_facts(record: dict) -> tuple[str, str, bool, int]:
    """``(kind, key for duplicates, empty?, characters)`` of one canonical record, for the report."""
    kind = record_kind(record)
    if kind == "messages":
        turns = record["messages"]
        empty = any(not (m["content"] or "").strip() and not m.get("tool_calls") for m in turns)
        key = json.dumps([(m["role"], (m["content"] or "").strip()) for m in turns], ensure_ascii=False)
        return kind, key, empty, sum(len(m["content"] or "") for m in turns)
    if kind == "segments":
        pieces = record["segments"]
        key = json.dumps([(bool(p["label"]), p["text"]) for p in pieces], ensure_ascii=False)
        return kind, key, not any(p["text"].strip() for p in pieces), sum(len(p["text"]) for p in pieces)
    key = (record.get("text") or "").strip()
    return kind, key, not key, len(key)


def _token_lengths(path, report, params, registry, tokenizer, max_length) -> None:
    """Pass 2: token lengths of every kept record, or of an even sample of a big file."""
    step = max(1, -(-report["kept"] // TOKEN_SAMPLE))
    lengths, index = [], 0
    _, events = iter_events(path, report["format"], params, registry)
    for event in events:
        if "record" not in event:
            continue
        index += 1
        if (index - 1) % step:
            continue
        record = event["record"]
        if record_kind(record) == "text":
            lengths.append(len(tokenizer(record.get("text") or "", add_special_tokens=False)["input_ids"]) + 1)
        else:  # a conversation or segments: one example, its whole length
            lengths.append(encode_record(record, tokenizer, max_length)[0]["length"])
    if lengths:
        ordered = sorted(lengths)
        # from a sample, the total is scaled up to the whole file
        total = sum(ordered) if step == 1 else round(sum(ordered) * report["kept"] / len(ordered))
        report["token_lengths"] = {"min": ordered[0], "median": statistics.median(ordered),
                                   "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                                   "max": ordered[-1], "total": total, "values": lengths,
                                   "sampled": len(lengths) if step > 1 else None}
        report["over_max_length"] = sum(n > max_length for n in lengths)
