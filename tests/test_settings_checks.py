"""Every setting is checked where it is typed, by one rule: ``tunelab.core.config.value_problem`` / ``problems``.

The config file, ``--set`` and the pages' widgets all ask it, so a value is refused everywhere with the
same reason; valid plans that will probably disappoint (tiny data, examples cut, a batch bigger than the
data) get cautions. Pages are driven with AppTest on the tiny model.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from tunelab.core.config import RunConfig, apply_overrides, cautions, problems, value_problem  # noqa: E402
from tunelab.core.errors import UserError  # noqa: E402
from helpers import open_page

APP = str(REPO / "streamlit_app.py")
TIMEOUT = 90


# -- the one rule -----------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, words", [
    ("epochs", 0, ["epochs = 0", "out of range", "0 trains nothing"]),
    ("batch_size", 0, ["batch_size = 0", "at least one example"]),
    ("lr", -1, ["lr = -1", "wrong way"]),
    ("max_length", 10**9, ["max_length = 1000000000", "32,768"]),
    ("max_steps", 99999999999, ["max_steps = 99999999999", "10 million"]),
    ("keep_checkpoints", 0, ["keep_checkpoints = 0", "newest checkpoint"]),
    ("epochs", float("nan"), ["epochs = nan"]),
    ("batch_size", "four", ["batch_size must be a whole number, got 'four'"]),
    ("batch_size", 2.5, ["batch_size must be a whole number"]),
    ("method", "qlora", ["method must be one of full, lora"]),
    ("learning_rate", 1e-4, ["unknown key 'learning_rate'", "did you mean lr?"]),
])
def test_a_bad_value_is_refused_with_its_reason(key, value, words):
    problem = value_problem(key, value)
    assert problem, (key, value)
    for word in words:
        assert word in problem, (word, problem)


@pytest.mark.parametrize("key, value", [("epochs", 0.5), ("batch_size", "8"), ("lr", "1e-4"), ("max_steps", 0),
                                        ("keep_checkpoints", 3), ("method", "lora"), ("max_length", 64)])
def test_a_good_value_passes(key, value):
    assert value_problem(key, value) is None


def test_problems_lists_every_key_and_validate_says_the_same():
    found = problems({"epochs": 0, "batch_size": 0, "lora": {"r": 0}, "data": {"path": ""}})
    assert set(found) == {"epochs", "batch_size", "lora.r", "data.path"}
    assert problems(RunConfig()) == {}
    cfg = RunConfig()
    cfg.epochs = 0.0  # set behind the rules' back: validate asks the same function
    with pytest.raises(UserError) as info:
        cfg.validate("my.yaml")
    assert str(info.value) == "my.yaml: " + problems(cfg)["epochs"]


def test_set_names_the_key_and_the_value_as_typed():
    with pytest.raises(UserError, match=r"^--set epochs=0: epochs = 0.0 is out of range \[0.01, 1000\]: it counts"):
        apply_overrides(RunConfig(), ["epochs=0"])
    assert apply_overrides(RunConfig(), ["keep_checkpoints=3"]).keep_checkpoints == 3


@pytest.mark.parametrize("item, key", [("epochs=0", "epochs"), ("batch_size=0", "batch_size"), ("lr=-1", "lr"),
                                       ("max_length=99999999", "max_length"), ("max_steps=99999999999", "max_steps")])
def test_the_cli_exits_2_naming_the_key(item, key, tmp_path, capsys):
    from tunelab.core.__main__ import main

    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-4\n")
    assert main(["train", str(config), "--set", item]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --set {item}: {key} = "), err
    assert not (tmp_path / "runs").exists()


def test_the_cli_refusal_is_one_line_from_a_real_process(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("lr: 1e-4\n")
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", str(config), "--set", "epochs=0"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TUNELAB_RUNS_DIR=str(tmp_path / "runs")))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "epochs = 0.0 is out of range" in done.stderr
    assert "Traceback" not in done.stderr


def test_cautions_for_tiny_data_and_cut_examples():
    cfg = RunConfig.from_dict({"max_length": 64})
    said = cautions(cfg, records=2, over_max_length=2, median_tokens=168, p95_tokens=190)
    assert any(s.startswith("Only 2 examples") for s in said), said
    assert any("2 of 2 examples (100%) are longer than max_length = 64" in s and "max_length = 190" in s
               for s in said), said
    assert cautions(RunConfig(), records=300, over_max_length=0) == []


# -- the pages ask the same rule -----------------------------------------------------------------------

def errors(at) -> list[str]:
    return [e.value for e in at.error]


def planned(at, key):
    """A key of the session's planned run (the session holds it as a partial dict until a page changes it)."""
    return RunConfig.from_dict(at.session_state["plan"]).get(key)


def test_set_up_refuses_a_bad_value_beside_the_box_and_keeps_the_plan(runs_dir, tiny_model):
    at = open_page("set_up_training", model_name=tiny_model, plan={"model": tiny_model})
    at.number_input(key="cfg.epochs").set_value(0).run()
    assert not at.exception
    assert any("Not used: epochs = 0.0 is out of range" in e and "The run keeps epochs = 2.0" in e
               for e in errors(at)), errors(at)
    assert planned(at, "epochs") == 2.0
    at.number_input(key="cfg.max_steps").set_value(99999999999).run()
    assert any("max_steps = 99999999999" in e and "The run keeps max_steps = 0" in e for e in errors(at))
    assert planned(at, "max_steps") == 0
    at.number_input(key="cfg.epochs").set_value(3.0).run()  # a good value goes in, and its error goes
    assert planned(at, "epochs") == 3.0
    assert not any("epochs = " in e for e in errors(at))
    at.number_input(key="cfg.keep_checkpoints").set_value(2).run()
    assert planned(at, "keep_checkpoints") == 2


