"""The dashboard's pages render without an exception, show their key controls, and draw the right charts.

Pages run through the real entry point (st.navigation) with AppTest; the model is the tiny random
one from conftest, so every page is fast and offline.
"""

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from dashboard import charts  # noqa: E402
from no_engine import without_engine  # noqa: E402
from helpers import open_page

APP = str(REPO / "streamlit_app.py")
TIMEOUT = 60


def figures(at) -> list[dict]:
    """Each st.plotly_chart's figure as plotly JSON."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def labels(widgets) -> list[str]:
    return [w.label for w in widgets]


# -- chart builders ----------------------------------------------------------------------------

def test_token_length_histogram_marks_the_cut():
    fig = charts.token_length_histogram([10, 20, 30, 400], max_length=256)
    assert [t.type for t in fig.data] == ["histogram"]
    assert list(fig.data[0].x) == [10, 20, 30, 400]
    (line,) = fig.layout.shapes
    assert line.x0 == line.x1 == 256
    assert "1 cut" in fig.layout.annotations[0].text


def test_lr_schedule_chart_has_one_line_and_warmup_band():
    fig = charts.lr_schedule_chart([1e-5, 2e-5, 2e-5, 1e-5], warmup_steps=2)
    assert [t.type for t in fig.data] == ["scatter"]
    assert list(fig.data[0].x) == [1, 2, 3, 4]
    assert fig.layout.shapes[0].type == "rect"


def test_memory_bar_stacks_the_five_parts_against_the_machine():
    gib = charts.GIB
    parts = {"weights": 1 * gib, "gradients": 1 * gib, "optimizer": 2 * gib, "activations": gib, "logits": gib,
             "total": 5 * gib}
    fig = charts.memory_bar(parts, available=8 * gib, verdict="fits")
    assert [t.name for t in fig.data] == [charts.MEMORY_LABELS[p] for p in charts.MEMORY_PARTS]
    assert fig.layout.barmode == "stack"
    assert sorted(s.x0 for s in fig.layout.shapes) == [5.0, 8.0]  # the peak and this machine
    assert "fits" in fig.layout.title.text


def test_memory_comparison_one_bar_per_setup():
    gib = charts.GIB
    fig = charts.memory_comparison({"basic": {"weights": 2 * gib, "total": 2 * gib},
                                    "lora": {"weights": gib, "total": gib}}, available=4 * gib)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == len(charts.MEMORY_PARTS)
    assert list(bars[0].x) == ["basic", "lora"] and list(bars[0].y) == [2.0, 1.0]


# -- shared widgets ------------------------------------------------------------------------------

def test_param_form_builds_a_widget_per_spec():
    def script():
        import streamlit as st

        from dashboard.common import param_form

        specs = [{"name": "temperature", "type": "float", "default": 0.7, "min": 0.0, "max": 2.0, "help": "How random."},
                 {"name": "top_k", "type": "int", "default": 50, "min": 1, "help": "Keep the k best."},
                 {"name": "strict", "type": "bool", "default": True, "help": "Refuse bad rows."},
                 {"name": "split", "type": "choice", "default": "line", "choices": ["paragraph", "line"], "help": "Cut."},
                 {"name": "column", "type": "str", "default": "prompt", "help": "Which column."}]
        st.session_state["values"] = param_form(specs, key="t")

    at = AppTest.from_function(script, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    assert at.slider[0].label == "Temperature" and at.slider[0].help == "How random."
    assert at.number_input[0].value == 50
    assert at.toggle[0].value is True
    assert at.selectbox[0].value == "line" and at.text_input[0].value == "prompt"
    assert at.session_state["values"] == {"temperature": 0.7, "top_k": 50, "strict": True, "split": "line",
                                          "column": "prompt"}


def test_a_rewritten_model_folder_is_loaded_again(tiny_model, tmp_path):
    """A run folder's final/ written anew (a resumed run finishing again) is not served from the cache."""
    import shutil

    shutil.copytree(tiny_model, tmp_path / "run" / "final")

    def script():
        import os
        from pathlib import Path

        import streamlit as st

        from dashboard import state

        run = st.session_state["run"]
        engine = state.engine()  # the engine the pages name models to; it holds them, bounded
        first = engine.load(run)
        st.session_state["cached"] = engine.load(run) is first
        config = Path(run) / "final" / "config.json"
        later = config.stat().st_mtime_ns + 10**9
        os.utime(config, ns=(later, later))  # as if save_final had written it again
        st.session_state["reloaded"] = engine.load(run) is not first

    at = AppTest.from_function(script, default_timeout=TIMEOUT)
    at.session_state["run"] = str(tmp_path / "run")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["cached"] and at.session_state["reloaded"]


