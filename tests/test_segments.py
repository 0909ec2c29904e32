"""``segments`` records (raw text pieces, each trained or not) and the built-in ``input_output`` format
that reads Axolotl's template-free files: the token mask, data check, training, the Prepare-data page."""

import json

import pytest

from conftest import REPO
from tunelab.core import data
from tunelab.core.data import IGNORE_INDEX
from tunelab.core.registry import Registry

AXOLOTL = REPO / "tests" / "data" / "other-tools" / "axolotl_input_output.jsonl"


def expected(segments, tokenizer, train_all=False):
    """What the mask must be: each piece tokenized on its own, its tokens trained when its label is true."""
    ids, labels = [], []
    for segment in segments:
        piece = tokenizer(segment["text"], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if segment["label"] or train_all else [IGNORE_INDEX] * len(piece)
    return ids, labels


def test_the_file_is_detected_and_read_with_its_dropped_row(registry):
    assert data.detect_format(AXOLOTL, registry) == "input_output"
    read = data.read_records(AXOLOTL, registry=registry)
    assert read["format"] == "input_output" and read["rows"] == [1, 2, 4]
    assert read["dropped"] == [{"row": 3, "reason": "no segment has label true and some text: nothing to train"}]
    assert read["records"][1]["segments"][1] == {"text": "bonjour", "label": True}


def test_the_token_mask_trains_exactly_the_labelled_pieces(registry, tokenizer):
    records = data.read_records(AXOLOTL, registry=registry)["records"]
    for record in records:
        (example,) = data.encode_record(record, tokenizer, 512)
        ids, labels = expected(record["segments"], tokenizer)
        assert example["input_ids"] == ids and example["labels"] == labels and not example["truncated"]
        trained = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
        assert trained == "".join(s["text"] for s in record["segments"] if s["label"])
    # no chat template: the text is the pieces, as written (the EOS written into the text is one token)
    first = data.encode_record(records[0], tokenizer, 512)[0]
    assert tokenizer.decode(first["input_ids"]) == "".join(s["text"] for s in records[0]["segments"])
    assert first["labels"][-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert "<|im_start|>" not in tokenizer.decode(first["input_ids"])


def test_train_on_prompt_and_truncation(registry, tokenizer):
    record = data.read_records(AXOLOTL, registry=registry)["records"][1]
    (everything,) = data.encode_record(record, tokenizer, 512, train_on_prompt=True)
    assert IGNORE_INDEX not in everything["labels"]
    (cut,) = data.encode_record(record, tokenizer, 6)
    full, _ = expected(record["segments"], tokenizer)
    assert cut["input_ids"] == full[:6] and cut["truncated"] and cut["length"] == len(full)


@pytest.mark.parametrize("line, field, message", [
    ('{"segments": [{"label": "yes", "text": "x"}]}', "segments[0].label", "must be true (train on this text)"),
    ('{"segments": [{"label": true}]}', "segments[0].text", "got missing"),
    ('{"segments": [{"label": true, "text": null}]}', "segments[0].text", "got null"),
    ('{"segments": [{"label": true, "text": 3}]}', "segments[0].text", "got int"),
    ('{"segments": []}', "segments", "an empty list"),
    ('{"segments": ["text"]}', "segments[0]", "each segment must be an object"),
])
def test_bad_segments_are_refused_with_row_and_field(write, registry, line, field, message):
    path = write("bad.jsonl", '{"segments": [{"label": true, "text": "fine"}]}\n' + line + "\n")
    report = data.check_file(path, "input_output", registry=registry)
    assert not report["ok"]
    (error,) = report["errors"]
    assert (error["row"], error["field"]) == (2, field) and message in error["message"], error


def test_data_check_counts_the_kind_and_measures_tokens(registry, tokenizer):
    report = data.check_file(AXOLOTL, tokenizer=tokenizer, registry=registry)
    assert report["ok"] and report["kinds"] == {"segments": 3} and report["kept"] == 3 and report["records"] == 4
    assert report["counts"]["dropped"] == 1
    records = data.read_records(AXOLOTL, registry=registry)["records"]
    lengths = [len(expected(r["segments"], tokenizer)[0]) for r in records]
    assert report["token_lengths"]["values"] == lengths


def test_two_training_steps_on_it(tiny_model, tmp_path, registry):
    from tunelab.core import runs, train
    from tunelab.core.config import RunConfig

    cfg = RunConfig.from_dict({"model": tiny_model, "data": {"path": str(AXOLOTL), "val_fraction": 0.0},
                               "max_steps": 2, "batch_size": 2, "max_length": 64, "eval_every": 0})
    result = train.train(cfg, tmp_path / "run", registry=registry)
    assert result["state"] == "finished", result
    status = runs.read_status(tmp_path / "run")
    assert status["data"]["format"] == "input_output" and status["data"]["records"] == 3
    losses = [r["loss"] for r in runs.read_metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


def test_the_kit_checks_the_format_and_its_stream():
    from tunelab.core.testing import check_data_format

    fmt = Registry(load_external=False).items("data_formats")["input_output"]
    dataset = check_data_format(fmt, AXOLOTL)
    assert len(dataset) == 3


def test_prepare_data_page_shows_the_pieces_and_the_mask(tiny_model, runs_dir):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=90)
    at.session_state["model_name"] = tiny_model
    at.run()
    at.switch_page("dashboard/prepare_data.py").run()
    at.radio(key="data.source").set_value("Upload your own file").run()
    at.file_uploader(key="data.upload").set_value((AXOLOTL.name, AXOLOTL.read_bytes(), "application/jsonl")).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    assert any(s.value == "input_output" for s in at.selectbox if (s.key or "").startswith("data.format."))
    assert at.metric[1].value == "segments"
    pieces = next(h.value for h in at.html if "white-space:pre-wrap" in h.value)
    assert "Question: Why is the sky blue?" in pieces and "#bbf7d0" in pieces and "#eeeeee" in pieces
    masked = at.html[-1].value
    assert "line-through" in masked and "#bbf7d0" in masked  # the question masked, the answer trained
    assert json.loads(json.dumps(at.session_state["plan"]["data"]))["format"] == "input_output"
