"""Built-in data formats: alpaca, sharegpt, messages, csv, text, input_output — and the layouts other tools write.

A plugin like any other: it imports only pluggy and datasets (and the reader layer, core.readers),
registers plain objects through the ``register_data_formats`` hook, and turns each file into
canonical records (``{"messages": [...]}``, ``{"text": ...}`` or ``{"segments": [...]}``, see
``core/hookspecs.py``).

Besides the plain layouts, the three chat formats read what LLaMA-Factory, OpenAI and TRL files
hold (docs/data-formats.md has a sample of each):

- content parts (``[{"type": "text", "text"|"value": ...}]``) are joined; a per-turn
  ``loss_weight`` / ``weight`` of 0 marks an assistant turn as shown but not trained;
- preference data (``chosen`` / ``rejected``) is refused as what it is, unless the option
  ``preference=chosen`` asks to fine-tune on the chosen answers;
- KTO data (a boolean ``label`` or ``kto_tag``): undesirable answers are dropped, with the reason;
- multimodal records (``images``/``videos``/``audios``, ``<image>`` tags, image parts) are
  refused unless ``drop_media=true``;
- tool calling (``tools``, ``function_call``/``observation`` turns, ``tool_calls``, role ``tool``)
  is read into ``tool`` turns and ``tool_calls``; core refuses it for a chat template without tools;
- ``{{name}}`` placeholders are warned about, and filled by the ``placeholders`` option.

Each format has ``iter_records(path, **params)``, yielding one event per row (a kept record, a
dropped row with its reason, or an error naming the field) so a check streams a big file, and
``load`` collects those events. Malformed input raises ``ValueError`` whose message names the file,
the row (1-based: the record number in a JSON array, the line number in JSONL, CSV and text files)
and the field, and says how to fix it; ``.errors`` lists every bad row.
"""

from __future__ import annotations

import json
import re

import pluggy

from tunelab.core.readers import CappedEvents, FieldError, RowErrors, csv_reader, iter_json_rows, read_text

hookimpl = pluggy.HookimplMarker("tunelab")

ROLES = {"system", "user", "assistant", "tool"}
# the speakers of every layout we know, and the canonical role each one is
SPEAKERS = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
            "bing": "assistant", "bard": "assistant", "model": "assistant", "system": "system",
            "observation": "tool", "tool": "tool", "function": "tool", "ipython": "tool",
            "function_call": "assistant", "developer": "system"}
INSTRUCTION_KEYS = ("instruction", "prompt", "question", "query")
INPUT_KEYS = ("input", "context")
OUTPUT_KEYS = ("output", "response", "completion", "answer")
MEDIA_KEYS = ("images", "videos", "audios", "image", "video", "audio")
MEDIA_TAG = re.compile(r"<(image|video|audio)>")
MEDIA_PARTS = {"image_url", "image", "input_image", "audio_url", "input_audio", "audio", "video_url", "video", "file"}
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][\w.-]*)\s*\}\}")
LABEL_KEYS = ("label", "kto_tag")


class Drop(Exception):
    """A row that is read but not trained on (an undesirable KTO answer, every turn weighted 0)."""


class Reading:
    """Options and per-record notes while converting rows; one per file."""

    def __init__(self, drop_media=False, placeholders="", preference="refuse"):
        self.drop_media, self.preference = bool(drop_media), preference
        self.fill = parse_placeholders(placeholders)
        self.notes: list[str] = []
        self.tools = None  # tool schemas given as a content part (LLaMA-Factory v1) rather than a field

    def text(self, value, field) -> str:
        """A turn's text: media tags refused (or removed), placeholders filled or noted."""
        if MEDIA_TAG.search(value):
            tag = MEDIA_TAG.search(value).group(0)
            if not self.drop_media:
                raise FieldError(field, media_message(f"the text holds a {tag} tag"))
            value = MEDIA_TAG.sub("", value).strip()
            self.note(f"{tag} tags removed (drop_media)")
        if "{{" in value:
            def fill(match):
                return self.fill.get(match.group(1), match.group(0))
            value = PLACEHOLDER.sub(fill, value)
            left = sorted(set(PLACEHOLDER.findall(value)))
            if left:
                self.note(f"unfilled placeholder{'s' if len(left) > 1 else ''} "
                          f"{', '.join('{{' + n + '}}' for n in left)} in '{field}'; fill them with the "
                          f"placeholders option (--param 'placeholders={left[0]}=...')")
        return value

    def note(self, message):
        if message not in self.notes:
            self.notes.append(message)