def test_token_chips_escape_html():
    from dashboard.common import masked_tokens_html, token_chips_html

    assert "&lt;b&gt;" in token_chips_html(["<b>"], [1])
    html = masked_tokens_html(["Q", "A"], [-100, 7])
    assert html.index("line-through") < html.index("#bbf7d0")


# -- pages -------------------------------------------------------------------------------------------

def test_navigation_lists_all_nine_pages():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    for page in ("welcome", "load_model", "prepare_data", "set_up_training", "fine_tune", "generate", "evaluate",
                 "memory", "plugin_shelf"):
        at.switch_page(f"dashboard/{page}.py")  # raises if st.navigation does not register it


def test_welcome(monkeypatch):
    at = open_page("welcome")
    assert at.title[0].value == "TuneLab"
    assert len(at.get("page_link")) >= 8
    assert at.button[0].label.startswith("Quick start")
    assert "CPU cores" in [m.label for m in at.metric]


def test_load_model_shows_the_model(tiny_model):
    at = open_page("load_model", model_name=tiny_model)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Layers"] == "2" and metrics["Hidden size"] == "64"
    assert metrics["dtype"] == "float32"
    assert "Where from?" in labels(at.radio)
    chips = " ".join(h.value for h in at.html)
    assert "Fine" in chips  # the tokenizer playground's chips
    assert any("<|im_start|>" in c.value for c in at.code)  # the chat template, rendered


def test_load_model_before_answer(tiny_model):
    at = open_page("load_model", model_name=tiny_model)
    at.slider(key="load.max_new_tokens").set_value(16)
    next(b for b in at.button if b.label == "Ask the base model").click().run()
    assert not at.exception and not at.error
    assert isinstance(at.session_state["before_answer"], str)


def test_load_model_bad_folder_is_one_clear_error(tmp_path):
    at = open_page("load_model")
    at.radio(key="load.source").set_value("Local folder").run()
    at.text_input[0].input(str(tmp_path / "nope")).run()
    next(b for b in at.button if b.label == "Load model").click().run()
    assert not at.exception
    assert "does not exist" in at.error[0].value


def test_prepare_data_report_histogram_and_masking(tiny_model):
    at = open_page("prepare_data", model_name=tiny_model)
    assert at.selectbox(key="data.format.science_tutor_train.alpaca.json").value == "alpaca"
    assert int(at.metric[0].value.replace(",", "")) > 0  # records
    (fig,) = figures(at)
    assert [t["type"] for t in fig["data"]] == ["histogram"]
    assert fig["layout"]["shapes"][0]["x0"] == 256  # the max_length cut
    masked = at.html[-1].value
    assert "line-through" in masked and "#bbf7d0" in masked  # prompt struck, reply green
    assert at.session_state["plan"]["data"]["format"] == "alpaca"


def captions(at) -> list[str]:
    return [c.value for c in at.caption]


