"""Lesson 6: measure base vs tuned on held-out examples with evaluator plugins.

The engine runs the evaluation and reads the report with its comparison (``summary``: better or
worse per metric; ``ranking``: where training helped most and hurt most); the page shows them.
"""

import streamlit as st

from dashboard import charts, common, lessons, state
from tunelab.core.config import eval_samples_problem

DEFAULT_DATA = "data/science_tutor_heldout.alpaca.json"


def held_out_file():
    """A pick, not free text: the data sets that ship with TuneLab and this session's uploads."""
    choices = []
    with common.user_errors():
        choices = state.engine().data_choices(state.uploads())
    if not choices:
        return None
    default = DEFAULT_DATA if DEFAULT_DATA in choices else choices[0]
    uploads = set(state.uploads())

    def label(path: str) -> str:
        shown = common.plain_path(path)
        if path in uploads:
            return f"{shown.rsplit('/', 1)[-1]} (uploaded)"
        return shown

    return st.selectbox("Held-out file", choices, index=choices.index(default), key="eval.data", format_func=label,
                        help="Examples the model never trained on: a data set that ships with TuneLab, or a file "
                             "you uploaded on 2 · Prepare data. The lesson set's held-out file is the default.")


def what_to_measure(evaluators: dict) -> dict:
    """The run, the held-out file, how many samples, and which evaluators with which settings."""
    with st.container(border=True):
        st.subheader("What to measure")
        left, right = st.columns(2, gap="large")
        with left:
            run_id, _ = common.finished_run_picker("Fine-tuned run", key="eval.run",
                                                   help="Its final/ model is compared with the model it started from.")
            data_path = held_out_file()
            limit = st.number_input("Samples", value=8, step=1, key="eval.limit",
                                    help="How many held-out examples to answer. Each one is answered by both models, "
                                         "so on a CPU keep it small (8 takes a minute or two); on a GPU use them all.")
            bad_limit = eval_samples_problem(limit, "Samples")
            if bad_limit:
                st.error(f"Not used: {bad_limit}.", icon=":material/block:")
            max_new_tokens = st.slider("Max new tokens per answer", 16, 512, 96, 16, key="eval.max_new_tokens",
                                       help="Longer answers take longer; the references are a few sentences.")
            st.caption("Both models answer with the greedy sampler and the same seed, so any difference comes from "
                       "the weights.")
        with right:
            names = list(evaluators)
            chosen = st.multiselect("Evaluators", names, default=names, key="eval.evaluators",
                                    help="Each evaluator is a plugin; a plugin's own evaluator appears here with its "
                                         "settings.")
            settings = {}
            for name in chosen:
                plugin = evaluators[name]
                better = "higher is better" if plugin["higher_is_better"] else "lower is better"
                with st.expander(f"**{name}** ({better})"):
                    st.caption(plugin["description"])
                    settings[name] = common.param_form(plugin["params"], key=f"eval.{name}")
                    if not plugin["params"]:
                        st.caption("No settings.")
        go = st.button("Run evaluation", type="primary", icon=":material/play_arrow:", key="eval.go",
                       disabled=not chosen or bool(bad_limit) or not data_path,
                       help="Fix the values marked above first." if bad_limit else None)
    return {"run_id": run_id, "data_path": data_path, "limit": int(limit), "max_new_tokens": max_new_tokens,
            "evaluators": chosen, "settings": settings, "go": go}


def run_evaluation(choice: dict) -> None:
    bar = st.progress(0.0, text="Loading the models…")

    def progress(i: int, n: int) -> None:
        half = n // 2
        who = "base" if i <= half else "tuned"
        bar.progress(i / n, text=f"{who} model: answer {i if i <= half else i - half} of {half}")

    report = None
    with common.user_errors():
        engine = state.engine()
        data_path = engine.allowed_data(choice["data_path"], state.uploads())  # bundled sets and own uploads only
        report = engine.evaluate(choice["run_id"], data_path, evaluators=choice["evaluators"], limit=choice["limit"],
                                 max_new_tokens=choice["max_new_tokens"], evaluator_params=choice["settings"],
                                 progress=progress)
        bar.progress(1.0, text=f"Done: {report['data']['samples']} samples, saved with run {choice['run_id']}")
    if report is None:
        bar.empty()  # the error says what went wrong; a bar stuck part-way would say it is still going


