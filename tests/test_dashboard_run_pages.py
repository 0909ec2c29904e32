"""Lessons 4-6 (Fine-tune, Generate, Evaluate) with AppTest, on a tiny run trained here in-process.

The run is real (core.train.train on the tiny random model), only small: three steps on 24 examples.
"""

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from streamlit.testing.v1 import AppTest  # noqa: E402

from dashboard import charts  # noqa: E402

APP = str(REPO / "streamlit_app.py")
TIMEOUT = 60


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model):
    """A finished run of the tiny model (3 steps, validation at steps 2 and 3) with a saved evaluation."""
    from tunelab.core import evaluate, models
    from tunelab.core.config import RunConfig
    from tunelab.core.train import train

    root = tmp_path_factory.mktemp("runs")
    rows = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a} plus {b} is {a + b}."}
            for a in range(6) for b in range(4)]
    data = root.parent / "sums.json"
    data.write_text(json.dumps(rows))
    cfg = RunConfig.from_dict({"model": tiny_model, "data": {"path": str(data), "val_fraction": 0.25},
                               "max_steps": 3, "batch_size": 4, "max_length": 64, "eval_every": 2, "lr": 1e-3})
    run_dir = root / "tiny-sums"
    result = train(cfg, run_dir)
    assert result["state"] == "finished", result
    samples = evaluate.load_samples(data, limit=3)
    report = evaluate.compare(models.load_model(tiny_model), models.load_model(str(run_dir / "final")), samples,
                              evaluators=["perplexity", "rouge_l", "keyword_coverage"], max_new_tokens=6)
    report["data"] = {"path": str(data), "training_file": True, "samples": len(samples)}
    evaluate.save_report(run_dir, report)
    return run_dir


@pytest.fixture
def runs_root(tiny_run, monkeypatch):
    monkeypatch.setenv("TUNELAB_RUNS_DIR", str(tiny_run.parent))
    return tiny_run.parent


def open_page(page: str, query: dict | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    at.switch_page(f"dashboard/{page}.py")
    at.query_params.update(query or {})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def names(fig: dict) -> list[str]:
    return [t.get("name") for t in fig["data"]]


# -- chart builders ----------------------------------------------------------------------------------

def test_ema_is_debiased_and_zero_means_raw():
    assert charts.ema([2.0, 4.0], 0.0) == [2.0, 4.0]
    smoothed = charts.ema([2.0, 2.0, 2.0], 0.9)
    assert all(abs(v - 2.0) < 1e-9 for v in smoothed)  # no pull towards 0 at the start


def test_loss_chart_has_raw_smoothed_and_validation():
    rows = [{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5}]
    fig = charts.loss_chart(rows, 0.5, total_steps=10)
    assert [t.name for t in fig.data] == ["training loss (raw)", "training loss (smoothed)", "validation loss"]
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[2].y) == [2.5]


def test_next_token_chart_keeps_equal_looking_tokens_apart():
    dist = {"tokens": ["a", "a", "b"], "ids": [1, 2, 3], "before": [0.5, 0.3, 0.2], "after": [1.0, 0.0, 0.0]}
    fig = charts.next_token_chart(dist, "greedy")
    assert [t.type for t in fig.data] == ["bar", "bar"]
    assert len(set(fig.data[0].x)) == 3


# -- 4 · Fine-tune ----------------------------------------------------------------------------------

def test_fine_tune_without_a_run_shows_start(runs_dir):
    at = open_page("fine_tune")
    assert at.title[0].value == "4 · Fine-tune"
    start = at.button(key="ft.start")
    assert start.label == "Start training" and not start.disabled
    assert at.button(key="ft.stop").disabled and at.button(key="ft.resume").disabled
    assert at.number_input(key="ft.max_steps").value == 0
    from tunelab.core.backends.local import LocalEngine

    loop = LocalEngine().loop_source()["source"]  # core.train.train_step, as the engine reads it
    assert any(c.value == loop for c in at.code) and "backward" in loop  # the training loop's source


def test_fine_tune_reattaches_to_a_finished_run_from_the_address(runs_root, tiny_run):
    at = open_page("fine_tune", query={"run": tiny_run.name})
    assert at.query_params["run"] == tiny_run.name
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["State"] == "finished" and metrics["Step"] == "3 / 3"
    assert metrics["Training loss"] != "—" and metrics["Validation loss"] != "—"
    figs = figures(at)
    loss = figs[0]
    assert names(loss) == ["training loss (raw)", "training loss (smoothed)", "validation loss"]
    assert loss["data"][0]["x"] == [1, 2, 3]
    assert loss["data"][2]["x"] == [2, 3]  # eval_every=2 and the end
    assert [names(f) for f in figs[1:4]] == [["learning rate"], ["gradient norm"], ["tokens per second"]]
    assert names(figs[4])[0] == f"{tiny_run.name} · training"  # the runs overlay
    assert at.success and not at.error
    assert at.button(key="ft.resume").disabled  # a finished run has nothing to resume


