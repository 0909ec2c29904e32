"""Lesson 4b: an experiment. Vary one setting of the planned run, 2 to 4 values, and see what it does.

The runs copy the planned run (``state.plan()``) with one setting changed. The engine plans them
(``plan_experiment``: the steps it chose, and why), runs them (``start_experiment``: one after another
on this machine, side by side on a GPU box), reads them (``experiment``: each run's curves and the
verdict in words, both from ``core``) and stops them (``stop_experiment``). Once they have ended, each
value's model answers one held-out question (``generate`` on ``run:<id>``) and is scored on a few
held-out examples (``evaluate``, perplexity). The experiment's id is in the address (``?experiment=``),
so a reload, or a closed and reopened tab, finds it again: its runs go on without the page.
"""

import json

import streamlit as st

from tunelab.core.config import RunConfig
from tunelab.core.engine import run_model
from tunelab.core.errors import UserError
from dashboard import charts, common, lessons, state

POLL_S = 2
HELDOUT = "data/science_tutor_heldout.alpaca.json"  # the lesson set's held-out file, as on 6 · Evaluate
LESSON_DATA = "data/science_tutor_train.alpaca.json"
SCORED = 4  # held-out examples each model's perplexity is measured on
ANSWER_TOKENS = 64
DEFAULT_MINUTES = 2.0  # the default plan's three learning rates fit in two minutes on a 2-core CPU


def settings() -> dict:
    """The settings an experiment may vary for the planned run, by key (``Engine.experiment_settings``)."""
    return {row["key"]: row for row in state.engine().experiment_settings(state.plan().to_dict())}


def teaching_values() -> None:
    """A new setting was picked: its values become the ones that teach (too low, about right, too high)."""
    rows = settings()
    st.session_state[state.EXP_VALUES] = [s["text"] for s in rows[st.session_state[state.EXP_SETTING]]["suggestions"]]


@st.cache_data(ttl=30, show_spinner=False)
def preview(plan_json: str, setting: str, values: tuple, budget_s: float) -> dict:
    """The plan ``start_experiment`` would run (cached 30 s: the speed it sizes by changes as runs end)."""
    return state.engine().plan_experiment(json.loads(plan_json), setting, list(values), budget_s)


def choose() -> tuple[str, list[str], float]:
    """The setting, its values and the budget, from widgets whose state lives in ``dashboard/state.py``."""
    rows = settings()
    if st.session_state.get(state.EXP_SETTING) not in rows:
        st.session_state[state.EXP_SETTING] = "lr"
        st.session_state.pop(state.EXP_VALUES, None)
    key = st.selectbox("Setting to vary", list(rows), key=state.EXP_SETTING, on_change=teaching_values,
                       format_func=lambda k: f"{rows[k]['label']} ({k})",
                       help="One setting only: everything else stays as planned, so any difference comes from it.")
    row = rows[key]
    st.markdown(row["explain"])
    hints = {s["text"]: s["hint"] for s in row["suggestions"]}
    if st.session_state.get(state.EXP_VALUES) is None:
        st.session_state[state.EXP_VALUES] = list(hints)
    options = list(hints) + [v for v in st.session_state[state.EXP_VALUES] if v not in hints]
    values = st.multiselect("Values (2 to 4)", options, key=state.EXP_VALUES, max_selections=4, accept_new_options=True,
                            format_func=lambda v: f"{v} — {hints[v]}" if hints.get(v) else v,
                            help=f"The suggestions teach: each shows something different. Type another value to "
                                 f"add it. {row['help']}")
    st.caption(f"The planned run has {row['label']} = {row['current']}.")
    st.session_state.setdefault(state.EXP_BUDGET, DEFAULT_MINUTES)
    minutes = st.number_input("Time budget (minutes)", min_value=0.5, max_value=120.0, step=0.5, key=state.EXP_BUDGET,
                              help="How long all the runs may take together. The steps per run are sized to fit it, "
                                   "from the speed measured here (2 minutes fits the default plan's three learning "
                                   "rates on a 2-core CPU).")
    return key, list(values), float(minutes) * 60


