"""The data pipeline: built-in formats, malformed input, label masking, split, batching, reports."""

import json
import re

import pytest

from conftest import REAL_WORLD
from tunelab.core import data
from tunelab.core.data import IGNORE_INDEX
from tunelab.core.errors import UserError
from tunelab.core.registry import Registry


@pytest.fixture(scope="module")
def reg():
    """The built-ins only, whatever is installed on the machine."""
    return Registry(load_external=False)


def load(path, reg, format=None, params=None):
    dataset, name = data.load_records(path, format, params, reg)
    return dataset.to_list(), name


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def check_canonical(records):
    for r in records:
        if r.get("messages"):
            assert all(set(m) == {"role", "content"} for m in r["messages"])
            assert all(m["role"] in ("system", "user", "assistant") for m in r["messages"])
            assert all(isinstance(m["content"], str) for m in r["messages"])
            assert any(m["role"] == "assistant" for m in r["messages"])
        else:
            assert isinstance(r["text"], str) and r["text"].strip()


# -- alpaca ----------------------------------------------------------------------------------
ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hello.", "output": "Hello!"},
    {"instruction": "And then?", "input": "", "output": "Then goodbye.", "system": "Be polite.",
     "history": [["Hi", "Hello, how can I help?"]]},
]


@pytest.mark.parametrize("jsonl", [False, True])
def test_alpaca_array_and_jsonl(write, reg, jsonl):
    text = "\n".join(json.dumps(r) for r in ALPACA) if jsonl else json.dumps(ALPACA, indent=2)
    path = write("train.jsonl" if jsonl else "train.json", text)
    assert data.detect_format(path, reg) == "alpaca"
    records, name = load(path, reg)
    assert name == "alpaca"
    check_canonical(records)
    assert records[0] == {"messages": conv(("user", "Add the numbers.\n\n2 and 3"), ("assistant", "5"))}
    assert records[1] == {"messages": conv(("user", "Say hello."), ("assistant", "Hello!"))}
    assert records[2] == {"messages": conv(("system", "Be polite."), ("user", "Hi"),
                                           ("assistant", "Hello, how can I help?"), ("user", "And then?"),
                                           ("assistant", "Then goodbye."))}