def parse_placeholders(spec: str) -> dict:
    """``"name=Ada; city=Paris"`` (or a JSON object) -> ``{"name": "Ada", "city": "Paris"}``."""
    spec = (spec or "").strip()
    if not spec:
        return {}
    if spec.startswith("{"):
        try:
            value = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"placeholders: not a JSON object ({exc.msg}); write name=value; name2=value2") from None
        return {str(k): str(v) for k, v in value.items()}
    out = {}
    for part in re.split(r"[;\n]", spec):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError(f"placeholders: '{part.strip()}' is not name=value; write name=value; name2=value2")
        key, value = part.split("=", 1)
        out[key.strip().strip("{}").strip()] = value.strip()
    return out


def media_message(what: str) -> str:
    return (f"multimodal record: {what}, which a text model cannot see, so it would learn to answer about "
            "pictures or sounds it never gets; remove such records, or set the format option drop_media=true "
            "(--param drop_media=true) to train on their text alone")


# -- turns and conversations -----------------------------------------------------------------
def json_type(value) -> str:
    """A value's type as the messages name it: ``null`` for JSON null, else the Python type (int, list, ...)."""
    return "null" if value is None else type(value).__name__


def get_str(item, field, required=True, default=""):
    """The string under ``field``; a required one missing or null, or any non-string, is refused."""
    if item.get(field) is None:
        if required and field in item:
            raise FieldError(field, f"'{field}' is null, where its text belongs; write the text, or delete the record")
        if required:
            raise FieldError(field, f"'{field}' is missing; every record needs it")
        return default
    value = item[field]
    if not isinstance(value, str):
        raise FieldError(field, f"'{field}' must be a string, got {json_type(value)}")
    return value


def first_key(item, keys):
    return next((k for k in keys if item.get(k) is not None), None)


def content_text(content, field, reading: Reading, tool_calls: list) -> str:
    """A turn's content as text: a string, or a list of parts (text joined, reasoning and tool calls kept)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return reading.text(content, field)
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        raise FieldError(field, f"'content' must be a string or a list of parts, got {json_type(content)}")
    texts = []
    for k, part in enumerate(content):
        where = f"{field}[{k}]"
        if isinstance(part, str):
            texts.append(reading.text(part, where))
            continue
        if not isinstance(part, dict):
            raise FieldError(where, f"a content part must be an object with 'type' and 'text', got {type(part).__name__}")
        kind = part.get("type", "text")
        value = part.get("text", part.get("value"))
        if kind in MEDIA_PARTS:
            if not reading.drop_media:
                raise FieldError(f"{where}.type", media_message(f"it holds a '{kind}' part"))
            reading.note(f"'{kind}' parts removed (drop_media)")
        elif kind in ("text", "input_text", "output_text"):
            if not isinstance(value, str):
                raise FieldError(where, "a text part needs a string under 'text' (or 'value')")
            texts.append(reading.text(value, where))
        elif kind in ("reasoning", "thinking"):
            texts.append(f"<think>\n{value if isinstance(value, str) else ''}\n</think>\n\n")
            reading.note("reasoning parts kept as <think> ... </think> before the answer")
        elif kind in ("tool_call", "function_call"):
            tool_calls.append(parse_call(value, f"{where}.value"))
        elif kind == "tools":
            reading.tools = value
        else:
            raise FieldError(f"{where}.type", f"unknown content part type {kind!r}; use text (or image_url, "
                                              "reasoning, tool_call)")
    return "".join(texts)


def parse_call(value, field) -> dict:
    """One tool call, as ``{"name", "arguments"}`` (arguments a JSON string), from a dict or a JSON string."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise FieldError(field, "a tool call must be a JSON object {\"name\": ..., \"arguments\": {...}}") from None
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        value = value["function"]  # OpenAI: {"type": "function", "function": {...}}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise FieldError(field, "a tool call must be an object with a 'name' and 'arguments'")
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            pass
    return {"name": value["name"], "arguments": arguments}