def test_fine_tune_smoothing_slider_redraws(runs_root, tiny_run):
    at = open_page("fine_tune", query={"run": tiny_run.name})
    at.slider(key="ft.smoothing").set_value(0.0).run()
    assert not at.exception
    loss = figures(at)[0]
    assert loss["data"][0]["y"] == loss["data"][1]["y"]  # no smoothing: smoothed == raw


def test_fine_tune_unknown_run_is_a_warning_not_a_crash(runs_root):
    at = open_page("fine_tune", query={"run": "../../etc"})
    assert "no run called" in at.warning[0].value


def test_fine_tune_shows_a_failed_runs_error(runs_root):
    from tunelab.core import runs

    failed = runs_root / "broken"
    failed.mkdir(exist_ok=True)
    runs.write_status(failed, state="failed", error="The loss became nan at step 2: training diverged.", step=2,
                      total_steps=5, pid=None)
    (failed / "log.txt").write_text("worker output\n")
    at = open_page("fine_tune", query={"run": "broken"})
    assert "diverged" in at.error[0].value
    assert not at.button(key="ft.resume").disabled


# -- 5 · Generate -----------------------------------------------------------------------------------

def test_generate_base_only_chart_and_answer(runs_dir, tiny_model):
    at = open_page("generate", model_name=tiny_model)
    assert at.selectbox(key="gen.sampler").value == "top_p"
    assert at.slider(key="gen.top_p.top_p").value == 0.9  # the plugin's param form
    (fig,) = figures(at)
    assert [t["type"] for t in fig["data"]] == ["bar", "bar"]
    assert len(fig["data"][0]["x"]) == 15
    at.slider(key="gen.max_new_tokens").set_value(8)
    at.button(key="gen.go").click().run()
    assert not at.exception and not at.error
    assert set(at.session_state["gen_answers"]) >= {"base", "prompt"}


def test_generate_sampler_change_reshapes_the_chart(runs_dir, tiny_model):
    at = open_page("generate", model_name=tiny_model)
    at.selectbox(key="gen.sampler").set_value("greedy").run()
    assert not at.exception
    (fig,) = figures(at)
    assert sorted(fig["data"][1]["y"])[-1] == 1.0  # greedy: all the mass on one token
    at.selectbox(key="gen.sampler").set_value("top_k").run()
    at.slider(key="gen.top_k.top_k").set_value(3).run()
    (fig,) = figures(at)
    assert sum(p > 0 for p in fig["data"][1]["y"]) == 3


def test_generate_base_and_tuned_side_by_side(runs_root, tiny_run):
    at = open_page("generate")
    assert at.selectbox(key="gen.run").value == tiny_run.name
    assert at.segmented_control(key="gen.inside").value == "tuned"
    at.slider(key="gen.max_new_tokens").set_value(8)
    at.button(key="gen.go").click().run()
    assert not at.exception and not at.error
    answers = at.session_state["gen_answers"]
    assert "base" in answers and "tuned" in answers


# -- 6 · Evaluate -----------------------------------------------------------------------------------

def test_evaluate_without_runs_points_to_fine_tune(runs_dir):
    at = open_page("evaluate")
    assert "No finished run" in at.info[0].value


def test_evaluate_shows_the_saved_report(runs_root, tiny_run):
    at = open_page("evaluate")
    assert at.selectbox(key="eval.run").value == tiny_run.name
    assert at.number_input(key="eval.limit").value == 8
    assert set(at.multiselect(key="eval.evaluators").value) >= {"perplexity", "rouge_l"}
    figs = figures(at)
    assert len(figs) == 3  # one per evaluator in the report
    for fig in figs:
        assert names(fig) == ["base", "tuned"] and fig["data"][0]["type"] == "bar"
    assert at.warning  # the report was made on the training file: flagged
    assert at.selectbox(key="eval.rank_by").value == "rouge_l"
    assert len(at.dataframe) == 2  # the summary and the per-sample table


def test_evaluate_runs_and_saves(runs_root, tiny_run):
    from tunelab.core.evaluate import load_report

    data = json.loads((tiny_run / "eval" / "report.json").read_text())["data"]["path"]
    at = open_page("evaluate", uploads=[data])  # a file of this session's own: Evaluate may read it
    at.number_input(key="eval.limit").set_value(2)
    at.slider(key="eval.max_new_tokens").set_value(16)
    at.multiselect(key="eval.evaluators").set_value(["rouge_l", "exact_match"])
    at.selectbox(key="eval.data").set_value(data)
    at.button(key="eval.go").click().run()
    assert not at.exception and not at.error
    report = load_report(tiny_run)
    assert set(report["metrics"]) == {"rouge_l", "exact_match"} and report["data"]["samples"] == 2
    assert len(figures(at)) == 2


def test_evaluate_bad_file_is_one_clear_error(runs_root, tiny_run, tmp_path):
    gone = str(tmp_path / "nope.json")  # uploaded this session, since expired
    at = open_page("evaluate", uploads=[gone])
    at.selectbox(key="eval.data").set_value(gone)
    at.button(key="eval.go").click().run()
    assert not at.exception
    assert at.error and "nope.json" in at.error[0].value