# -- sharegpt --------------------------------------------------------------------------------
def test_sharegpt(write, reg):
    rows = [{"conversations": [{"from": "system", "value": "You are terse."},
                               {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."},
                               {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye."}]},
            {"system": "Top-level system.", "conversations": [{"from": "human", "value": "Q"},
                                                               {"from": "gpt", "value": "A"}]}]
    path = write("chats.json", json.dumps(rows))
    assert data.detect_format(path, reg) == "sharegpt"
    records, _ = load(path, reg)
    check_canonical(records)
    assert records[0]["messages"] == conv(("system", "You are terse."), ("user", "Hi"), ("assistant", "Hello."),
                                          ("user", "Bye"), ("assistant", "Bye."))
    assert records[1]["messages"] == conv(("system", "Top-level system."), ("user", "Q"), ("assistant", "A"))


# -- messages --------------------------------------------------------------------------------
def test_messages_jsonl(write, reg):
    lines = [{"messages": conv(("system", "S"), ("user", "U"), ("assistant", "A"))},
             {"messages": conv(("user", "U2"), ("assistant", "A2"), ("user", "U3"), ("assistant", "A3"))},
             {"messages": [{"role": "user", "content": [{"type": "text", "text": "parts"}]},
                           {"role": "assistant", "content": "ok", "name": "bot"}]}]
    path = write("chat.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    assert data.detect_format(path, reg) == "messages"
    records, _ = load(path, reg)
    check_canonical(records)
    assert records[0]["messages"] == lines[0]["messages"]
    assert records[1]["messages"] == lines[1]["messages"]
    assert records[2]["messages"] == conv(("user", "parts"), ("assistant", "ok"))


# -- csv -------------------------------------------------------------------------------------
def test_csv_default_columns_quotes_and_newlines(write, reg):
    path = write("qa.csv", 'prompt,response\n"Say ""hi"", please","Hi; there, friend"\n"Line one\nline two",ok\n')
    assert data.detect_format(path, reg) == "csv"
    records, _ = load(path, reg)
    assert records == [{"messages": conv(("user", 'Say "hi", please'), ("assistant", "Hi; there, friend"))},
                       {"messages": conv(("user", "Line one\nline two"), ("assistant", "ok"))}]


def test_csv_custom_columns_and_system(write, reg):
    path = write("qa.csv", "question,answer,persona\nWhat is 2+2?,4,Be exact.\nCapital of France?,Paris,\n")
    records, _ = load(path, reg, params={"prompt_column": "question", "response_column": "answer",
                                         "system_column": "persona"})
    assert records[0]["messages"] == conv(("system", "Be exact."), ("user", "What is 2+2?"), ("assistant", "4"))
    assert records[1]["messages"] == conv(("user", "Capital of France?"), ("assistant", "Paris"))


def test_tsv_with_commas_in_cells(write, reg):
    path = write("qa.tsv", "prompt\tresponse\nWhat is 1, 2?\tNumbers, yes.\nAnd 3?\tThree.\n")
    assert data.detect_format(path, reg) == "csv"
    records, _ = load(path, reg)
    assert records[0]["messages"] == conv(("user", "What is 1, 2?"), ("assistant", "Numbers, yes."))
    assert len(records) == 2


def test_unknown_format_param_is_refused(write, reg):
    path = write("qa.csv", "prompt,response\na,b\n")
    with pytest.raises(UserError, match=r"qa.csv: format 'csv': unknown parameter\(s\) prompt_col; known: "):
        data.load_records(path, None, {"prompt_col": "q"}, reg)


# -- text ------------------------------------------------------------------------------------
def test_text_paragraphs_lines_and_jsonl(write, reg):
    path = write("notes.txt", "First paragraph,\nstill first.\n\nSecond one.\n  \nThird.\n")
    assert data.detect_format(path, reg) == "text"
    records, _ = load(path, reg)
    assert records == [{"text": "First paragraph,\nstill first."}, {"text": "Second one."}, {"text": "Third."}]
    records, _ = load(path, reg, params={"split": "line"})
    assert [r["text"] for r in records] == ["First paragraph,", "still first.", "Second one.", "Third."]
    # Windows line endings split the same way
    crlf = write("win.txt", "Para one\r\nline b\r\n\r\nPara two\r\n")
    assert [r["text"] for r in load(crlf, reg)[0]] == ["Para one\nline b", "Para two"]
    jl = write("docs.jsonl", '{"text": "Doc one."}\n{"text": "Doc two."}\n')
    assert data.detect_format(jl, reg) == "text"
    assert load(jl, reg)[0] == [{"text": "Doc one."}, {"text": "Doc two."}]


def test_bom_and_non_ascii_are_fine(write, reg):
    path = write("bom.json", "\ufeff" + json.dumps([{"instruction": "Café — ünïcødé 日本語?", "output": "Ja, 🙂"}],
                                                   ensure_ascii=False))
    records, name = load(path, reg)
    assert name == "alpaca"
    assert records[0]["messages"][0]["content"] == "Café — ünïcødé 日本語?"
    csv_path = write("bom.csv", "\ufeffprompt,response\nGrüße,Ça va\n")
    assert load(csv_path, reg)[0][0]["messages"][1]["content"] == "Ça va"


# -- the real files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, fmt, count", [("alpaca_en_demo.json", "alpaca", 999),
                                              ("c4_demo.jsonl", "text", 300),
                                              ("wiki_demo.txt", "text", 30)])
def test_real_world_files(reg, name, fmt, count):
    path = REAL_WORLD / name
    assert data.detect_format(path, reg) == fmt
    records, got = load(path, reg)
    assert got == fmt and len(records) == count
    check_canonical(records)


def test_real_world_report(reg):
    report = data.check_file(REAL_WORLD / "alpaca_en_demo.json", registry=reg)
    assert report["ok"] and report["records"] == 999 and report["format"] == "alpaca"
    assert report["kinds"] == {"messages": 999}
    assert report["errors"] == []


# -- malformed input ---------------------------------------------------------------------------
MALFORMED = [
    # name, content, format (None = detect), pattern the message must match
    ("arr.json", '[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output": "d"}]', None,
     r"arr\.json, row 2: invalid JSON at line 2, column \d+"),
    ("lines.jsonl", '{"instruction": "a", "output": "b"}\n\n{"instruction": "c", "output": }\n', None,
     r"lines\.jsonl, row 3: invalid JSON"),
    ("missing.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c"}]', None,
     r"missing\.json, row 2, field 'output': 'output' is missing"),
    ("type.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c", "output": 5}]', None,
     r"type\.json, row 2, field 'output': 'output' must be a string, got int"),
    ("role.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n'
                   '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n', None,
     r"role\.jsonl, row 1, field 'messages': no assistant turn"),
    ("role2.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n', None,
     r"role2\.jsonl, row 1, field 'messages\[1\]\.role': unknown role 'bot'"),
    ("sg.json", '[{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "yo"}]}]', None,
     r"sg\.json, row 1, field 'conversations\[1\]\.from': unknown speaker 'robot'"),
    ("sg2.json", '[{"conversations": [{"from": "human", "value": "hi"}]}]', None,
     r"sg2\.json, row 1, field 'conversations': no assistant turn"),
    ("content.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]}\n',
     None, r"content\.jsonl, row 1, field 'messages\[1\]\.content': 'content' must be a string"),
    ("empty.jsonl", "", None, r"empty\.jsonl: the file is empty"),
    ("blank.jsonl", "  \n\n\t\n", None, r"blank\.jsonl: the file holds only whitespace"),
    ("blank2.jsonl", "  \n\n\t\n", "messages", r"blank2\.jsonl: the file is empty"),
    ("none.json", "[]", None, r"none\.json: the JSON array is empty"),
    ("latin.json", b'[{"instruction": "caf\xe9", "output": "b"}]', None,
     r"latin\.json, line 1: bytes that are not UTF-8 .*re-save the file as UTF-8"),
    ("latin.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "text", r"latin\.jsonl, line 2: bytes that are not UTF-8"),
    ("cols.csv", "question,answer\nhi,yo\n", None, r"cols\.csv, row 1 \(header\): no column 'prompt', 'response' "
                                                  r"\(columns are: question, answer\)"),
    ("rows.csv", "prompt,response\n", None, r"rows\.csv: the CSV has a header but no rows"),
    ("short.csv", "prompt,response\nhi,yo\nalone\n", None, r"short\.csv, row 3, field 'response'"),
    ("notobj.json", '[{"instruction": "a", "output": "b"}, 7]', None, r"notobj\.json, row 2: expected a JSON object"),
    ("text.jsonl", '{"text": "a"}\n{"txt": "b"}\n', "text", r"text\.jsonl, row 2, field 'text': 'text' is missing"),
    ("mystery.dat", "just some bytes", None, r"mystery\.dat: could not tell the format.*--format"),
]