def make_turn(turn: dict, field: str, reading: Reading, role_key="role", content_key="content") -> dict:
    """One canonical turn from a dict in any of the known layouts."""
    speaker = turn.get(role_key)
    if not isinstance(speaker, str):
        raise FieldError(f"{field}.{role_key}", f"'{role_key}' must be a string such as user or assistant, "
                                                f"got {json_type(speaker)}")
    role = SPEAKERS.get(speaker.strip().lower())
    if role is None:
        known = "human, gpt, system" if role_key == "from" else "system, user or assistant"
        word = "speaker" if role_key == "from" else "role"
        raise FieldError(f"{field}.{role_key}", f"unknown {word} {speaker!r}; use {known}")
    calls = []
    if turn.get(content_key) is None and not (role == "assistant" and (turn.get("tool_calls") or turn.get("function_call"))):
        # only an assistant turn that calls a tool may go without text (OpenAI writes content: null there)
        said = "null" if content_key in turn else "missing"
        article = "an" if role == "assistant" else "a"
        raise FieldError(f"{field}.{content_key}", f"'{content_key}' is {said}: {article} {role} turn needs its text "
                                                   "as a string; write it, or delete the turn")
    content = content_text(turn.get(content_key), f"{field}.{content_key}", reading, calls)
    if speaker.strip().lower() == "function_call":  # LLaMA-Factory: the call itself is the value
        calls, content = [parse_call(turn.get(content_key), f"{field}.{content_key}")], ""
    for k, call in enumerate(turn.get("tool_calls") or []):
        calls.append(parse_call(call, f"{field}.tool_calls[{k}]"))
    if turn.get("function_call"):
        calls.append(parse_call(turn["function_call"], f"{field}.function_call"))
    if isinstance(turn.get("reasoning_content"), str) and turn["reasoning_content"].strip():
        content = f"<think>\n{turn['reasoning_content']}\n</think>\n\n{content}"
        reading.note("reasoning_content kept as <think> ... </think> before the answer")
    out = {"role": role, "content": content}
    if calls:
        out["tool_calls"] = json.dumps(calls, ensure_ascii=False)
    weight = turn.get("loss_weight", turn.get("weight"))
    if role == "assistant" and weight is not None:
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise FieldError(f"{field}.loss_weight", f"a turn's weight must be a number (0 or 1), got {weight!r}")
        if weight == 0:
            out["train"] = False  # shown to the model as context, not learned
    return out


def finish(messages: list[dict], field: str, item: dict, reading: Reading) -> dict:
    """Check a conversation and build the canonical record (tools, KTO label, media fields)."""
    messages = [m for m in messages if not (m["role"] == "system" and not m["content"].strip())]
    if not messages:
        raise FieldError(field, f"'{field}' must be a non-empty list of turns")
    if not any(m["role"] == "assistant" for m in messages):
        raise FieldError(field, "no assistant turn: there is nothing for the model to learn from this record")
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip() and not m.get("tool_calls"):
            raise FieldError(f"{field}[{i}].content", "empty assistant reply: training on it teaches the model "
                                                      "to answer with nothing; write the answer or delete the turn")
    if messages[-1]["role"] in ("user", "tool"):
        who = "user" if messages[-1]["role"] == "user" else "tool result"
        raise FieldError(f"{field}[{len(messages) - 1}]", f"the conversation ends with a {who} turn that nobody "
                                                          "answers; add the assistant's reply or remove that turn")
    media = [k for k in MEDIA_KEYS if item.get(k)]
    if media:
        if not reading.drop_media:
            n = len(item[media[0]]) if isinstance(item[media[0]], list) else 1
            raise FieldError(media[0], media_message(f"it refers to {n} {media[0].rstrip('s')} file(s)"))
        reading.note(f"'{media[0]}' dropped (drop_media)")
    record = {"messages": messages}
    tools = item.get("tools", item.get("functions")) or reading.tools
    if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        if isinstance(tools, str):
            try:
                tools = json.loads(tools) if tools.strip() else []
            except json.JSONDecodeError:
                raise FieldError("tools", "'tools' must be a JSON list of tool schemas") from None
        record["tools"] = json.dumps(tools or [], ensure_ascii=False)
    label_key = first_key(item, LABEL_KEYS)
    if label_key:
        label = item[label_key]
        if isinstance(label, str) and label.lower() in ("true", "false"):
            label = label.lower() == "true"
        if not isinstance(label, bool):
            raise FieldError(label_key, f"'{label_key}' must be true or false (a KTO label), got {label!r}")
        if not label:
            raise Drop(f"'{label_key}' is false: an undesirable answer (KTO data); supervised fine-tuning "
                       "learns only the desirable ones")
    if all(m.get("train") is False for m in messages if m["role"] == "assistant"):
        raise Drop("every assistant turn has loss_weight 0: nothing to train")
    return record