def test_set_up_warns_when_max_length_cuts_the_examples(runs_dir, tiny_model):
    at = open_page("set_up_training", model_name=tiny_model, plan={"model": tiny_model})
    assert not any("longer than max_length" in w.value for w in at.warning)  # 256 keeps the lesson set whole
    at.select_slider(key="cfg.max_length").set_value(64).run()
    cut = [w.value for w in at.warning if "longer than max_length = 64" in w.value]
    assert cut and "(100%)" in cut[0], [w.value for w in at.warning]


def test_a_two_record_data_set_is_cautioned_before_start(runs_dir, tiny_model, tmp_path):
    rows = [{"instruction": "What is 1 plus 1?", "input": "", "output": "2."},
            {"instruction": "What is 2 plus 2?", "input": "", "output": "4."}]
    data = tmp_path / "two.json"
    data.write_text(json.dumps(rows))
    plan = {"model": tiny_model, "data": {"path": str(data), "format": "alpaca"}}
    for page in ("set_up_training", "fine_tune"):
        at = open_page(page, model_name=tiny_model, plan=plan)
        assert any(w.value.startswith("Only 2 examples") for w in at.warning), (page, [w.value for w in at.warning])


def test_fine_tune_quick_try_refuses_with_the_reason(runs_dir, tiny_model):
    at = open_page("fine_tune", model_name=tiny_model, plan={"model": tiny_model, "max_steps": 2})
    at.number_input(key="ft.max_steps").set_value(99999999999).run()
    assert any("max_steps = 99999999999 is out of range" in e and "The run keeps max_steps = 2" in e
               for e in errors(at)), errors(at)
    assert planned(at, "max_steps") == 2  # what is shown as refused is not what runs
    at.number_input(key="ft.batch_size").set_value(0).run()
    assert any("batch_size = 0" in e for e in errors(at))
    assert planned(at, "batch_size") == 8


def test_evaluate_refuses_zero_samples_and_picks_the_held_out_file(runs_dir, tiny_model, tmp_path):
    import shutil

    from tunelab.core import runs

    run_dir = runs.create_run(RunConfig.from_dict({"model": tiny_model}), run_dir=runs_dir / "done")
    shutil.copytree(tiny_model, run_dir / "final")
    runs.write_status(run_dir, state="finished", step=2, total_steps=2, pid=None)
    upload = tmp_path / "mine.json"
    upload.write_text("[]")
    at = open_page("evaluate", uploads=[str(upload)])
    held_out = at.selectbox(key="eval.data")
    assert held_out.value == "data/science_tutor_heldout.alpaca.json"
    assert str(upload) in held_out.options[-1] or any("mine.json" in o for o in held_out.options)
    at.number_input(key="eval.limit").set_value(0).run()
    assert any("Samples = 0" in e and "at least 1" in e for e in errors(at)), errors(at)
    assert at.button(key="eval.go").disabled


def test_csv_columns_are_picked_from_the_header(tmp_path):
    from tunelab.core.backends.local import LocalEngine

    table = tmp_path / "qa.csv"
    table.write_text("question,answer,persona\nWhy?,Because.,tutor\n")
    assert LocalEngine({"standby": False}).table_columns(str(table)) == ["question", "answer", "persona"]
    assert LocalEngine({"standby": False}).table_columns(str(REPO / "data" / "science_tutor_train.alpaca.json")) == []

    def script():
        import streamlit as st

        from dashboard.common import param_form

        specs = [{"name": "prompt_column", "type": "str", "default": "prompt", "help": "Asks."},
                 {"name": "response_column", "type": "str", "default": "response", "help": "Answers."},
                 {"name": "system_column", "type": "str", "default": "", "help": "Optional."}]
        columns = ["question", "answer", "persona"]
        st.session_state["values"] = param_form(specs, key="t", picks={s["name"]: columns for s in specs})

    at = AppTest.from_function(script, default_timeout=TIMEOUT).run()
    assert not at.exception and not at.text_input  # picks, not free text
    boxes = {s.key: s for s in at.selectbox}
    assert boxes["t.prompt_column"].options == ["question", "answer", "persona"]
    assert boxes["t.system_column"].options[0] == "(none)"  # optional: none is a choice, and the default
    assert at.session_state["values"]["system_column"] == ""
    boxes["t.response_column"].set_value("answer").run()
    assert at.session_state["values"]["response_column"] == "answer"


@pytest.mark.parametrize("limit", ["0", "-3", "10001"])
def test_eval_limit_is_checked_by_the_rule_the_page_uses(limit, tmp_path, tiny_model, capsys):
    """`eval --limit 0` once meant "all of them" (the engine read 0 as no limit) while the page refused it."""
    import shutil

    from tunelab.core import evaluate, runs
    from tunelab.core.__main__ import main
    from tunelab.core.config import eval_samples_problem

    run_dir = runs.create_run(RunConfig.from_dict({"model": tiny_model}), run_dir=tmp_path / "runs" / "done")
    shutil.copytree(tiny_model, run_dir / "final")
    runs.write_status(run_dir, state="finished", step=2, total_steps=2, pid=None)
    assert main(["eval", str(run_dir), "--limit", limit]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"error: {eval_samples_problem(int(limit), '--limit')}", err
    with pytest.raises(UserError, match="at least 1 held-out example"):
        evaluate.evaluate_run(run_dir, limit=int(limit))
    assert not (run_dir / "eval").exists()
    assert eval_samples_problem(8) is None and eval_samples_problem(8.0) is None
    assert all(eval_samples_problem(v) for v in (True, 2.5, float("nan"), float("inf"), None, "8"))