def test_set_up_training_schedule_memory_and_yaml(tiny_model):
    at = open_page("set_up_training", model_name=tiny_model, plan={"model": tiny_model}, tokens_per_s=1000.0,
                   data_summary={"median_tokens": 50})
    assert at.segmented_control(key="cfg.method").value == "full"
    for key in ("cfg.lr", "cfg.batch_size", "cfg.grad_accum", "cfg.max_length"):
        at.select_slider(key=key)
    lr_fig, mem_fig = figures(at)
    assert [t["type"] for t in lr_fig["data"]] == ["scatter"]
    assert [t["name"] for t in mem_fig["data"]] == [charts.MEMORY_LABELS[p] for p in charts.MEMORY_PARTS]
    yaml_block = next(c.value for c in at.code if c.language == "yaml")
    assert "lr:" in yaml_block and "method: full" in yaml_block
    assert any("--set" in c.value or "python -m tunelab train" in c.value for c in at.code if c.language == "bash")
    # the page counts the planned data itself (lesson 2 not needed); the speed is lesson 7's measured step: rough
    times = [c for c in captions(at) if c.startswith("Estimated time: **")]
    assert times and re.match(r"Estimated time: \*\*\d+ s\*\* — \d+ steps × 8 examples × ~\d+ tokens", times[0]), times
    assert "How sure: rough" in times[0], times

    at.segmented_control(key="cfg.method").set_value("lora").run()
    assert not at.exception
    assert at.session_state["plan"]["method"] == "lora"
    assert any("--set method=lora" in c.value for c in at.code)


def test_memory_page_compares_setups(tiny_model):
    at = open_page("memory", model_name=tiny_model, plan={"model": tiny_model}, tokens_per_s=1000.0,
                   data_summary={"records": 300, "median_tokens": 50})
    bar, comparison = figures(at)
    assert len([t for t in bar["data"] if t["type"] == "bar"]) == len(charts.MEMORY_PARTS)
    assert comparison["data"][0]["x"][0] == "basic"
    assert any(b.label.startswith("Measure a real step") for b in at.button)
    assert at.dataframe  # the basic vs optimised table
    assert any(c.startswith("Estimated time: **27 s** — 68 steps") for c in captions(at)), captions(at)


def test_memory_page_measures_a_real_step(tiny_model):
    at = open_page("memory", model_name=tiny_model, plan={"model": tiny_model})
    at.select_slider(key="mem.max_length").set_value(64)
    at.select_slider(key="mem.batch_size").set_value(1).run()
    next(b for b in at.button if b.label.startswith("Measure a real step")).click().run()
    assert not at.exception and not at.error
    measured = at.session_state["memory_measured"]
    assert measured["basic"]["peak_bytes"] > 0
    assert at.session_state["tokens_per_s"] > 0


def test_plugins_page_lists_builtins_with_locked_toggles():
    at = open_page("plugin_shelf")
    assert [t.label for t in at.tabs] == ["Installed", "Catalog", "Write your own"]
    builtins = {"plugin.enabled.formats", "plugin.enabled.samplers", "plugin.enabled.evaluators"}
    builtin_toggles = [t for t in at.toggle if t.key in builtins]
    assert len(builtin_toggles) == 3 and all(t.disabled for t in builtin_toggles)
    assert "docs/plugins.md" in at.tabs[1].markdown[0].value



# -- Questions & glossary ----------------------------------------------------------------------------

# The shape scripts/lesson.py writes to docs/results.json (figures from a trial run of it).
LESSON_RESULTS = {
    "command": "python scripts/lesson.py", "date": "2026-11-28", "machine": {"description": "x86_64 CPU, 2 cores"},
    "config": {"model": "embedded", "method": "lora", "lr": 1e-3, "epochs": 1.0, "batch_size": 8, "grad_accum": 1,
               "max_length": 256, "scheduler": "cosine", "warmup_ratio": 0.05, "gradient_checkpointing": False},
    "train": {"steps": 26, "records": 230, "train_examples": 207, "val_examples": 23, "truncated": 0, "dropped": 0,
              "train_tokens": 34777},
    "heldout": {"samples": 10},
    "perplexity": {"base": 12.49, "tuned": 5.59, "change": -6.9, "relative_change": -0.553},
    "rouge_l": {"base": 0.188, "tuned": 0.307, "change": 0.118, "relative_change": 0.628},
    "keyword_coverage": {"base": 0.417, "tuned": 0.483, "change": 0.067, "relative_change": 0.16},
    "house_style": {"base": 0.0, "tuned": 1.0, "change": 1.0},
    "final_eval_loss": 1.803, "wall_s": {"train": 146.9, "evaluate": 41.6, "total": 188.4}, "tokens_per_s": 291.3,
}
QUESTIONS = ("Can I run this on my laptop?", "How long does training take?", "What if I get memory errors?",
             "How much data do I need?")