def turns(value, field, reading, role_key="role", content_key="content") -> list[dict]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise FieldError(field, f"'{field}' must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise FieldError(f"{field}[{i}]", f"each turn must be an object with '{role_key}' and '{content_key}'")
        if role_key == "from" and "from" not in turn and "role" in turn:
            out.append(make_turn(turn, f"{field}[{i}]", reading))  # a ShareGPT file with role/content turns
        else:
            out.append(make_turn(turn, f"{field}[{i}]", reading, role_key, content_key))
    return out


# -- preference data -------------------------------------------------------------------------
PREFERENCE_PAIRS = (("chosen", "rejected"), ("chosen_messages", "rejected_messages"),
                    ("preferred_output", "non_preferred_output"))


def preference_key(item) -> str | None:
    return next((a for a, b in PREFERENCE_PAIRS if a in item and b in item), None)


def chosen_answer(item, key, reading, prompt_turns, role_key="role", content_key="content") -> list[dict]:
    """The conversation to train on: the prompt turns, then the chosen answer (refused by default)."""
    if reading.preference != "chosen":
        raise FieldError(key, "preference data: each record holds a chosen and a rejected answer (for DPO, "
                              "ORPO or a reward model), not one answer to learn; to fine-tune on the chosen "
                              "answers set the format option preference=chosen (--param preference=chosen; the rejected "
                              "ones are dropped)")
    chosen = item[key]
    if isinstance(chosen, str):
        if chosen.lstrip().startswith("\n\nHuman:") or chosen.startswith("Human:") or "\n\nHuman:" in chosen:
            return dialogue_turns(chosen, key, reading)  # Anthropic HH: the whole dialogue as text
        return prompt_turns + [{"role": "assistant", "content": reading.text(chosen, key)}]
    answer = turns(chosen, key, reading, role_key, content_key)
    if prompt_turns and answer[0]["role"] != "assistant" and len(answer) > 1:
        return answer  # the chosen side repeats the whole conversation (TRL's implicit prompt)
    return prompt_turns + answer


def dialogue_turns(text, field, reading) -> list[dict]:
    """``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` (Anthropic HH) as turns."""
    parts = re.split(r"\n*\b(Human|Assistant):\s?", text)
    out = [{"role": "user" if who == "Human" else "assistant", "content": reading.text(body.strip(), field)}
           for who, body in zip(parts[1::2], parts[2::2])]
    if not out:
        raise FieldError(field, "expected a dialogue of 'Human:' and 'Assistant:' turns")
    return out


# -- alpaca ----------------------------------------------------------------------------------
def alpaca_record(item, reading=None):
    """``{instruction, input, output, system, history}`` (and the prompt/response, ranking and KTO variants)."""
    reading = reading or Reading()
    instruction_key = first_key(item, INSTRUCTION_KEYS) or "instruction"
    instruction = reading.text(get_str(item, instruction_key), instruction_key)
    input_key = first_key(item, INPUT_KEYS) or "input"
    extra = reading.text(get_str(item, input_key, required=False), input_key)
    messages = []
    system = get_str(item, "system", required=False)
    if system:
        messages.append({"role": "system", "content": reading.text(system, "system")})
    history = item.get("history") or []
    if not isinstance(history, list) or not all(isinstance(h, list) and len(h) == 2 for h in history):
        raise FieldError("history", "'history' must be a list of [question, answer] pairs")
    for k, pair in enumerate(history):
        for j, value in enumerate(pair):
            if not isinstance(value, str):
                raise FieldError(f"history[{k}][{j}]", f"each history entry is [question, answer], two strings; "
                                                       f"got {json_type(value)}")
        question, answer = pair
        messages += [{"role": "user", "content": reading.text(question, f"history[{k}][0]")},
                     {"role": "assistant", "content": reading.text(answer, f"history[{k}][1]")}]
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    messages.append({"role": "user", "content": user})
    pref = preference_key(item)
    if pref:
        messages = chosen_answer(item, pref, reading, messages)
    else:
        output_key = first_key(item, OUTPUT_KEYS) or "output"
        messages.append({"role": "assistant", "content": reading.text(get_str(item, output_key), output_key)})
    for i, m in enumerate(messages):  # name the field the user wrote, not the turn it became
        if m["role"] == "assistant" and not m["content"].strip():
            field = f"history[{(i - bool(system)) // 2}][1]" if i < len(messages) - 1 else (
                first_key(item, OUTPUT_KEYS) or pref or "output")
            raise FieldError(field, "empty answer: training on it teaches the model to answer with nothing; "
                                    "write the answer or delete the record")
    return finish(messages, "output", item, reading)


# -- sharegpt --------------------------------------------------------------------------------
def sharegpt_record(item, reading=None):
    """``{conversations: [{from, value}], system, tools, chosen, rejected}`` (LLaMA-Factory's layout)."""
    reading = reading or Reading()
    key = "conversations" if "conversations" in item else "messages"
    if key not in item:
        raise FieldError("conversations", "'conversations' must be a non-empty list of {from, value} turns")
    messages = []
    system = get_str(item, "system", required=False)
    if system:
        messages.append({"role": "system", "content": reading.text(system, "system")})
    messages += turns(item[key], key, reading, "from", "value")
    pref = preference_key(item)
    if pref:
        messages = chosen_answer(item, pref, reading, messages, "from", "value")
    return finish(messages, key, item, reading)


# -- messages --------------------------------------------------------------------------------
def messages_record(item, reading=None):
    """OpenAI / TRL / LLaMA-Factory chat: ``messages``, ``prompt``+``completion``, preference pairs."""
    reading = reading or Reading()
    if "messages" in item or "conversation" in item:  # "conversation": LMSYS and WildChat dumps
        field = "messages" if "messages" in item else "conversation"
        messages = turns(item[field], field, reading)
    elif isinstance(item.get("input"), dict) and "messages" in item["input"]:
        messages, field = turns(item["input"]["messages"], "input.messages", reading), "input.messages"
    elif "prompt" in item:
        prompt = item["prompt"]
        messages = ([{"role": "user", "content": reading.text(prompt, "prompt")}] if isinstance(prompt, str)
                    else turns(prompt, "prompt", reading))
        field = "prompt"
    elif preference_key(item):
        messages, field = [], preference_key(item)
    else:
        raise FieldError("messages", "'messages' is missing; each line needs {\"messages\": [{role, content}, ...]}")
    pref = preference_key(item)
    if pref:
        messages = chosen_answer(item, pref, reading, messages)
    elif "completion" in item:
        completion = item["completion"]
        messages = messages + ([{"role": "assistant", "content": reading.text(completion, "completion")}]
                               if isinstance(completion, str) else turns(completion, "completion", reading))
    return finish(messages, field, item, reading)


# -- reading files ---------------------------------------------------------------------------
def iter_converted(path, rows, convert, reading: Reading):
    """Events for ``(row, item, error)`` rows: ``{"row", "record" | "dropped" | "error", "warnings"}``."""
    for row, item, error in rows:
        if error:
            yield {"row": row, "error": {"field": error[0], "message": error[1]}}
            continue
        reading.notes, reading.tools = [], None
        try:
            if not isinstance(item, dict):
                raise FieldError(None, f"expected a JSON object, got {type(item).__name__}")
            record = convert(item, reading)
        except FieldError as exc:
            yield {"row": row, "error": {"field": exc.field, "message": exc.message}}
        except Drop as exc:
            yield {"row": row, "dropped": str(exc), "warnings": list(reading.notes)}
        else:
            yield {"row": row, "record": record, "warnings": list(reading.notes)}


def collect(path, events):
    """The records of an event stream as a ``datasets.Dataset``; ``RowErrors`` if any row is bad."""
    stream = CappedEvents(events)
    records = [event["record"] for event in stream if "record" in event]
    if stream.errors:
        raise RowErrors(path, stream.errors)
    if not records:
        from pathlib import Path

        raise ValueError(f"{Path(path).name}: no record is left to train on (every row was dropped); "
                         "check the format options")
    from datasets import Dataset  # imported only for good files: a bad file's error comes back fast

    return Dataset.from_list(records)


def json_format_reader(convert):
    """``iter_records(path, drop_media, placeholders, preference)`` for a JSON layout."""
    def iter_records(path, drop_media=False, placeholders="", preference="refuse"):
        reading = Reading(drop_media, placeholders, preference)
        return iter_converted(path, iter_json_rows(path), convert, reading)
    return iter_records


def iter_csv(path, prompt_column="prompt", response_column="response", system_column="", placeholders=""):
    """Events for a CSV/TSV table: one conversation per row (row = the line the row ends on)."""
    from pathlib import Path

    reader, columns = csv_reader(path)
    name = Path(path).name
    needed = [c for c in (prompt_column, response_column, system_column) if c]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise ValueError(f"{name}, row 1 (header): no column {', '.join(repr(m) for m in missing)} "
                         f"(columns are: {', '.join(columns) or 'none'}); rename the column or set "
                         "prompt_column / response_column")
    index = {c: columns.index(c) for c in needed}
    reading, seen = Reading(placeholders=placeholders), False
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except Exception as exc:  # noqa: BLE001 - csv.Error: an unclosed quote, a NUL byte
            yield {"row": reader.line_num, "error": {"field": None, "message": f"the row cannot be read as CSV "
                                                     f"({exc}); check its quotes"}}
            break
        if not any(c.strip() for c in cells):
            continue
        seen = True
        yield _csv_event(reader.line_num, cells, columns, index, (prompt_column, response_column, system_column),
                         reading)
    if not seen:
        raise ValueError(f"{name}: the CSV has a header but no rows; add at least one example")


def _csv_event(line, cells, columns, index, names, reading):
    prompt_column, response_column, system_column = names
    if len(cells) > len(columns):
        return {"row": line, "error": {"field": None, "message": (
            f"the row has {len(cells)} fields but the header {len(columns)}: a cell holding the separator "
            "(a comma?) must be put in double quotes")}}
    for col in (prompt_column, response_column):
        if index[col] >= len(cells):
            return {"row": line, "error": {"field": col, "message": f"the row has no value for '{col}' "
                                                                    "(too few columns?)"}}
    reading.notes = []
    try:
        messages = []
        if system_column and index[system_column] < len(cells) and cells[index[system_column]].strip():
            messages.append({"role": "system", "content": reading.text(cells[index[system_column]], system_column)})
        messages += [{"role": "user", "content": reading.text(cells[index[prompt_column]], prompt_column)},
                     {"role": "assistant", "content": reading.text(cells[index[response_column]], response_column)}]
        record = finish(messages, response_column, {}, reading)
    except FieldError as exc:
        field = response_column if exc.field.startswith(response_column) else exc.field
        return {"row": line, "error": {"field": field, "message": exc.message}}
    return {"row": line, "record": record, "warnings": list(reading.notes)}


def iter_text(path, split="paragraph"):
    """Events for raw text: paragraphs (or lines) of a .txt file, or JSON lines of ``{"text"}``."""
    if str(path).endswith((".jsonl", ".json")):
        yield from iter_converted(path, iter_json_rows(path), lambda item, _: {"text": get_str(item, "text")},
                                  Reading())
        return
    text = read_text(path).replace("\r\n", "\n").replace("\r", "\n")
    # paragraphs are separated by blank lines; a file without blank lines is one paragraph a line
    paragraphs = re.split(r"\n[ \t]*\n", text)
    chunks = paragraphs if split == "paragraph" and len(paragraphs) > 1 else text.splitlines()
    for row, chunk in enumerate((c for c in chunks if c.strip()), 1):
        yield {"row": row, "record": {"text": chunk.strip()}, "warnings": []}


# -- input_output (Axolotl's template-free layout) ----------------------------------------------
def segments_record(item, reading=None):
    """``{"segments": [{"text", "label"}, ...]}``: raw text pieces, no chat template; ``label`` true is
    trained, false is shown to the model as context. A record with no trained text is dropped."""
    segments = item.get("segments")
    if not isinstance(segments, list) or not segments:
        said = "missing" if "segments" not in item else "an empty list" if segments == [] else json_type(segments)
        raise FieldError("segments", f"'segments' is {said}; each record needs a non-empty list of "
                                     '{"text": "...", "label": true|false}')
    out = []
    for i, segment in enumerate(segments):
        where = f"segments[{i}]"
        if not isinstance(segment, dict):
            raise FieldError(where, f'each segment must be an object {{"text": ..., "label": ...}}, got {json_type(segment)}')
        text = segment.get("text")
        if not isinstance(text, str):
            said = "missing" if "text" not in segment else json_type(text)
            raise FieldError(f"{where}.text", f"a segment's 'text' must be a string, got {said}")
        label = segment.get("label")
        if not isinstance(label, bool):
            said = "missing" if "label" not in segment else json_type(label) + (f" {label!r}" if label is not None else "")
            raise FieldError(f"{where}.label", f"a segment's 'label' must be true (train on this text) or false "
                                               f"(context only), got {said}")
        out.append({"text": text, "label": label})
    if not any(s["label"] and s["text"].strip() for s in out):
        raise Drop("no segment has label true and some text: nothing to train")
    return {"segments": out}


def iter_segments(path):
    """Events for an ``input_output`` file (JSON lines or a JSON array of segment records)."""
    return iter_converted(path, iter_json_rows(path), segments_record, Reading())


# -- sniffing --------------------------------------------------------------------------------
def first_record(head: str):
    """The first record of a JSON array or JSON lines file, from its head (None if it cannot be parsed)."""
    text = head.lstrip("\ufeff \t\r\n")
    try:
        if text.startswith("["):
            value, _ = json.JSONDecoder().raw_decode(text, len(text) - len(text[1:].lstrip()))
        else:
            value, _ = json.JSONDecoder().raw_decode(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def looks_like_json(head: str, *keys: str) -> bool:
    start = head.lstrip("\ufeff \t\r\n")[:1]
    return start in ("[", "{") and all(f'"{k}"' in head for k in keys)


def is_alpaca(head):
    item = first_record(head)
    if item is None:
        return looks_like_json(head, "instruction", "output")
    if "instruction" in item and ("output" in item or "chosen" in item):
        return True
    # prompt/completion strings (OpenAI's legacy and TRL's layouts); question/answer is left to plugins
    strings = {k for k, v in item.items() if isinstance(v, str)}
    return bool(strings & {"instruction", "prompt"}) and bool(strings & {"output", "response", "completion", "chosen"})


def is_sharegpt(head):
    item = first_record(head)
    return "conversations" in item if item is not None else looks_like_json(head, "conversations", "from")


def is_messages(head):
    item = first_record(head)
    if item is None:
        return looks_like_json(head, "messages", "role")
    if {"messages", "conversation", "chosen_messages"} & set(item) or isinstance(item.get("input"), dict):
        return True
    return any(isinstance(item.get(k), list) for k in ("prompt", "completion", "chosen")) or \
        bool(preference_key(item))


def is_text(path, head):
    if _ext(path, ".txt", ".md"):
        return True
    item = first_record(head)
    return isinstance(item.get("text"), str) if item is not None else looks_like_json(head, "text")


def is_segments(head):
    item = first_record(head)
    return isinstance(item.get("segments"), list) if item is not None else looks_like_json(head, "segments", "label")


def _ext(path, *exts):
    return str(path).lower().endswith(exts)


class Format:
    """A data format: the attributes the ``register_data_formats`` contract asks for."""

    def __init__(self, name, description, extensions, sniff, iter_records, params=()):
        self.name, self.description, self.extensions = name, description, list(extensions)
        self.sniff, self.iter_records, self.params = sniff, iter_records, list(params)

    def load(self, path, **params):
        """Every record as a ``datasets.Dataset`` (dropped rows left out); ``RowErrors`` for bad rows."""
        return collect(path, self.iter_records(path, **params))


CHAT_PARAMS = [
    {"name": "preference", "type": "choice", "default": "refuse", "choices": ["refuse", "chosen"],
     "help": "Preference data (a chosen and a rejected answer per prompt, made for DPO): 'refuse' stops and "
             "says so; 'chosen' fine-tunes on the chosen answers and drops the rejected ones."},
    {"name": "drop_media", "type": "bool", "default": False,
     "help": "Multimodal records (images, audio, video) are refused, since a text model cannot see them. "
             "On: drop the media references and <image> tags and train on the text alone."},
    {"name": "placeholders", "type": "str", "default": "",
     "help": "Fill {{name}} placeholders left in the text: name=value pairs separated by ';' "
             "(e.g. 'name=Ada; company=Acme'). Unfilled ones are reported as warnings."},
]

FORMATS = [
    Format("alpaca", "Instruction tuning: {instruction, input, output} records (a JSON array or JSON lines); "
                     "also prompt/response, ranking (chosen/rejected) and KTO (label) variants.",
           [".json", ".jsonl"], lambda path, head: is_alpaca(head), json_format_reader(alpaca_record), CHAT_PARAMS),
    Format("sharegpt", "Multi-turn chats: {conversations: [{from: human|gpt|system|function_call|observation, "
                       "value}]}, with tools, images, chosen/rejected as LLaMA-Factory writes them.",
           [".json", ".jsonl"], lambda path, head: is_sharegpt(head), json_format_reader(sharegpt_record),
           CHAT_PARAMS),
    Format("messages", "OpenAI-style chat: {messages: [{role, content}]} (content parts, weights, tool calls), "
                       "and TRL's prompt/completion and chosen/rejected layouts.",
           [".jsonl", ".json"], lambda path, head: is_messages(head), json_format_reader(messages_record),
           CHAT_PARAMS),
    Format("csv", "A table with a prompt column and a response column (CSV or TSV).",
           [".csv", ".tsv"], lambda path, head: _ext(path, ".csv", ".tsv"), iter_csv,
           params=[{"name": "prompt_column", "type": "str", "default": "prompt",
                    "help": "The column holding what the user asks."},
                   {"name": "response_column", "type": "str", "default": "response",
                    "help": "The column holding the answer the model should learn to give."},
                   {"name": "system_column", "type": "str", "default": "",
                    "help": "Optional column with a system prompt per row; leave empty for none."},
                   CHAT_PARAMS[2]]),
    Format("text", "Raw text for continued pre-training: a .txt file, or JSON lines of {text}.",
           [".txt", ".md", ".jsonl"], is_text, iter_text,
           params=[{"name": "split", "type": "choice", "default": "paragraph", "choices": ["paragraph", "line"],
                    "help": "How a .txt file becomes examples: one per paragraph (blank-line separated) "
                            "or one per line."}]),
    Format("input_output", "Template-free raw text with trained and untrained spans: {segments: [{text, label}]} "
                           "(Axolotl's input_output); label true is learned, false is context only.",
           [".jsonl", ".json"], lambda path, head: is_segments(head), iter_segments),
]


@hookimpl
def register_data_formats(register):
    """The six built-in formats."""
    for fmt in FORMATS:
        register(fmt)