def show_plan(key: str, values: list[str], budget_s: float) -> dict | None:
    """The steps the engine will choose, and why; None (with the reason) when it cannot run."""
    if not 2 <= len(values) <= 4:
        st.info("Pick 2 to 4 values.", icon=":material/touch_app:")
        return None
    try:
        planned = preview(json.dumps(state.plan().to_dict(), sort_keys=True), key, tuple(values), budget_s)
    except UserError as exc:
        st.error(str(exc), icon=":material/error:")
        return None
    steps = planned["steps"]
    each = f"{steps} steps each" if isinstance(steps, int) else f"{', '.join(map(str, steps))} steps"
    st.markdown(f"**{len(values)} runs, {each}**, about {common.human_seconds(planned['estimated_s'])} in all "
                f"(the planned run has {planned['planned_steps']} steps).")
    st.caption(planned["why"] + (f" Speed from {planned['speed_source']}." if planned.get("speed_source") else ""))
    return planned


def controls(exp_id: str | None, active: bool) -> None:
    """Pick, plan, Run and Stop; the idea explained beside them."""
    with st.container(border=True):
        st.subheader("Set up an experiment")
        left, right = st.columns([3, 2], gap="large")
        with left:
            key, values, budget_s = choose()
            planned = show_plan(key, values, budget_s)
            run_col, stop_col, _ = st.columns([3, 2, 2])  # wide enough for the labels
            run = run_col.button("Run the experiment", type="primary", icon=":material/science:", key="exp.run",
                                 disabled=active or planned is None, width="stretch",
                                 help="Wait for the running experiment to end (or stop it) first." if active else
                                      "Start the runs: they go on if you close this tab.")
            stop = stop_col.button("Stop", icon=":material/stop:", key="exp.stop", disabled=not active, width="stretch",
                                   help="Stop the running run (it saves a checkpoint) and start no further one.")
        with right:
            common.lesson_box(lessons.EXPERIMENT, expanded=True)
    engine = state.engine()
    if run:
        with common.user_errors():
            attach(engine.start_experiment(state.plan().to_dict(), key, values, budget_s, owner=state.owner()))
            st.rerun()
    if stop and exp_id is not None:
        with common.user_errors():
            engine.stop_experiment(exp_id, owner=state.owner())
            st.rerun()


def attach(exp_id: str) -> None:
    """Show this experiment, and keep it in the address bar, so a reload finds it again."""
    st.session_state[state.EXP_CURRENT] = exp_id
    st.query_params["experiment"] = exp_id


def wanted() -> dict | None:
    """The experiment in the address (it wins), the session's, else the newest; None when there is none."""
    engine = state.engine()
    exp_id = st.query_params.get("experiment") or st.session_state.get(state.EXP_CURRENT)
    try:
        if not exp_id:
            newest = engine.list_experiments()[:1]
            exp_id = newest[0]["id"] if newest else None
        record = engine.experiment(exp_id) if exp_id else None
    except UserError as exc:
        st.warning(str(exc), icon=":material/search_off:")
        st.session_state.pop(state.EXP_CURRENT, None)
        st.query_params.pop("experiment", None)
        return None
    if record is not None:
        attach(record["id"])
    return record


def progress_rows(record: dict) -> None:
    """Each value's run: where it is."""
    cols = st.columns(len(record["runs"]))
    for col, entry in zip(cols, record["runs"]):
        prog = entry.get("progress") or {}
        total, step = prog.get("total_steps"), prog.get("step") or 0
        text = f"**{entry['label']}** · {entry['state']}" + (f" · step {step} of {total}" if total else "")
        done = 1.0 if entry["state"] == "finished" else (prog.get("fraction") or 0.0)
        col.progress(min(1.0, done), text=text)


def figure(record: dict):
    """The curves overlaid, rebuilt only when a new metrics row arrived (most polls find none)."""
    signature = (record["id"], tuple(len(e.get("rows") or []) for e in record["runs"]))
    cached = st.session_state.get(state.EXP_FIGURE)
    if cached is None or cached[0] != signature:
        plan = record["plan"]
        steps = plan["steps"] if isinstance(plan["steps"], int) else max(plan["steps"])
        curves = {e["label"]: e.get("rows") or [] for e in record["runs"]}
        hints = {r["label"]: r.get("hint") for r in plan["runs"]}
        cached = st.session_state[state.EXP_FIGURE] = (signature, charts.experiment_chart(curves, 0.6, steps, hints))
    return cached[1]