PRACTICES = ("Data quality over quantity", "Memory optimisation", "Finding the learning rate and batch size",
             "Measuring improvement")


def page_text(at) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_questions_page_answers_with_the_measured_figures(tmp_path, monkeypatch, embedded_dir):
    from dashboard import lessons

    results = tmp_path / "results.json"
    results.write_text(json.dumps(LESSON_RESULTS), encoding="utf-8")
    monkeypatch.setenv("TUNELAB_LESSON_RESULTS", str(results))
    at = open_page("questions")
    assert at.title[0].value == "Questions & glossary"
    assert [t.label for t in at.tabs] == ["Beginner questions", "Best practices", "Glossary"]
    subheaders = [s.value for s in at.subheader]
    assert all(q in subheaders for q in QUESTIONS + PRACTICES + ("Glossary",)), subheaders
    text = page_text(at)
    assert "12.49 to 5.59" in text and "0% to 100%" in text  # perplexity and house style, read from the file
    assert "291 tokens/s" in text and "207 examples" in text
    assert not any("make lesson" in i.value for i in at.info)
    # memory, estimated live for the embedded model: four set-ups x four batch sizes, and the OOM ladder
    table = at.dataframe[0].value
    assert len(table) == 4 and list(table.columns)[1:] == ["batch 1", "batch 4", "batch 8", "batch 16"]
    assert "Turn on gradient checkpointing" in text
    # the glossary: every term, then a filter
    assert len(lessons.GLOSSARY) >= 30
    glossary = next(m.value for m in at.markdown if "**Perplexity** —" in m.value)
    assert all(f"**{term}** —" in glossary for term in lessons.GLOSSARY)
    at.text_input(key="faq.glossary_filter").input("rank").run()
    assert not at.exception
    filtered = next(m.value for m in at.markdown if "**Rank (r)** —" in m.value)
    assert "**Epoch** —" not in filtered


def test_questions_page_without_results_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_LESSON_RESULTS", str(tmp_path / "missing.json"))
    at = open_page("questions")
    assert any("`make lesson`" in i.value for i in at.info)
    subheaders = [s.value for s in at.subheader]
    assert all(q in subheaders for q in QUESTIONS + ("Glossary",))
    assert "tokens/s" not in page_text(at)  # no figures without the measured file
    assert any("**LoRA** —" in m.value for m in at.markdown)


# -- without the engine (the Streamlit Cloud app with no backend configured) --------------------------

NO_ENGINE = """
import json
import tunelab.core.engine
assert not tunelab.core.engine.engine_installed()
from streamlit.testing.v1 import AppTest

out = {}
for page in PAGES:
    at = AppTest.from_file(REPO + "/streamlit_app.py", default_timeout=60)
    at.session_state["model_name"] = "embedded"
    at.run()
    at.switch_page(f"dashboard/{page}.py").run()
    out[page] = {"exceptions": [str(e.value) for e in at.exception], "errors": [e.value for e in at.error]}
assert not BLOCKED & set(sys.modules), BLOCKED & set(sys.modules)  # nothing got round the block
print(json.dumps(out))
"""
ALL_PAGES = ("welcome", "load_model", "prepare_data", "set_up_training", "fine_tune", "generate", "evaluate",
             "memory", "plugin_shelf", "questions")


def test_without_the_engine_every_page_says_so_in_a_sentence(runs_dir, embedded_dir):
    import subprocess

    script = without_engine(f"REPO = {str(REPO)!r}\nPAGES = {list(ALL_PAGES)!r}\n" + NO_ENGINE, REPO)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO,
                            env={**__import__("os").environ, "TUNELAB_RUNS_DIR": str(runs_dir)})
    assert result.returncode == 0, result.stderr[-3000:]
    pages = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(pages) == set(ALL_PAGES)
    for page, seen in pages.items():
        assert not seen["exceptions"], (page, seen["exceptions"])
        for error in seen["errors"]:  # each error is the one plain sentence with the fix
            assert "not installed here" in error and "make setup" in error and "TUNELAB_BACKEND" in error, (page, error)
    for page in ("load_model", "set_up_training", "memory", "generate", "questions"):
        assert pages[page]["errors"], page  # these need the engine, and say so
