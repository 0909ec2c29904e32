"""Tests of tunelab-science-extras, with TuneLab's authoring kit (``tunelab.core.testing``).

Run from a TuneLab checkout (``python -m pytest examples/tunelab-science-extras/tests``), or in any venv where
TuneLab and this package are installed (``pytest tests``): ``tests/test_packaging.py`` does the latter.
"""

import json
import math
from pathlib import Path

import pytest

import tunelab_science_extras as plugin
from tunelab_science_extras.qa_jsonl import QA_JSONL
from tunelab_science_extras.readability import READABILITY, flesch_reading_ease, syllables
from tunelab_science_extras.typical import TYPICAL_P

pytest_plugins = ["tunelab.core.testing"]

DATA = Path(__file__).parent / "data" / "photosynthesis.qa.jsonl"


def test_registers_one_of_each_kind_next_to_the_builtins(register_plugin):
    with register_plugin(plugin, name="tunelab-science-extras") as registry:
        assert registry.owner("data_formats", "qa_jsonl") == "tunelab-science-extras"
        assert registry.owner("samplers", "typical_p") == "tunelab-science-extras"
        assert registry.owner("evaluators", "readability") == "tunelab-science-extras"
        info = {p["name"]: p for p in registry.listing()}["tunelab-science-extras"]
        assert info["status"] == "loaded" and not info["clashes"]
        assert info["hooks"] == ["register_data_formats", "register_evaluators", "register_samplers"]


# -- qa_jsonl -------------------------------------------------------------------------------------

def test_qa_jsonl_contract_and_records(check_data_format):
    dataset = check_data_format(QA_JSONL, DATA)
    assert len(dataset) == 4
    assert dataset[0]["messages"] == [
        {"role": "user", "content": "What gas do plants take in for photosynthesis?"},
        {"role": "assistant", "content": "Plants take in carbon dioxide from the air through small pores in their "
                                         "leaves."}]
    # a context passage comes before the question
    assert dataset[2]["messages"][0]["content"].startswith("Photosynthesis turns light energy")
    assert dataset[2]["messages"][0]["content"].endswith("Question: What kind of energy does photosynthesis store?")


def test_qa_jsonl_params(check_data_format):
    dataset = check_data_format(QA_JSONL, DATA, system_prompt="You are a tutor.", include_context=False)
    assert dataset[2]["messages"][0] == {"role": "system", "content": "You are a tutor."}
    assert dataset[2]["messages"][1]["content"] == "What kind of energy does photosynthesis store?"


def test_qa_jsonl_is_detected_by_tuneLab(register_plugin):
    from tunelab.core.data import detect_format, load_records

    with register_plugin(plugin) as registry:
        assert detect_format(DATA, registry) == "qa_jsonl"
        dataset, name = load_records(DATA, registry=registry)
        assert name == "qa_jsonl" and len(dataset) == 4


def test_qa_jsonl_sniff_says_no_to_other_files():
    assert not QA_JSONL.sniff("x.jsonl", '{"instruction": "a", "output": "b"}')
    assert not QA_JSONL.sniff("x.txt", "question answer")


def test_qa_jsonl_errors_name_the_row_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "ok?", "answer": "yes"},
        {"question": "no answer"},
        {"question": "", "answer": "empty question"},
    ]))
    with pytest.raises(ValueError, match=r"bad\.jsonl, row 2, field 'answer': 'answer' is missing") as info:
        QA_JSONL.load(str(path))
    assert "1 more bad rows" in str(info.value)
    assert [(e["row"], e["field"]) for e in info.value.errors] == [(2, "answer"), (3, "question")]
    path.write_text('{"question": "a", "answer": "b"}\n{"question": \n')
    with pytest.raises(ValueError, match=r"row 2: invalid JSON"):
        QA_JSONL.load(str(path))


# -- typical_p ------------------------------------------------------------------------------------

def test_typical_p_contract_and_generation(check_sampler, tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    kwargs, answer = check_sampler(TYPICAL_P, model, tokenizer, typical_p=0.5)
    assert kwargs == {"do_sample": True, "typical_p": 0.5, "temperature": 1.0}
    assert isinstance(answer, str)


def test_typical_p_cuts_the_tail_on_the_chart(register_plugin, tiny_model_and_tokenizer):
    from tunelab.core.generate import next_token_distribution

    model, tokenizer = tiny_model_and_tokenizer
    with register_plugin(plugin) as registry:
        everything = next_token_distribution(model, tokenizer, "Hi", "typical_p", {"typical_p": 1.0},
                                             registry=registry)
        typical = next_token_distribution(model, tokenizer, "Hi", "typical_p", {"typical_p": 0.2},
                                          registry=registry)
    assert typical["kept"] < everything["kept"]


def test_typical_p_help_explains_the_idea():
    help_text = TYPICAL_P.params[0]["help"]
    assert "entropy" in help_text and "surprise" in help_text


# -- readability ----------------------------------------------------------------------------------

@pytest.mark.parametrize("word, expected", [("the", 1), ("cat", 1), ("table", 2), ("make", 1), ("water", 2),
                                            ("photosynthesis", 5), ("free", 1), ("energy", 3)])
def test_syllables(word, expected):
    assert syllables(word) == expected


def test_flesch_known_value():
    # 6 words, 1 sentence, 6 syllables: 206.835 - 1.015 * 6 - 84.6 * 1
    assert flesch_reading_ease("The cat sat on the mat.") == pytest.approx(116.145)
    easy = flesch_reading_ease("Plants need light. They make food.")
    hard = flesch_reading_ease("Photosynthetic organisms transform electromagnetic radiation into chemical "
                               "potential energy through complicated biochemical pathways.")
    assert easy > 80 > 20 > hard
    assert math.isnan(flesch_reading_ease("", min_words=1))


def test_readability_contract(check_evaluator):
    result = check_evaluator(READABILITY)
    assert set(result) == {"readability", "reference_readability", "per_sample"}
    first, short, empty = result["per_sample"]
    assert first > 0 and math.isnan(short) is False and math.isnan(empty)  # "They need it." has 3 words
    result = check_evaluator(READABILITY, min_words=4)
    assert math.isnan(result["per_sample"][1])  # too short to score: left out of the average
    assert result["readability"] == pytest.approx(result["per_sample"][0])