def results(report: dict) -> None:
    """One chart per evaluator, and the table of what got better or worse."""
    st.header("Results")
    data = report.get("data", {})
    settings = report["base"]["settings"]
    st.caption(f"{data.get('samples', '?')} samples from `{common.plain_path(data.get('path', '?'))}` · answered by "
               f"{common.sampler_words(settings.get('sampler'), settings.get('params'))} · saved with the run "
               "(eval/report.json)"
               + (f" on {report['created_at'].replace('T', ' ')}" if report.get("created_at") else ""))
    if data.get("training_file"):
        st.warning("This is the training file: the tuned model has seen these answers, so its scores flatter it. "
                   "Pick a held-out file for an honest measurement.", icon=":material/warning:")
    info = report["tuned"].get("evaluators", {})
    names = list(report["metrics"])
    cols = st.columns(min(3, max(1, len(names))))
    for i, name in enumerate(names):
        entry = report["metrics"][name]
        with cols[i % len(cols)]:
            if "error" in entry["tuned"] or "error" in entry["base"]:
                st.warning(f"**{name}** failed: {entry['tuned'].get('error') or entry['base'].get('error')}")
                continue
            common.chart(charts.eval_metric_chart(name, entry["base"], entry["tuned"],
                                                  info.get(name, {}).get("higher_is_better", True)),
                         key=f"eval.chart.{name}")
    rows = [{k: row[k] for k in ("evaluator", "metric", "base", "tuned", "change", "verdict")}
            for row in report.get("summary") or []]
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch", key="eval.summary",
                     column_config={"change": st.column_config.NumberColumn(format="%+.4f")})


def every_answer(report: dict) -> None:
    st.header("Every answer")
    names = list(report["metrics"])
    table = []
    for b, t in zip(report["base"]["samples"], report["tuned"]["samples"]):
        row = {"question": b["question"], "reference": b["reference"], "base answer": b["answer"],
               "tuned answer": t["answer"]}
        for name in names:
            row[f"{name} (base)"] = b["scores"].get(name)
            row[f"{name} (tuned)"] = t["scores"].get(name)
        table.append(row)
    st.dataframe(table, hide_index=True, width="stretch", key="eval.samples",
                 column_config={c: st.column_config.TextColumn(width="medium")
                                for c in ("question", "reference", "base answer", "tuned answer")})


def best_and_worst(report: dict) -> None:
    st.header("Where training helped most, and where it hurt")
    common.lesson_box(lessons.METRIC_CHANGE)
    ranking = report.get("ranking") or {}
    if not ranking:
        st.caption("No evaluator gave per-sample scores to rank by.")
        return
    rankable = list(ranking)
    by = st.selectbox("Rank by", rankable, index=rankable.index("rouge_l") if "rouge_l" in rankable else 0,
                      key="eval.rank_by")
    best_col, worst_col = st.columns(2, gap="large")
    for column, title, picks in ((best_col, "Best", ranking[by]["best"]), (worst_col, "Worst", ranking[by]["worst"])):
        with column:
            st.subheader(title)
            for pick in picks:
                with st.container(border=True):
                    st.markdown(f"**{pick['question']}**")
                    st.caption(f"{by}: {pick['base']:.3f} → {pick['tuned']:.3f} ({pick['change']:+.3f})")
                    st.markdown(f"*Reference:* {pick['reference']}")
                    st.markdown(f"*Base:* {pick['base_answer'] or '(empty)'}")
                    st.markdown(f"*Tuned:* {pick['tuned_answer'] or '(empty)'}")


def page() -> None:
    common.title(__file__)
    st.markdown(
        "One good answer proves little. Evaluation runs both models over examples they never trained on and "
        "scores the answers with *evaluator* plugins (perplexity, overlap with the reference answer, and more), "
        "so you can tell learning from luck."
    )
    common.lesson_box(lessons.HELDOUT)
    common.lesson_box(lessons.METRICS)
    finished = []
    with common.user_errors():
        finished = [r for r in state.engine().list_runs() if r.get("state") == "finished"]
    if not finished:
        st.info("No finished run yet: train one on **4 · Fine-tune** (a few steps are enough to try this page).",
                icon=":material/model_training:")
        common.go_to("dashboard/fine_tune.py", "Go to 4 · Fine-tune", icon=":material/arrow_back:")
        return
    evaluators = {}
    with common.user_errors():
        evaluators = {e["name"]: e for e in common.plugin_items("evaluators")}
    choice = what_to_measure(evaluators)
    if choice["go"]:
        run_evaluation(choice)
    report = None
    with common.user_errors():
        report = state.engine().eval_report(choice["run_id"])
        if report is None:
            st.info("This run has not been evaluated yet: click **Run evaluation**.", icon=":material/arrow_upward:")
    if report is None:
        return
    results(report)
    every_answer(report)
    best_and_worst(report)
    common.next_step(__file__)


page()
