"""Lesson 6: measure base vs tuned on held-out examples with evaluator plugins."""

import math
from pathlib import Path

import streamlit as st

from core import evaluate as ev
from core import runs
from dashboard import charts, common, lessons

st.title("6 · Evaluate")
st.markdown(
    "One good answer proves little. Evaluation runs both models over examples they never trained on and "
    "scores the answers with *evaluator* plugins (perplexity, overlap with the reference answer, and more), "
    "so you can tell learning from luck."
)

common.lesson_box(lessons.HELDOUT)
common.lesson_box(lessons.METRICS)

finished = common.finished_runs()
if not finished:
    st.info("No finished run yet: train one on **4 · Fine-tune** (a few steps are enough to try this page).",
            icon=":material/model_training:")
    common.next_step("dashboard/fine_tune.py", "Go to 4 · Fine-tune", icon=":material/arrow_back:")
    st.stop()

DEFAULT_DATA = "data/science_tutor_heldout.alpaca.json"
registry = common.registry()
evaluators = registry.items("evaluators")

# -- what to evaluate ---------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("What to measure")
    left, right = st.columns(2, gap="large")
    with left:
        run_dir = common.pick_finished_run(finished, "Fine-tuned run", key="eval.run",
                                           help="Its final/ model is compared with the model it started from.")
        data_path = st.text_input("Held-out file", DEFAULT_DATA, key="eval.data",
                                  help="Examples the model never trained on, in any format a data plugin reads. "
                                       "The lesson set's held-out file is the default.")
        limit = st.number_input("Samples", 1, 10_000, 8, key="eval.limit",
                                help="How many held-out examples to answer. Each one is answered by both models, so "
                                     "on a CPU keep it small (8 takes a minute or two); on a GPU use them all.")
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
            better = "higher is better" if plugin.higher_is_better else "lower is better"
            with st.expander(f"**{name}** ({better})"):
                st.caption(plugin.description)
                settings[name] = common.param_form(plugin.params, key=f"eval.{name}")
                if not plugin.params:
                    st.caption("No settings.")
    go = st.button("Run evaluation", type="primary", icon=":material/play_arrow:", key="eval.go",
                   disabled=not chosen)


def resolve_data(text: str) -> Path:
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() or path.exists() else common.REPO / path


if go:
    bar = st.progress(0.0, text="Loading the models…")

    def progress(i: int, n: int) -> None:
        half = n // 2
        who = "base" if i <= half else "tuned"
        bar.progress(i / n, text=f"{who} model: answer {i if i <= half else i - half} of {half}")

    with common.user_errors():
        config = runs.load_config(run_dir)
        loaded = (common.load_model(config.model), common.load_model(str(run_dir / "final")))
        report = ev.evaluate_run(run_dir, resolve_data(data_path), evaluators=chosen, limit=int(limit),
                                 max_new_tokens=max_new_tokens, progress=progress, registry=registry,
                                 evaluator_params=settings, loaded=loaded)
        bar.progress(1.0, text=f"Done: {report['data']['samples']} samples, saved to {run_dir / ev.REPORT}")

# -- the results -----------------------------------------------------------------------------------
report = None
with common.user_errors():
    report = ev.load_report(run_dir)
if report is None:
    st.info("This run has not been evaluated yet: click **Run evaluation**.", icon=":material/arrow_upward:")
    st.stop()

st.header("Results")
data = report.get("data", {})
st.caption(f"{data.get('samples', '?')} samples from `{data.get('path', '?')}` · sampler "
           f"{report['base']['settings']['sampler']} · saved in `{run_dir / ev.REPORT}`"
           + (f" on {report['created_at'].replace('T', ' ')}" if report.get("created_at") else ""))
if data.get("training_file"):
    st.warning("This is the training file: the tuned model has seen these answers, so its scores flatter it. "
               "Pick a held-out file for an honest measurement.", icon=":material/warning:")

info = report["tuned"].get("evaluators", {})
names = list(report["metrics"])
rows = []
cols = st.columns(min(3, max(1, len(names))))
for i, name in enumerate(names):
    entry = report["metrics"][name]
    higher = info.get(name, {}).get("higher_is_better", True)
    with cols[i % len(cols)]:
        if "error" in entry["tuned"] or "error" in entry["base"]:
            st.warning(f"**{name}** failed: {entry['tuned'].get('error') or entry['base'].get('error')}")
            continue
        st.plotly_chart(charts.eval_metric_chart(name, entry["base"], entry["tuned"], higher),
                        key=f"eval.chart.{name}", width="stretch")
    for metric, change in entry.get("delta", {}).items():
        if change is None:
            continue
        better = change > 0 if higher else change < 0
        rows.append({"evaluator": name, "metric": metric, "base": entry["base"].get(metric),
                     "tuned": entry["tuned"].get(metric), "change": change,
                     "verdict": "better" if better else ("same" if change == 0 else "worse")})
if rows:
    st.dataframe(rows, hide_index=True, width="stretch", key="eval.summary",
                 column_config={"change": st.column_config.NumberColumn(format="%+.4f")})

# -- every answer ------------------------------------------------------------------------------------
st.header("Every answer")
base_samples, tuned_samples = report["base"]["samples"], report["tuned"]["samples"]
table = []
for b, t in zip(base_samples, tuned_samples):
    row = {"question": b["question"], "reference": b["reference"], "base answer": b["answer"],
           "tuned answer": t["answer"]}
    for name in names:
        row[f"{name} (base)"] = b["scores"].get(name)
        row[f"{name} (tuned)"] = t["scores"].get(name)
    table.append(row)
st.dataframe(table, hide_index=True, width="stretch", key="eval.samples",
             column_config={c: st.column_config.TextColumn(width="medium")
                            for c in ("question", "reference", "base answer", "tuned answer")})

# -- best and worst ------------------------------------------------------------------------------------
st.header("Where training helped most, and where it hurt")
common.lesson_box(lessons.METRIC_CHANGE)


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


rankable = [n for n in names if any(finite(b["scores"].get(n)) and finite(t["scores"].get(n))
                                    for b, t in zip(base_samples, tuned_samples))]
if not rankable:
    st.caption("No evaluator gave per-sample scores to rank by.")
else:
    by = st.selectbox("Rank by", rankable, index=rankable.index("rouge_l") if "rouge_l" in rankable else 0,
                      key="eval.rank_by")
    higher = info.get(by, {}).get("higher_is_better", True)
    changes = [(i, t["scores"][by] - b["scores"][by]) for i, (b, t) in enumerate(zip(base_samples, tuned_samples))
               if finite(b["scores"].get(by)) and finite(t["scores"].get(by))]
    changes.sort(key=lambda ic: ic[1] if higher else -ic[1], reverse=True)  # most improved first
    k = min(3, max(1, len(changes) // 2))
    best_col, worst_col = st.columns(2, gap="large")

    def show(column, title, picks):
        with column:
            st.subheader(title)
            for i, change in picks:
                b, t = base_samples[i], tuned_samples[i]
                with st.container(border=True):
                    st.markdown(f"**{b['question']}**")
                    st.caption(f"{by}: {b['scores'][by]:.3f} → {t['scores'][by]:.3f} ({change:+.3f})")
                    st.markdown(f"*Reference:* {b['reference']}")
                    st.markdown(f"*Base:* {b['answer'] or '(empty)'}")
                    st.markdown(f"*Tuned:* {t['answer'] or '(empty)'}")

    show(best_col, "Best", changes[:k])
    show(worst_col, "Worst", list(reversed(changes[-k:])))

common.next_step("dashboard/memory.py", "Next: 7 · Memory — where training memory goes")
