"""Data sets in the layouts of other fine-tuning tools (LLaMA-Factory, OpenAI, TRL): read, or refused as what they are.

The samples in tests/data/other-tools/ were written for these tests (see its README.md).
"""

import copy
import json
import subprocess
import sys

import pytest

from conftest import REPO
from tunelab.core import data
from tunelab.core.data import IGNORE_INDEX
from tunelab.core.errors import UserError
from tunelab.core.registry import Registry

SAMPLES = REPO / "tests" / "data" / "other-tools"


@pytest.fixture(scope="module")
def reg():
    return Registry(load_external=False)


def read(name, reg, **params):
    return data.read_records(SAMPLES / name, None, params or None, reg)


def conv(*turns):
    return [{"role": r, "content": c} for r, c in turns]


def plain(messages):
    """Turns without the keys datasets/arrow fill with None."""
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


def refusal(name, reg, *fragments, **params):
    with pytest.raises(UserError) as info:
        data.read_records(SAMPLES / name, None, params or None, reg)
    message = str(info.value)
    assert "\n" not in message and name in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return info.value


# -- content parts and per-turn weights ---------------------------------------------------------------
def test_openai_content_parts_are_joined_and_weight_0_is_not_trained(reg, tokenizer):
    got = read("openai_content_parts.jsonl", reg)
    assert got["format"] == "messages" and got["rows"] == [1, 2] and got["dropped"] == []
    assert got["records"][0]["messages"] == conv(("system", "You are a science tutor."), ("user", "Why is the sky blue?"),
                                                 ("assistant", "Air scatters blue light more than red light."))
    second = got["records"][1]["messages"]
    assert [m.get("train") for m in second] == [None, False, None, None]
    ex = data.encode_messages(second, tokenizer, 512)
    trained = tokenizer.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])
    assert trained == "Sorry, 2 + 2 is 4.<|im_end|>"  # the wrong answer (weight 0) is context, not learned


def test_llamafactory_v1_value_parts_and_loss_weight(reg, tokenizer):
    got = read("llamafactory_v1_sft.jsonl", reg)
    assert got["format"] == "messages"
    assert plain(got["records"][0]["messages"]) == conv(("system", "You are a helpful assistant."),
                                                        ("user", "Hello, who are you?"),
                                                        ("assistant", "I am a small assistant."))
    second = got["records"][1]["messages"]
    ex = data.encode_messages(second, tokenizer, 512)
    trained = tokenizer.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])
    assert trained == "Mars.<|im_end|>"
    # a record whose every answer has weight 0 teaches nothing: dropped, with the reason and the row
    assert got["dropped"] == [{"row": 3, "reason": "every assistant turn has loss_weight 0: nothing to train"}]


# -- preference data ---------------------------------------------------------------------------------
PREFERENCE = ["sharegpt_dpo.json", "alpaca_ranking.json", "trl_preference_implicit.jsonl",
              "trl_preference_explicit.jsonl", "hh_preference.jsonl", "openai_preference.jsonl"]


@pytest.mark.parametrize("name", PREFERENCE)
def test_preference_data_is_named_and_refused_by_default(reg, name):
    refusal(name, reg, "row 1", "preference data", "chosen", "preference=chosen")


@pytest.mark.parametrize("name, expected", [
    ("sharegpt_dpo.json", conv(("user", "What is the boiling point of water at sea level?"),
                               ("assistant", "100 degrees Celsius (212 degrees Fahrenheit)."))),
    ("alpaca_ranking.json", conv(("user", "Give a synonym for happy."), ("assistant", "Joyful."))),
    ("trl_preference_implicit.jsonl", conv(("user", "What colour is chlorophyll?"), ("assistant", "Green."))),
    ("trl_preference_explicit.jsonl", conv(("user", "How many legs does a spider have?"), ("assistant", "Eight."))),
    ("hh_preference.jsonl", conv(("user", "What is the capital of Italy?"), ("assistant", "Rome."))),
    ("openai_preference.jsonl", conv(("user", "Tell me a fact about the Sun."),
                                     ("assistant", "The Sun holds 99.8% of the Solar System's mass."))),
])
def test_preference_chosen_trains_on_the_chosen_answer(reg, name, expected):
    got = read(name, reg, preference="chosen")
    assert plain(got["records"][0]["messages"]) == expected
    text = json.dumps(got["records"])
    for rejected in ("It depends on the kettle", "Sad.", "Blue.", "Six.\"}], \"label", "Milan", "The Sun is cold"):
        assert rejected not in text