@pytest.mark.parametrize("name, content, fmt, pattern", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_input_has_a_clear_error(write, reg, name, content, fmt, pattern):
    path = write(name, content)
    with pytest.raises(UserError) as info:
        data.load_records(path, fmt, None, reg)
    message = str(info.value)
    assert re.search(pattern, message), message
    assert "\n" not in message and "Traceback" not in message


def test_every_bad_row_is_listed(write, reg):
    path = write("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\nnot json\n'
                              '{"instruction": "d", "output": "e"}\n{"instruction": 1, "output": "f"}\n')
    with pytest.raises(UserError) as info:
        data.load_records(path, "alpaca", None, reg)
    assert "row 2" in str(info.value) and "and 2 more bad rows" in str(info.value)  # in row order, streamed
    assert [(e["row"], e["field"]) for e in info.value.errors] == [(2, "output"), (3, None), (5, "instruction")]
    path = write("bad2.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n'
                               '{"instruction": 1, "output": "f"}\n')
    with pytest.raises(UserError) as info:
        data.load_records(path, "alpaca", None, reg)
    assert "and 1 more bad rows" in str(info.value)
    assert info.value.errors == [
        {"row": 2, "field": "output", "message": "'output' is missing; every record needs it"},
        {"row": 3, "field": "instruction", "message": "'instruction' must be a string, got int"}]


def test_missing_and_folder_paths(tmp_path, reg):
    with pytest.raises(UserError, match="no such file"):
        data.load_records(tmp_path / "nope.json", None, None, reg)
    with pytest.raises(UserError, match="is a folder"):
        data.load_records(tmp_path, None, None, reg)


# -- label masking, token by token ------------------------------------------------------------
def labelled(example, tokenizer):
    """[(token text, trained?)] for one encoded example."""
    return [(tokenizer.decode([i]), label != IGNORE_INDEX)
            for i, label in zip(example["input_ids"], example["labels"])]


def trained_text(example, tokenizer):
    return [t for t, on in labelled(example, tokenizer) if on]


def test_only_the_assistant_reply_and_end_of_turn_are_labelled(tokenizer):
    messages = conv(("system", "Be brief."), ("user", "What is the capital of France?"),
                    ("assistant", "Paris is the capital."))
    ex = data.encode_messages(messages, tokenizer, max_length=512)
    reply = tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]
    expected = [tokenizer.decode([i]) for i in reply] + ["<|im_end|>"]
    assert trained_text(ex, tokenizer) == expected
    # labelled tokens are exactly the input tokens at those positions; everything else is -100
    pairs = labelled(ex, tokenizer)
    first = [on for _, on in pairs].index(True)
    assert [on for _, on in pairs] == [False] * first + [True] * len(expected) + [False] * (len(pairs) - first - len(expected))
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ex["input_ids"], ex["labels"]))
    untrained = "".join(t for t, on in pairs if not on)
    assert "Be brief." in untrained and "capital of France?" in untrained and "assistant" in untrained
    assert ex["truncated"] is False and ex["length"] == len(ex["input_ids"])


