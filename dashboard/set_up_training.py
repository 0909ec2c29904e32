"""Lesson 3: every hyperparameter explained, the learning-rate schedule, the memory and time it will need.

Each widget reads the planned run (``state.plan()``) and writes its key back with
``state.update_plan``; a value the engine's rules refuse (``tunelab.core.config.value_problem``, the same rule
the config file and ``--set`` obey) is refused beside the widget, with the reason, and the plan keeps
its value. What the numbers mean (split, steps, warm-up, schedule, changed keys, time) comes from
``Engine.plan_summary``, the data's size from ``Engine.check_data``, the memory from
``Engine.estimate_memory``, the speed from ``Engine.training_speed`` (or a step measured here).
"""

import shlex

import streamlit as st

from tunelab.core.config import CONFIG_DOCS as DOCS
from dashboard import charts, common, lessons, memory_view, state

LRS = [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]


def current(key: str):
    return state.plan().get(key)


def store(key: str, value) -> None:
    """Write one key of the planned run (only when it changed; a bad value is one clear error)."""
    if value != current(key):
        with common.user_errors():
            state.update_plan(**{key: value})


def explain(key: str) -> str:
    return DOCS[key][0] + (f"\n\nRecommended: {lessons.RECOMMENDED[key]}." if key in lessons.RECOMMENDED else "")


def recommended(key: str, container) -> None:
    if key in lessons.RECOMMENDED:
        container.caption(f"Recommended: {lessons.RECOMMENDED[key]}")


def choose(key: str, options: list, fmt=str, label: str | None = None, container=st):
    """A select_slider over sensible values (the current value always among them)."""
    value = current(key)
    options = sorted(set(options) | {value}) if not isinstance(value, str) else options
    store(key, container.select_slider(label or key, options, value=value, format_func=fmt, key=f"cfg.{key}",
                                       help=explain(key)))
    recommended(key, container)


def number(key: str, step, label: str | None = None, container=st):
    """A number box with no bounds of its own: whatever is typed reaches the engine's rule, and a refused
    value is said beside the box with the reason (never silently clamped or ignored)."""
    kept = current(key)
    value = container.number_input(label or key, value=kept, step=step, key=f"cfg.{key}", help=explain(key))
    if not common.refused(key, value, kept, container):
        store(key, value)
    recommended(key, container)


def slide(key: str, lo, hi, step, label: str | None = None, container=st):
    store(key, container.slider(label or key, lo, hi, float(current(key)), step=step, key=f"cfg.{key}",
                                help=explain(key)))
    recommended(key, container)


def pick(key: str, label: str | None = None, container=st):
    store(key, container.segmented_control(label or key, list(DOCS[key][1]), default=current(key), key=f"cfg.{key}",
                                           help=explain(key)) or current(key))
    recommended(key, container)


def switch(key: str, label: str | None = None, container=st):
    store(key, container.toggle(label or key, value=bool(current(key)), key=f"cfg.{key}", help=explain(key)))
    recommended(key, container)


def the_data() -> dict | None:
    """The planned data, counted: one line about it (the report feeds the cautions, steps and time)."""
    cfg = state.plan()
    report = common.data_report(cfg)
    where = f"`{common.plain_path(cfg.data.path)}`" + (f" ({cfg.data.format})" if cfg.data.format else "")
    if report:
        lengths = report.get("token_lengths") or {}
        size = f" — **{report.get('kept', report['records']):,} examples**"
        if lengths.get("median"):
            size += f", median {lengths['median']:.0f} tokens, longest {lengths['max']:,}"
        st.caption(f"Model: `{cfg.model}` · data: {where}{size}. Change them on lessons 1 and 2.")
    else:
        st.caption(f"Model: `{cfg.model}` · data: {where}. Change them on lessons 1 and 2.")
    return report