def test_preference_second_records(reg):
    got = read("sharegpt_dpo.json", reg, preference="chosen")
    assert plain(got["records"][1]["messages"]) == conv(("system", "Answer briefly."), ("user", "Is the Moon a planet?"),
                                                        ("assistant", "No, it is Earth's natural satellite."))
    got = read("trl_preference_explicit.jsonl", reg, preference="chosen")
    assert plain(got["records"][1]["messages"]) == conv(("user", "How many legs does an insect have?"),
                                                        ("assistant", "Six."))
    got = read("alpaca_ranking.json", reg, preference="chosen")
    assert plain(got["records"][1]["messages"]) == conv(("user", "Translate to French.\n\nGood morning"),
                                                        ("assistant", "Bonjour."))


# -- KTO ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, kept, dropped, key", [("kto_messages.json", [1, 3], [2], "label"),
                                                      ("trl_kto.jsonl", [1], [2], "label"),
                                                      ("sharegpt_kto.json", [1], [2], "kto_tag")])
def test_kto_trains_only_the_desirable_answers(reg, name, kept, dropped, key):
    got = read(name, reg)
    assert got["rows"] == kept
    assert [d["row"] for d in got["dropped"]] == dropped
    assert all(f"'{key}' is false" in d["reason"] and "undesirable" in d["reason"] for d in got["dropped"])


def test_kto_label_must_be_a_boolean(write, reg):
    path = write("kto.jsonl", json.dumps({"messages": conv(("user", "q"), ("assistant", "a")), "label": "maybe"}) + "\n")
    with pytest.raises(UserError, match=r"kto\.jsonl, row 1, field 'label': 'label' must be true or false"):
        data.read_records(path, None, None, reg)


# -- multimodal --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, field", [("mllm_sharegpt.json", "messages[0].content"),
                                         ("openai_vision.jsonl", "messages[0].content[1].type")])
def test_multimodal_is_refused_unless_media_are_dropped(reg, name, field):
    refusal(name, reg, "row 1", f"field '{field}'", "multimodal", "drop_media=true")
    got = read(name, reg, drop_media=True)
    user = got["records"][0]["messages"][0]["content"]
    assert "<image>" not in user and user in ("What is in this picture?", "What animal is this?")
    assert got["warnings"] and all(w["row"] == 1 for w in got["warnings"])


def test_media_list_alone_is_refused_naming_the_field(write, reg):
    row = {"instruction": "Describe it.", "output": "A cat.", "images": ["a.png", "b.png"]}
    path = write("media.json", json.dumps([row]))
    with pytest.raises(UserError, match=r"media\.json, row 1, field 'images': multimodal record: it refers to 2 image"):
        data.read_records(path, None, None, reg)
    assert data.read_records(path, None, {"drop_media": True}, reg)["records"][0]["messages"][-1]["content"] == "A cat."


# -- tool calling ------------------------------------------------------------------------------------
def test_tool_calls_are_read_into_tool_turns(reg):
    got = read("sharegpt_toolcall.json", reg)
    record = got["records"][0]
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert json.loads(record["messages"][1]["tool_calls"]) == [{"name": "multiply", "arguments": {"a": 6, "b": 7}}]
    assert json.loads(record["tools"])[0]["name"] == "multiply"
    got = read("openai_tools.jsonl", reg)
    record = got["records"][0]
    assert json.loads(record["messages"][1]["tool_calls"]) == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert record["messages"][2] == {**record["messages"][2], "role": "tool", "content": "18 C, sunny"}


@pytest.mark.parametrize("name, field", [("sharegpt_toolcall.json", "tools"), ("openai_tools.jsonl", "tools")])
def test_tool_data_is_refused_for_a_template_without_tools(reg, tokenizer, name, field):
    assert not data.supports_tools(tokenizer)  # the embedded SmolLM2 template has no tool roles
    report = data.check_file(SAMPLES / name, tokenizer=tokenizer, registry=reg, model_name="embedded")
    assert not report["ok"]
    assert f"{name}, row 1, field '{field}': tool-calling data needs a model whose chat template supports tools" \
        in report["error"]
    with pytest.raises(UserError, match="tool-calling data needs a model whose chat template supports tools"):
        data.prepare(SAMPLES / name, tokenizer, 256, registry=reg)


TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m.get('tool_calls') %}"
    "{% for c in m['tool_calls'] %}<tool_call>{{ c['function'] | tojson }}</tool_call>{% endfor %}"
    "{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_tool_data_trains_the_calls_and_answers_with_a_tool_template(reg, tokenizer):
    tool_tokenizer = copy.deepcopy(tokenizer)
    tool_tokenizer.chat_template = TOOL_TEMPLATE
    assert data.supports_tools(tool_tokenizer)
    prepared = data.prepare(SAMPLES / "sharegpt_toolcall.json", tool_tokenizer, 512, val_fraction=0, registry=reg)
    ex = prepared.train[0]
    text = tool_tokenizer.decode(ex["input_ids"])
    trained = tool_tokenizer.decode([t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX])
    assert "Tools: " in text and '"multiply"' in text  # the schemas reach the template
    assert '<tool_call>{"arguments": {"a": 6, "b": 7}, "name": "multiply"}</tool_call>' in trained.replace("\n", "") \
        or '<tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>' in trained
    assert "6 times 7 is 42." in trained
    assert "42}" not in trained.replace("6 times 7 is 42.", "")  # the tool's result is input, not learned


# -- placeholders ------------------------------------------------------------------------------------
def test_placeholders_are_warned_with_rows_and_filled_on_request(reg):
    got = read("identity_placeholders.json", reg)
    assert [w["row"] for w in got["warnings"]] == [1, 2]
    assert "{{author}}, {{name}}" in got["warnings"][0]["message"] and "placeholders" in got["warnings"][0]["message"]
    filled = read("identity_placeholders.json", reg, placeholders="name=Tutor; author=the TuneLab class")
    assert filled["warnings"] == []
    assert filled["records"][1]["messages"][-1]["content"] == "I am Tutor, made by the TuneLab class."
    partly = read("identity_placeholders.json", reg, placeholders='{"name": "Tutor"}')
    assert [w["row"] for w in partly["warnings"]] == [1, 2] and "{{author}}" in partly["warnings"][0]["message"]
    assert "{{name}}" not in partly["warnings"][0]["message"]


def test_bad_placeholders_option_is_a_clear_error(reg):
    with pytest.raises(UserError, match="placeholders: 'name' is not name=value"):
        read("identity_placeholders.json", reg, placeholders="name")


# -- prompt/completion -------------------------------------------------------------------------------
def test_prompt_completion_strings(reg):
    got = read("trl_prompt_completion.jsonl", reg)
    assert plain(got["records"][0]["messages"]) == conv(("user", "The chemical symbol of gold is"),
                                                        ("assistant", " Au."))


# -- every sample through the CLI: a report, or one line and exit 2 ----------------------------------------
def cli(*args):
    return subprocess.run([sys.executable, "-m", "tunelab", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "TUNELAB_LOAD_PLUGINS": ""})


@pytest.mark.parametrize("name", sorted(p.name for p in SAMPLES.glob("*.json*")))
def test_data_check_on_every_sample(name):
    result = cli("data", "check", SAMPLES / name, "--no-tokens", "--json")
    if result.returncode == 0:
        report = json.loads(result.stdout)
        assert report["ok"] and report["kept"] + len(report["dropped"]) == report["records"]
    else:
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {name}, row 1, field '"), result.stderr
        assert "--param" in lines[0]  # the fix is named


def test_v1_tools_part_developer_role_reasoning_and_conversation_key(write, reg):
    rows = [{"messages": [{"role": "system", "content": [{"type": "tools", "value": json.dumps([{"name": "f"}])}]},
                          {"role": "developer", "content": "Be brief."},
                          {"role": "user", "content": [{"type": "text", "value": "q"}]},
                          {"role": "assistant", "content": [{"type": "reasoning", "value": "think"},
                                                            {"type": "tool_call", "value": '{"name": "f", "arguments": {}}'}]},
                          {"role": "tool", "content": "r"}, {"role": "assistant", "content": "done"}]},
            {"conversation": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}]
    path = write("v1.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert data.detect_format(path, reg) == "messages"
    got = data.read_records(path, None, None, reg)
    first = plain(got["records"][0]["messages"])
    assert [m["role"] for m in first] == ["system", "user", "assistant", "tool", "assistant"]
    assert first[0]["content"] == "Be brief."  # the tools-only system turn became the record's tools
    assert json.loads(got["records"][0]["tools"]) == [{"name": "f"}]
    assert first[2]["content"] == "<think>\nthink\n</think>\n\n" and json.loads(first[2]["tool_calls"])[0]["name"] == "f"
    assert plain(got["records"][1]["messages"]) == conv(("user", "hi"), ("assistant", "hello"))
    assert got["warnings"] == [{"row": 1, "message": "reasoning parts kept as <think> ... </think> before the answer"}]


def test_dolly_layout_reads_as_alpaca(write, reg):
    path = write("dolly.jsonl", json.dumps({"instruction": "Summarise.", "context": "A long text.",
                                            "response": "Short.", "category": "summarization"}) + "\n")
    assert data.detect_format(path, reg) == "alpaca"
    got = data.read_records(path, None, None, reg)
    assert got["records"][0]["messages"] == conv(("user", "Summarise.\n\nA long text."), ("assistant", "Short."))
