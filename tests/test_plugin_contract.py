"""The smaller points of the plugin contract: one name rule, typed protocols, the kit checking what the
engine reads (iter_records, role tool, precision), null contents refused, make-tiny-model."""

import json
import os
import re
import subprocess
import sys
import types

import pytest

from conftest import REPO
from tunelab.core import data, hookspecs, protocols
from tunelab.core.registry import NAME_RE, NAME_RULE, Registry, validate_contribution

GUIDE = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")


def words(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[`'\"]", "", text))


# -- names -------------------------------------------------------------------------------------

def test_one_name_rule_in_the_registry_the_hookspec_and_the_guide():
    rule = words(NAME_RULE.split(" (e.g.")[0])
    assert rule == "a lowercase letter, then up to 63 lowercase letters, digits, _ or -"
    assert rule in words(hookspecs.__doc__)
    assert rule in words(GUIDE)
    assert "lower_snake_case" not in hookspecs.__doc__ + (hookspecs.register_data_formats.__doc__ or "")
    for good in ("qa_jsonl", "a", "top-p2", "x" * 64):
        assert NAME_RE.match(good), good
    for bad in ("Qa", "_x", "1x", "x y", "x" * 65, "é"):
        assert not NAME_RE.match(bad), bad
        with pytest.raises(ValueError, match="a lowercase letter, then up to 63"):
            validate_contribution("samplers", types.SimpleNamespace(name=bad, description="d", params=[],
                                                                      generation_kwargs=dict))


# -- protocols ---------------------------------------------------------------------------------

def test_the_builtins_satisfy_the_protocols_and_the_guide_names_them():
    reg = Registry(load_external=False)
    kinds = {"data_formats": protocols.StreamingDataFormat, "samplers": protocols.Sampler,
             "evaluators": protocols.Evaluator, "backends": protocols.Backend}
    for kind, protocol in kinds.items():
        assert reg.items(kind) and all(isinstance(obj, protocol) for obj in reg.items(kind).values()), kind
    assert not isinstance(types.SimpleNamespace(name="x"), protocols.Sampler)
    for name in ("DataFormat", "Sampler", "Evaluator", "Backend", "core/protocols.py"):
        assert name in GUIDE


# -- the kit -----------------------------------------------------------------------------------

def test_the_kit_accepts_every_canonical_shape_and_role_tool():
    from tunelab.core.testing import check_record  # imported here: core.testing is also a pytest plugin (test_plugins_docs)

    check_record({"messages": [{"role": "user", "content": "weather?"},
                               {"role": "assistant", "content": "", "tool_calls": '[{"name": "w"}]'},
                               {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]})
    check_record({"text": "raw"})
    check_record({"segments": [{"text": "q ", "label": False}, {"text": "a", "label": True}]})
    with pytest.raises(AssertionError, match="role 'bot'"):
        check_record({"messages": [{"role": "bot", "content": "x"}]})
    with pytest.raises(AssertionError, match=r"segments\[0\].label"):
        check_record({"segments": [{"text": "q", "label": 1}]})


def streaming_format(events, records):
    from datasets import Dataset

    return types.SimpleNamespace(name="kit_stream", description="d", extensions=[".jsonl"], params=[],
                                 sniff=lambda path, head: True, load=lambda path: Dataset.from_list(records),
                                 iter_records=lambda path: iter(events))


def test_the_kit_checks_iter_records(write):
    from tunelab.core.testing import check_data_format

    path = write("x.jsonl", "{}\n")
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    good = [{"row": 1, "record": record, "warnings": []}, {"row": 2, "dropped": "KTO: undesirable"}]
    check_data_format(streaming_format(good, [record]), path)
    with pytest.raises(AssertionError, match="kept 2 records but load returned 1"):
        check_data_format(streaming_format([good[0], {"row": 2, "record": record}], [record]), path)
    with pytest.raises(AssertionError, match="not an event"):
        check_data_format(streaming_format([{"record": record}], [record]), path)
    with pytest.raises(AssertionError, match="row must be 1-based"):
        check_data_format(streaming_format([{"row": 0, "record": record}], [record]), path)
    with pytest.raises(AssertionError, match="not canonical"):
        check_data_format(streaming_format([{"row": 1, "record": {"messages": [{"role": "user"}]}}], [record]),
                          path)


def test_check_evaluator_passes_the_documented_context():
    from tunelab.core.testing import check_evaluator

    seen = {}

    def evaluate(samples, context):
        seen.update(context)
        return {"score": 1.0}

    check_evaluator(types.SimpleNamespace(name="ctx", description="d", params=[], higher_is_better=True,
                                          evaluate=evaluate))
    assert set(seen) == {"model", "tokenizer", "max_length", "encode", "precision"}


# -- null contents -----------------------------------------------------------------------------

@pytest.mark.parametrize("line, field, message", [
    ('{"messages": [{"role": "user", "content": null}, {"role": "assistant", "content": "a"}]}',
     "messages[0].content", "'content' is null: a user turn needs its text as a string"),
    ('{"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]}',
     "messages[0].content", "'content' is missing"),
    ('{"messages": [{"role": "system", "content": null}, {"role": "user", "content": "q"}, '
     '{"role": "assistant", "content": "a"}]}', "messages[0].content", "is null"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null}]}',
     "messages[1].content", "an assistant turn needs its text"),
    ('{"conversations": [{"from": "human", "value": null}, {"from": "gpt", "value": "a"}]}',
     "conversations[0].value", "'value' is null"),
    ('{"instruction": "q", "output": "a", "history": [["hi", null]]}', "history[0][1]", "got null"),
    ('{"instruction": "q", "output": "a", "history": [[1, "x"]]}', "history[0][0]", "got int"),
    ('{"instruction": null, "output": "a"}', "instruction", "'instruction' is null"),
    ('{"text": null}', "text", "'text' is null"),  # (a null text is not sniffed as text: named below)
])
def test_null_and_non_string_contents_are_refused_with_row_and_field(write, registry, line, field, message):
    path = write("nulls.jsonl", line + "\n")
    report = data.check_file(path, "text" if line.startswith('{"text"') else None, registry=registry)
    assert not report["ok"], report
    (error,) = report["errors"]
    assert (error["row"], error["field"]) == (1, field) and message in error["message"], error


def test_a_tool_calling_turn_may_have_null_content(write, registry):
    line = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                         {"role": "assistant", "content": None,
                          "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}]},
                         {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "Sunny."}]}
    report = data.check_file(write("tools.jsonl", json.dumps(line) + "\n"), registry=registry)
    assert report["ok"] and report["kept"] == 1 and report["empty"] == [], report


def test_the_cli_refuses_a_null_content_with_exit_2(write):
    path = write("null.jsonl", '{"messages": [{"role": "user", "content": null}, '
                               '{"role": "assistant", "content": "a"}]}\n')
    env = {k: v for k, v in os.environ.items() if k not in ("TUNELAB_PLUGINS_DIR", "TUNELAB_LOAD_PLUGINS")}
    result = subprocess.run([sys.executable, "-m", "tunelab", "data", "check", str(path), "--no-tokens"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "empty examples" not in result.stdout
    assert result.stderr.strip() == ("error: null.jsonl, row 1, field 'messages[0].content': 'content' is null: a user "
                                     "turn needs its text as a string; write it, or delete the turn (read as format "
                                     "'messages')")


# -- make-tiny-model -----------------------------------------------------------------------------

def test_make_tiny_model(tmp_path, embedded_dir):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "tunelab", "make-tiny-model", *map(str, args)], cwd=REPO,
                              capture_output=True, text=True, timeout=180)

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    refused = run(tmp_path / "taken")
    assert refused.returncode == 2 and "is not empty" in refused.stderr and (tmp_path / "taken" / "keep.txt").exists()
    made = run(tmp_path / "tiny")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "tiny" / "config.json").is_file() and (tmp_path / "tiny" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "tiny" / "config.json").read_text())["num_hidden_layers"] == 2