def what_is_trained() -> None:
    with st.container(border=True):
        st.subheader("What is trained")
        left, right = st.columns(2, gap="large")
        with left:
            pick("method")
            if current("method") == "lora":
                choose("lora.r", [1, 2, 4, 8, 16, 32, 64, 128, 256])
                choose("lora.alpha", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
                slide("lora.dropout", 0.0, 0.5, 0.01)
            switch("train_on_prompt")
        with right:
            common.lesson_box(lessons.LORA)


def how_much(report: dict | None) -> None:
    with st.container(border=True):
        st.subheader("How much, how long")
        left, right = st.columns(2, gap="large")
        with left:
            choose("max_length", [64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096])
            slide("data.val_fraction", 0.0, 0.5, 0.01)
            number("epochs", 0.5)
            number("max_steps", 10)
            common.lesson_box(lessons.EPOCHS_STEPS)
        with right:
            choose("batch_size", [1, 2, 4, 8, 16, 32, 64, 128])
            choose("grad_accum", [1, 2, 4, 8, 16, 32, 64])
            choose("workers", [1, 2, 4, 8])
            with common.user_errors():
                plan_ = state.engine().plan_summary(state.plan().to_dict(), None)
                cfg = state.plan()
                st.markdown(f"Effective batch: **{plan_['effective_batch']}** examples per optimizer step "
                            f"({cfg.batch_size} × {cfg.grad_accum} × {cfg.workers} "
                            f"worker{'s' if cfg.workers != 1 else ''}).")
            common.lesson_box(lessons.BATCH)
            common.lesson_box(lessons.DATA_PARALLEL)
        # after every widget: the warnings are about the values just chosen
        common.show_cautions(state.plan(), report if report and report.get("max_length") == current("max_length")
                             else common.data_report(state.plan()))


def learning_rate(report: dict | None) -> int:
    """The lr settings and the schedule they give; returns the number of examples the chart assumed."""
    with st.container(border=True):
        st.subheader("The learning rate")
        left, right = st.columns([2, 3], gap="large")
        with left:
            choose("lr", LRS, fmt=lambda v: f"{v:.0e}")
            if st.button("See it: run 3 learning rates", icon=":material/science:", key="cfg.see_lr",
                         help="Opens 4b · Experiments with a learning rate too low, about right and too high."):
                state.see_experiment("lr")
            pick("scheduler")
            slide("warmup_ratio", 0.0, 0.5, 0.01)
            slide("weight_decay", 0.0, 0.3, 0.01)
            slide("max_grad_norm", 0.0, 5.0, 0.1)
        with right:
            n_examples = (report or {}).get("kept") or (report or {}).get("records")
            if not n_examples:
                n_examples = st.number_input("Examples in the data set", 1, 10_000_000, 300, key="cfg.n_examples",
                                             help="The data could not be counted: change this to see how the "
                                                  "schedule stretches.")
            with common.user_errors():
                summary = state.engine().plan_summary(state.plan().to_dict(), n_examples)
                warm = summary["warmup_steps"]
                common.chart(charts.lr_schedule_chart(summary["lr_schedule"], warm), key="cfg.lr_chart")
                st.caption(f"{summary['total_steps']} optimizer steps for {summary['n_train']} training examples"
                           + (f", {warm} of them warm-up." if warm else "."))
            common.lesson_box(lessons.SCHEDULE)
    return int(n_examples)


def memory_and_speed(report: dict | None, n_examples: int) -> None:
    with st.container(border=True):
        st.subheader("Memory and time")
        left, right = st.columns([2, 3], gap="large")
        with left:
            pick("precision")
            switch("gradient_checkpointing")
            common.lesson_box(lessons.PRECISION)
            common.lesson_box(lessons.CHECKPOINTING)
        with right:
            median = ((report or {}).get("token_lengths") or {}).get("median")
            memory_view.estimate_section(state.plan(), key="cfg", n_records=n_examples, median_tokens=median,
                                         measure_here=True)


def bookkeeping() -> None:
    with st.container(border=True):
        st.subheader("Bookkeeping")
        a, b, c, d = st.columns(4)
        number("eval_every", 5, container=a)
        number("save_every", 50, container=b)
        number("keep_checkpoints", 1, label="checkpoints to keep", container=c)
        number("seed", 1, container=d)


def as_a_file(n_examples: int) -> None:
    """The planned run as config.yaml, and as the defaults plus ``--set`` for what changed."""
    st.header("Your run, as a file")
    cfg = state.plan()
    with common.user_errors():
        summary = state.engine().plan_summary(cfg.to_dict(), n_examples)
        left, right = st.columns(2, gap="large")
        with left:
            st.markdown("**config.yaml** — save it, then run `python -m tunelab train config.yaml`")
            st.code(cfg.to_yaml(), language="yaml")
        with right:
            sets = " \\\n  ".join(f"--set {shlex.quote(item)}" for item in summary["cli_sets"])
            st.markdown("**The same from the command line, without the file** — the defaults plus what you changed")
            st.code("echo '{}' > defaults.yaml   # every key at its default\n"
                    "python -m tunelab train defaults.yaml" + (" \\\n  " + sets if sets else ""), language="bash")
            if cfg.data.params:
                st.caption("Format options (data.params) are in the YAML file only.")
            st.caption("Lesson 4 starts exactly this run in a worker process, so closing the tab does not stop it. "
                       "A value refused here is refused there too, with the same reason.")


def page() -> None:
    common.title(__file__)
    st.markdown(
        "A training run is a handful of numbers. Each one below says what it does and what range works; the "
        "charts show what your choice means: how the learning rate moves, whether it fits in memory, how long "
        "it will take. The result is a config file you can also run from a terminal."
    )
    st.session_state[state.PLAN_SET_UP] = True
    report = the_data()
    what_is_trained()
    how_much(report)
    n_examples = learning_rate(report)
    memory_and_speed(report, n_examples)
    bookkeeping()
    as_a_file(n_examples)
    common.next_step(__file__)


page()