def test_multi_turn_labels_every_reply_and_nothing_between(tokenizer):
    messages = conv(("system", "You count."), ("user", "One?"), ("assistant", "One."),
                    ("user", "Two?"), ("assistant", "Two, then."))
    ex = data.encode_messages(messages, tokenizer, max_length=512)
    expected = []
    for reply in ("One.", "Two, then."):
        expected += [tokenizer.decode([i]) for i in tokenizer(reply, add_special_tokens=False)["input_ids"]]
        expected += ["<|im_end|>"]
    assert trained_text(ex, tokenizer) == expected
    # the two replies are separate runs of trained tokens, with the user's turn masked between them
    flags = "".join("1" if on else "0" for _, on in labelled(ex, tokenizer))
    assert re.fullmatch(r"0+1+0+1+0*", flags), flags
    between = "".join(t for t, on in labelled(ex, tokenizer)[flags.index("10") + 1: flags.rindex("01") + 1])
    assert "Two?" in between


def test_conversation_opening_with_the_assistant(tokenizer):
    messages = conv(("assistant", "Hello! Ask me anything."), ("user", "Hi"), ("assistant", "Yes?"))
    ex = data.encode_messages(messages, tokenizer, max_length=512)
    assert "".join(trained_text(ex, tokenizer)) == "Hello! Ask me anything.<|im_end|>Yes?<|im_end|>"


def test_train_on_prompt_labels_everything(tokenizer):
    messages = conv(("system", "S."), ("user", "Q?"), ("assistant", "A."))
    ex = data.encode_messages(messages, tokenizer, max_length=512, train_on_prompt=True)
    assert ex["labels"] == ex["input_ids"]


def test_truncation_is_counted(tokenizer):
    messages = conv(("user", "word " * 50), ("assistant", "reply " * 50))
    full = data.encode_messages(messages, tokenizer, max_length=4096)
    cut = data.encode_messages(messages, tokenizer, max_length=40)
    assert cut["truncated"] and not full["truncated"]
    assert len(cut["input_ids"]) == len(cut["labels"]) == 40
    assert cut["input_ids"] == full["input_ids"][:40] and cut["length"] == full["length"]


def test_encode_text_chunks(tokenizer):
    text = " ".join(f"word{i}" for i in range(200))
    n = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1  # + EOS
    chunks = data.encode_text(text, tokenizer, max_length=64)
    assert [len(c["input_ids"]) for c in chunks[:-1]] == [64] * (len(chunks) - 1)
    assert sum(len(c["input_ids"]) for c in chunks) == n
    assert all(c["labels"] == c["input_ids"] for c in chunks)
    assert chunks[-1]["input_ids"][-1] == tokenizer.eos_token_id
    assert sum(c["truncated"] for c in chunks) == 1  # one long document, counted once
    short = data.encode_text("Hello world.", tokenizer, max_length=64)
    assert len(short) == 1 and not short[0]["truncated"]


# -- prepare, batches, collate ------------------------------------------------------------------
def test_prepare_split_is_seeded_reproducible_and_disjoint(chat_file, tokenizer, reg):
    a = data.prepare(chat_file, tokenizer, max_length=128, val_fraction=0.25, seed=1, registry=reg)
    b = data.prepare(chat_file, tokenizer, max_length=128, val_fraction=0.25, seed=1, registry=reg)
    c = data.prepare(chat_file, tokenizer, max_length=128, val_fraction=0.25, seed=2, registry=reg)
    assert a.records == 24 and len(a.train) == 18 and len(a.val) == 6 and a.format == "alpaca"
    key = lambda exs: [tuple(e["input_ids"]) for e in exs]  # noqa: E731
    assert key(a.train) == key(b.train) and key(a.val) == key(b.val)
    assert set(key(a.val)) != set(key(c.val))
    assert not set(key(a.train)) & set(key(a.val))
    assert len(set(key(a.train)) | set(key(a.val))) == 24
    summary = a.summary()
    assert summary["train_examples"] == 18 and summary["val_examples"] == 6 and summary["truncated"] == 0


