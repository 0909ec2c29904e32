"""Malformed data files, each refused with its real cause in one line — and quickly, before any model loads.

Every case is generated here (name, bytes, format or None to detect, a pattern the message must
match). Run this file as a script for the table in the note:

    .venv/bin/python tests/test_bad_input.py        # inputs tried, refused with the right cause, median time
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import re
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunelab.core import data  # noqa: E402
from tunelab.core.errors import UserError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
GOOD = '{"instruction": "Say hi.", "output": "Hi!"}\n{"instruction": "Say bye.", "output": "Bye!"}\n'
CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def jl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def msgs(*turns, **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("train.jsonl", GOOD)
    return buf.getvalue()


# name, content (str or bytes), format (None = detect), pattern the one-line message must match
CASES = [
    # -- encodings and containers ---------------------------------------------------------------
    ("utf16_bom.jsonl", GOOD.encode("utf-16"), None, r"UTF-16 \(little-endian, with a byte-order mark\).*UTF-8"),
    ("utf16_be.jsonl", codecs.BOM_UTF16_BE + GOOD.encode("utf-16-be"), None, r"UTF-16 \(big-endian"),
    ("utf16_nobom.jsonl", GOOD.encode("utf-16-le"), None, r"UTF-16 \(no byte-order mark\)"),
    ("utf32.jsonl", GOOD.encode("utf-32"), None, r"UTF-32"),
    ("utf16_forced.jsonl", GOOD.encode("utf-16"), "alpaca", r"UTF-16"),
    ("train.jsonl.gz", gzip.compress(GOOD.encode()), None, r"gzip-compressed.*gunzip"),
    ("gzipped.jsonl", gzip.compress(GOOD.encode()), "alpaca", r"gzip-compressed"),
    ("archive.zip", _zip(), None, r"ZIP archive"),
    ("text.parquet", GOOD, None, r"named like a Parquet table but the file is plain text \(JSON lines\).*text\.jsonl"),
    ("real.parquet", b"PAR1\x15\x04\x15\x10\x15\x14L\x15\x02\x15\x00\x12\x00\x00" + b"\x00" * 40 + b"PAR1", None,
     r"a Parquet table.*read_parquet"),
    ("list.yaml", "- instruction: Say hi.\n  output: Hi!\n- instruction: Say bye.\n  output: Bye!\n", None,
     r"looks like YAML.*JSON lines"),
    ("yaml_named.json", "- instruction: Say hi.\n  output: Hi!\n- instruction: Say bye.\n  output: Bye!\n", None,
     r"looks like YAML"),
    ("null.json", "null", None, r"holds null \(null\), not records"),
    ("number.json", "42\n", None, r"holds a number \(42\), not records"),
    ("string.json", '"hello"', None, r"holds a single string"),
    ("bool.jsonl", "true\n", None, r"holds a true/false value"),
    ("null_forced.jsonl", "null\n", "messages", r"holds null"),
    ("empty_object.json", "{}", None, r"empty JSON object \{\}"),
    ("empty_object_forced.json", "{}\n", "alpaca", r"empty JSON object"),
    ("wrapped.json", json.dumps({"data": [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]},
                                indent=2), None, r"one JSON object holding 2 records under the key 'data'"),
    ("wrapped_line.jsonl", json.dumps({"train": [CHAT, CHAT, CHAT]}) + "\n", None,
     r"holding 3 records under the key 'train'"),
    ("latin1.jsonl", '{"instruction": "caf\xe9", "output": "b"}\n'.encode("latin-1"), None, r"line 1: bytes that are not UTF-8"),
    ("binary.jsonl", bytes(range(256)) * 8, None, r"binary"),
    ("nul.txt", "some text\x00more text\n", None, r"NUL bytes"),
    ("image.json", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32, None, r"a PNG image"),
    # -- Python's words, replaced by the user's -------------------------------------------------------
    ("deep.jsonl", '{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n", None, r"row 1: nested too deeply"),
    ("deep_forced.jsonl", '{"messages": ' + "[" * 5000 + "]" * 5000 + "}\n", "messages", r"row 1: nested too deeply"),
    ("deep_array.json", "[" + '{"a":' * 3000 + "1" + "}" * 3000 + "]", None, r"row 1: nested too deeply"),
    ("role_list.jsonl", jl({"messages": [{"role": ["user"], "content": "q"}, {"role": "assistant", "content": "a"}]}),
     None, r"row 1, field 'messages\[0\]\.role': 'role' must be a string such as user or assistant, got list"),
    ("from_dict.json", json.dumps([{"conversations": [{"from": {"x": 1}, "value": "q"}, {"from": "gpt", "value": "a"}]}]),
     None, r"row 1, field 'conversations\[0\]\.from': 'from' must be a string"),
    ("part_no_text.jsonl", jl({"messages": [{"role": "user", "content": [{"type": "text", "words": "q"}]},
                                            {"role": "assistant", "content": "a"}]}),
     None, r"field 'messages\[0\]\.content\[0\]': a text part needs a string"),
    ("part_type.jsonl", jl({"messages": [{"role": "user", "content": [{"type": "hologram", "text": "q"}]},
                                         {"role": "assistant", "content": "a"}]}),
     None, r"field 'messages\[0\]\.content\[0\]\.type': unknown content part type 'hologram'"),
    ("content_number.jsonl", jl(msgs(("user", "q"), ("assistant", 3))), None,
     r"field 'messages\[1\]\.content': 'content' must be a string or a list of parts, got int"),
    ("weight_text.jsonl", jl({"messages": [{"role": "user", "content": "q"},
                                           {"role": "assistant", "content": "a", "weight": "none"}]}),
     None, r"field 'messages\[1\]\.loss_weight': a turn's weight must be a number"),
    ("bad_tool_call.jsonl", jl({"messages": [{"role": "user", "content": "q"},
                                             {"role": "assistant", "tool_calls": ["not json"]},
                                             {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]}),
     None, r"field 'messages\[1\]\.tool_calls\[0\]': a tool call must be"),
    # -- accepted before, though wrong ---------------------------------------------------------------
    ("dup_key.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d", "output": ""}\n', None,
     r"row 2, field 'output': the key 'output' appears twice"),
    ("dup_key_array.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c", "instruction": "e", "output": "d"}]',
     None, r"row 2, field 'instruction': the key 'instruction' appears twice"),
    ("dup_key_turn.jsonl", '{"messages": [{"role": "user", "content": "q"}, '
                           '{"role": "assistant", "content": "a", "content": ""}]}\n', None,
     r"row 1, field 'content': the key 'content' appears twice"),
    ("empty_reply.jsonl", jl(CHAT, msgs(("user", "q"), ("assistant", ""))), None,
     r"row 2, field 'messages\[1\]\.content': empty assistant reply"),
    ("blank_reply.json", json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]}]),
     None, r"row 1, field 'conversations\[1\]\.content': empty assistant reply"),
    ("empty_output.json", json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}]), None,
     r"row 2, field 'output': empty answer"),
    ("empty_history.json", json.dumps([{"instruction": "a", "output": "b", "history": [["q", " "]]}]), None,
     r"row 1, field 'history\[0\]\[1\]': empty answer"),
    ("empty_cell.csv", "prompt,response\nhi,yo\nq,\n", None, r"row 3, field 'response': empty assistant reply"),
    ("unanswered.jsonl", jl(msgs(("user", "q"), ("assistant", "a"), ("user", "and?"))), None,
     r"row 1, field 'messages\[2\]': the conversation ends with a user turn that nobody answers"),
    ("unanswered.json", json.dumps([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"},
                                                       {"from": "human", "value": "more?"}]}]),
     None, r"row 1, field 'conversations\[2\]': the conversation ends with a user turn"),
    ("unanswered_tool.jsonl", jl({"messages": [{"role": "user", "content": "q"},
                                               {"role": "assistant", "tool_calls": [{"name": "f", "arguments": {}}]},
                                               {"role": "tool", "content": "42"}]}),
     None, r"ends with a tool result turn that nobody answers"),
    # -- CSV -----------------------------------------------------------------------------------------
    ("ragged.csv", "prompt,response\nWhat is 1+1?,2\nList three colours,red, green, blue\n", None,
     r"row 3: the row has 4 fields but the header 2: a cell holding the separator .* double quotes"),
    ("short.csv", "prompt,response\nhi,yo\nalone\n", None, r"row 3, field 'response': the row has no value"),
    ("columns.csv", "question,answer\nhi,yo\n", None, r"row 1 \(header\): no column 'prompt', 'response'"),
    ("header_only.csv", "prompt,response\n", None, r"header but no rows"),
    ("cr_ragged.csv", "prompt,response\rhi,yo\rq,a,b\r", None, r"row 3: the row has 3 fields"),
    # -- JSON syntax and shape -----------------------------------------------------------------------------
    ("comma.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', None,
     r"row 2: invalid JSON at line 2"),
    ("unclosed.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c", "output": "d"}', None,
     r"row 2: invalid JSON at line 2 \(expected ',' or '\]'"),
    ("two_arrays.json", '[{"instruction": "a", "output": "b"}]\n[{"instruction": "c", "output": "d"}]\n', None,
     r"row 2: text after the closing '\]'"),
    ("bad_line.jsonl", GOOD + '{"instruction": "x", "output": }\n', None, r"row 3: invalid JSON"),
    ("scalar_rows.json", json.dumps([{"instruction": "a", "output": "b"}, 7]), None, r"row 2: expected a JSON object, got int"),
    ("empty_array.json", "[]", None, r"the JSON array is empty"),
    ("whitespace.jsonl", " \n\t\n", None, r"only whitespace"),
    ("whitespace_forced.jsonl", " \n\t\n", "sharegpt", r"the file is empty"),
    ("no_assistant.jsonl", jl(msgs(("user", "q"))), None, r"row 1, field 'messages': no assistant turn"),
    ("unknown_role.jsonl", jl(msgs(("user", "q"), ("robot", "a"))), None, r"field 'messages\[1\]\.role': unknown role 'robot'"),
    ("messages_str.jsonl", jl({"messages": "hi"}), None, r"field 'messages': 'messages' must be a non-empty list"),
    ("history.json", json.dumps([{"instruction": "a", "output": "b", "history": ["q"]}]), None,
     r"field 'history': 'history' must be a list of \[question, answer\] pairs"),
    ("keys.jsonl", jl({"foo": "a", "bar": "b"}), None, r"the records have the keys foo, bar, which no installed format reads"),
    ("text_missing.jsonl", '{"text": "a"}\n{"txt": "b"}\n', "text", r"row 2, field 'text': 'text' is missing"),
    ("mystery.dat", "just some words", None, r"could not tell the format.*--format"),
    ("preference.jsonl", jl({"prompt": "q", "chosen": "good", "rejected": "bad"}), None,
     r"row 1, field 'chosen': preference data.*--param preference=chosen"),
    ("media.jsonl", jl(msgs(("user", "<image>What is it?"), ("assistant", "A dog."), images=["d.png"])), None,
     r"row 1, field 'messages\[0\]\.content': multimodal record.*--param drop_media=true"),
    ("all_dropped.jsonl", jl(msgs(("user", "q"), ("assistant", "a"), label=False)), None,
     r"no example is left to train on.*'label' is false"),
]

# Files that look odd but are fine: each must be read, with this many records.
GOOD_CASES = [
    ("cr_only.csv", "prompt,response\rhi,yo\rq,a\r", 2),
    ("long_first_field.jsonl", jl({"instruction": "x" * 200_000, "output": "ok"}, {"instruction": "b", "output": "c"}), 2),
    ("long_first_field.json", json.dumps([{"instruction": "word " * 30_000, "input": "", "output": "ok"}], indent=2), 1),
    ("pretty_record.json", json.dumps(CHAT, indent=2), 1),
    ("crlf.jsonl", GOOD.replace("\n", "\r\n"), 2),
    ("bom.jsonl", "\ufeff" + GOOD, 2),
    ("quoted_commas.csv", 'prompt,response\n"List three colours","red, green, blue"\n', 1),
]


def write_case(folder: Path, name: str, content) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def refuse(path, fmt, registry=None) -> tuple[str | None, float]:
    """``(message or None, seconds)``: what ``data check`` (without a tokenizer) says about a file."""
    start = time.perf_counter()
    try:
        report = data.check_file(path, fmt, registry=registry)
        message = None if report["ok"] else report["error"]
    except UserError as exc:  # a refusal before the report (the path itself)
        message = str(exc)
    return message, time.perf_counter() - start


def test_the_suite_is_big_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, content, fmt, pattern", CASES, ids=[c[0] for c in CASES])
def test_each_bad_file_is_refused_with_its_cause(tmp_path, registry, name, content, fmt, pattern):
    path = write_case(tmp_path, name, content)
    message, seconds = refuse(path, fmt, registry)
    assert message is not None, f"{name} was accepted"
    assert re.search(pattern, message), message
    assert name in message and "\n" not in message and "Traceback" not in message and "Error:" not in message
    assert seconds < 1.0, f"{name} took {seconds:.2f} s to refuse"


@pytest.mark.parametrize("name, content, count", GOOD_CASES, ids=[c[0] for c in GOOD_CASES])
def test_odd_but_valid_files_are_read(tmp_path, registry, name, content, count):
    path = write_case(tmp_path, name, content)
    report = data.check_file(path, registry=registry)
    assert report["ok"], report.get("error")
    assert report["kept"] == count


def test_a_huge_record_is_warned_about(tmp_path, registry):
    path = write_case(tmp_path, "huge.jsonl", jl(CHAT, msgs(("user", "word " * 400_000), ("assistant", "ok"))))
    report = data.check_file(path, registry=registry, max_length=512)
    assert report["ok"]
    assert [w["row"] for w in report["warnings"]] == [2]
    assert re.search(r"a 2,000,\d{3}-character record \(about 500,\d{3} tokens\)", report["warnings"][0]["message"])
    assert "cut to max_length=512" in report["warnings"][0]["message"]


def test_a_huge_record_is_not_tokenized_whole(tokenizer):
    messages = [{"role": "user", "content": "word " * 400_000}, {"role": "assistant", "content": "ok"}]
    start = time.perf_counter()
    ex = data.encode_messages(messages, tokenizer, max_length=256)
    assert time.perf_counter() - start < 2.0
    assert ex["truncated"] and len(ex["input_ids"]) == 256 and ex["length"] > 300_000


def test_a_json_array_is_streamed_in_chunks_with_the_same_result(tmp_path, monkeypatch):
    """Chunk boundaries fall inside strings, escapes, numbers and literals: the rows must not change."""
    from tunelab.core import readers

    rows = [{"instruction": f"Q{i} \u00e9\"quoted\" \\ back", "output": f"A{i} " * (i % 5), "n": i * 1.5,
             "ok": i % 2 == 0, "none": None, "nested": {"list": [i, [i, {"x": "y"}]]}} for i in range(40)]
    text = json.dumps(rows, indent=1, ensure_ascii=False)
    path = write_case(tmp_path, "chunks.json", text.replace('"n": 3.0', '"n": 3.0, "n": 4'))  # row 3: a duplicate key
    monkeypatch.setattr(readers, "CHUNK", 7)
    got = list(readers.iter_json_rows(path))
    assert [r for r, _, _ in got] == list(range(1, 41))
    assert [v for _, v, e in got if e is None] == [r for k, r in enumerate(rows) if k != 2]
    assert got[2][2] == ("n", got[2][2][1]) and "appears twice" in got[2][2][1]
    broken = text.replace('"instruction": "Q30 ', '"instruction" "Q30 ')  # a missing colon in record 31
    with pytest.raises(json.JSONDecodeError) as whole:
        json.loads(broken)
    *_, (row, value, error) = readers.iter_json_rows(write_case(tmp_path, "bad_chunks.json", broken))
    assert row == 31 and f"invalid JSON at line {whole.value.lineno}, column {whole.value.colno}" in error[1]


def test_cli_refuses_before_loading_a_tokenizer(tmp_path):
    """Without --no-tokens the CLI would load a tokenizer (seconds); a bad file must not wait for it."""
    path = write_case(tmp_path, "dup.jsonl", '{"instruction": "c", "output": "d", "output": ""}\n')
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tunelab", "data", "check", str(path)], capture_output=True, text=True,
                            cwd=REPO, timeout=60, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    seconds = time.perf_counter() - start
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "dup.jsonl, row 1, field 'output': the key 'output' appears twice" in result.stderr
    assert seconds < 1.5, f"{seconds:.2f} s"  # a Python start, no transformers import


def table(folder: Path) -> dict:
    """Run every case through the CLI (as a user would): counts and the median wall time to refuse."""
    right, times, wrong = 0, [], []
    for name, content, fmt, pattern in CASES:
        path = write_case(folder, name, content)
        start = time.perf_counter()
        cmd = [sys.executable, "-m", "tunelab", "data", "check", str(path)] + (["--format", fmt] if fmt else [])
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=60,
                                env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        times.append(time.perf_counter() - start)
        line = result.stderr.strip()
        if result.returncode == 2 and "\n" not in line and re.search(pattern, line):
            right += 1
        else:
            wrong.append((name, result.returncode, line[-200:]))
    return {"tried": len(CASES), "right": right, "median_s": statistics.median(times), "wrong": wrong}


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = table(Path(tmp))
    print("| inputs tried | refused with the right cause | median time to refuse (CLI, wall) |")
    print("|---|---|---|")
    print(f"| {result['tried']} | {result['right']} | {result['median_s']:.2f} s |")
    for name, rc, line in result["wrong"]:
        print(f"  not right: {name} (exit {rc}): {line}")