def live_view(exp_id: str, was_active: bool) -> None:
    """Curves, progress and the verdict so far; a fragment polled while the experiment runs."""
    with common.user_errors():
        record = state.engine().experiment(exp_id)
        plan = record["plan"]
        progress_rows(record)
        common.chart(figure(record), key="exp.chart")
        verdict = record["verdict"]["text"]
        if record["final"]:
            st.success(f"**Verdict.** {verdict or 'No run trained a step.'}", icon=":material/gavel:")
        elif verdict:
            st.info(f"**So far.** {verdict}", icon=":material/hourglass_top:")
        for note in plan["notes"]:
            st.caption(note)
        if (not record["final"]) != was_active:
            st.rerun(scope="app")  # it started or ended: buttons, polling and the answers change


def held_out(cfg) -> tuple[str, dict]:
    """The file to ask and score on: the lesson's held-out file for the lesson's data, else the run's own
    data file (then it is not held out, and the page says so); and the arguments that read it."""
    if cfg.data.path == LESSON_DATA:
        return HELDOUT, {}
    return cfg.data.path, {"format": cfg.data.format or None, "params": cfg.data.params}


def question(path: str, read: dict) -> str:
    """The one fixed question every value's model answers: the first example's last user turn."""
    record = state.engine().load_records(path, read.get("format"), read.get("params"), limit=1)[0]
    turns = [m["content"] for m in record.get("messages") or [] if m.get("role") == "user"]
    if not turns:
        raise UserError(f"{common.plain_path(path)}: its first example has no question to ask")
    return turns[-1]


def answers(record: dict) -> None:
    """Once the runs have ended: each value's answer to one held-out question, and its perplexity under it."""
    done = [e for e in record["runs"] if e["state"] == "finished" and e.get("run_id")]
    if not done:
        return
    st.header("What each model says")
    path, read = held_out(RunConfig.from_dict(record["plan"]["base"]))
    made = st.session_state.setdefault(state.EXP_ANSWERS, {}).setdefault(record["id"], {})
    engine = state.engine()
    with common.user_errors():
        prompt = question(path, read)
        st.markdown(f"**The question** (from `{common.plain_path(path)}`" +
                    (", never trained on" if path == HELDOUT else ", the training file: not held out") +
                    f"): {prompt}")
        base_ppl = None
        for col, entry in zip(st.columns(len(done)), done):
            if entry["label"] not in made:
                with st.spinner(f"{entry['label']}: answering and scoring…"):
                    answer = "".join(engine.generate(run_model(entry["run_id"]), prompt, "greedy",
                                                     max_new_tokens=ANSWER_TOKENS))
                    report = engine.evaluate(entry["run_id"], data_path=path, evaluators=["perplexity"],
                                             limit=SCORED, max_new_tokens=1)
                    ppl = report["metrics"]["perplexity"]
                    made[entry["label"]] = {"answer": answer, "perplexity": ppl["tuned"].get("perplexity"),
                                            "base": ppl["base"].get("perplexity")}
            got = made[entry["label"]]
            base_ppl = got["base"] if got["base"] is not None else base_ppl
            with col.container(border=True):
                st.markdown(f"**{entry['label']}**")
                st.markdown(got["answer"].strip() or "*(an empty answer)*")
                st.metric(f"Perplexity on {SCORED} held-out examples", _fmt(got["perplexity"]),
                          help="How surprised the model is by the reference answers: lower is better.")
        if base_ppl is not None:
            st.caption(f"The base model, before any training: perplexity {_fmt(base_ppl)} on the same examples. "
                       f"Greedy answers, at most {ANSWER_TOKENS} tokens; each run keeps this small evaluation "
                       "(6 · Evaluate measures more).")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def page() -> None:
    common.title(__file__)
    st.markdown(
        "What does the learning rate *do*? Run your planned run two to four times, changing only that one "
        "setting, and watch the curves side by side. The runs are short (sized to the time you give them), "
        "run in worker processes like any run (closing the tab does not stop them) and stay in your runs "
        "list afterwards, to open, evaluate or export."
    )
    record = wanted()
    active = record is not None and not record["final"]
    controls(record["id"] if record else None, active)
    if record is None:
        st.info("No experiment yet: pick a setting and its values above, then **Run the experiment**.",
                icon=":material/arrow_upward:")
    else:
        st.header(f"The experiment: {record['plan']['label']} = "
                  + ", ".join(e["label"] for e in record["runs"]))
        exp_id = record["id"]

        def the_experiment() -> None:
            live_view(exp_id, active)

        st.fragment(the_experiment, run_every=POLL_S if active else None)()
        if record["final"]:
            answers(record)
    common.next_step(__file__)


page()