def test_prepare_counts_truncation_and_drops_answerless(write, tokenizer, reg):
    rows = [{"instruction": "Short?", "output": "Yes."},
            {"instruction": "long " * 60, "output": "The answer, cut off."}]
    path = write("t.json", json.dumps(rows))
    prepared = data.prepare(path, tokenizer, max_length=48, val_fraction=0, registry=reg)
    assert prepared.truncated == 1 and prepared.dropped == [2]
    assert len(prepared.train) == 1 and prepared.val == []
    with pytest.raises(UserError, match="raise max_length"):
        data.prepare(write("u.json", json.dumps(rows[1:])), tokenizer, max_length=48, registry=reg)


def test_prepare_text_file(tokenizer, reg):
    prepared = data.prepare(REAL_WORLD / "wiki_demo.txt", tokenizer, max_length=256, val_fraction=0.1, registry=reg)
    assert prepared.format == "text" and prepared.records == 30
    assert all(len(e["input_ids"]) <= 256 and e["labels"] == e["input_ids"] for e in prepared.train)
    assert 0 < prepared.truncated <= 30  # documents cut into chunks, each counted once


def test_length_grouped_batches_cover_every_index_once_and_group_lengths():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 500) for _ in range(403)]
    batches = data.length_grouped_batches(lengths, batch_size=8, seed=3)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(403))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert data.length_grouped_batches(lengths, 8, seed=3) == batches
    assert data.length_grouped_batches(lengths, 8, seed=3, epoch=1) != batches
    # grouping: padding far below what random batches would need
    waste = lambda bs: sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)  # noqa: E731
    shuffled = list(range(403))
    rng.shuffle(shuffled)
    random_batches = [shuffled[k: k + 8] for k in range(0, 403, 8)]
    assert waste(batches) < waste(random_batches) / 5


def test_collate_pads_to_the_longest_in_the_batch():
    examples = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                {"input_ids": [8, 9, 10, 11, 12], "labels": [-100, -100, 10, 11, 12]},
                {"input_ids": [13], "labels": [13]}]
    batch = data.collate(examples, pad_token_id=0)
    assert batch["input_ids"].shape == (3, 5)  # the longest example, not max_length
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12], [13, 0, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, -100, 10, 11, 12],
                                        [13, -100, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_prepared_batches_are_padded_dynamically(chat_file, tokenizer, reg):
    prepared = data.prepare(chat_file, tokenizer, max_length=512, val_fraction=0.1, registry=reg)
    lengths = [len(e["input_ids"]) for e in prepared.train]
    for batch_ids in data.length_grouped_batches(lengths, batch_size=4, seed=0):
        batch = data.collate([prepared.train[i] for i in batch_ids], tokenizer.pad_token_id)
        assert batch["input_ids"].shape[1] == max(lengths[i] for i in batch_ids) < 512
        assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


# -- check_file --------------------------------------------------------------------------------
def test_check_file_report(write, tokenizer, reg):
    rows = [{"instruction": "Q1", "output": "A1"}, {"instruction": "Q2", "output": "A2"},
            {"instruction": "Q1", "output": "A1"}, {"instruction": "  ", "output": "A3"},
            {"instruction": "long " * 40, "output": "A4"}, {"instruction": "Q1 ", "output": "A1"}]
    path = write("r.json", json.dumps(rows))
    report = data.check_file(path, tokenizer=tokenizer, max_length=60, registry=reg)
    assert report["ok"] and report["format"] == "alpaca" and report["records"] == 6
    assert report["errors"] == []
    assert report["empty"] == [4]
    assert report["duplicates"] == [{"row": 3, "same_as": 1}, {"row": 6, "same_as": 1}]
    t = report["token_lengths"]
    assert t["min"] <= t["median"] <= t["p95"] <= t["max"] and len(t["values"]) == 6
    assert t["max"] > 60 > sorted(t["values"])[-2] and report["over_max_length"] == 1
    json.dumps(report)
    fast = data.check_file(path, registry=reg)
    assert fast["token_lengths"] is None and fast["records"] == 6


def test_check_file_text(write, tokenizer, reg):
    path = write("t.jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": "one"}\n{"text": "   "}\n')
    report = data.check_file(path, tokenizer=tokenizer, registry=reg)
    assert report["kinds"] == {"text": 4} and report["empty"] == [4]
    assert report["duplicates"] == [{"row": 3, "same_as": 1}]


def test_check_file_malformed_reports_rows_and_fields(write, reg):
    path = write("bad.jsonl", '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n'
                              '{"messages": [{"role": "user", "content": "q"}]}\n'
                              '{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    report = data.check_file(path, registry=reg)
    assert report["ok"] is False and report["records"] == 0
    assert [(e["row"], e["field"]) for e in report["errors"]] == [(2, "messages"), (3, "messages[0].role")]
    assert "bad.jsonl" in report["error"] and "row 2" in report["error"]
    json.dumps(report)
