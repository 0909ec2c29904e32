"""Lesson 3: every hyperparameter explained, the learning-rate schedule, the memory and time it will need."""

import shlex

import streamlit as st

from core import train
from core.config import CONFIG_DOCS as DOCS
from core.config import RunConfig
from dashboard import charts, common, lessons, memory_view

st.title("3 · Set up training")
st.markdown(
    "A training run is a handful of numbers. Each one below says what it does and what range works; the "
    "charts show what your choice means: how the learning rate moves, whether it fits in memory, how long "
    "it will take. The result is a config file you can also run from a terminal."
)

# The config lives in session state as a plain dict; it starts from the engine's defaults and the
# choices made on lessons 1 and 2.
cfg = st.session_state[common.RUN_CONFIG] = common.planned_config()
cfg["model"] = st.session_state.get(common.MODEL_NAME, cfg["model"])
if common.DATA in st.session_state:
    cfg["data"].update(st.session_state[common.DATA])


def current(key):
    section, _, name = key.partition(".")
    return cfg[section][name] if name else cfg[section]


def store(key, value):
    section, _, name = key.partition(".")
    if name:
        cfg[section][name] = value
    else:
        cfg[section] = value


def explain(key: str) -> str:
    return DOCS[key][0] + (f"\n\nRecommended: {lessons.RECOMMENDED[key]}." if key in lessons.RECOMMENDED else "")


def choose(key: str, options: list, fmt=str, label: str | None = None, container=st):
    """A select_slider over sensible values (the current value always among them)."""
    value = current(key)
    options = sorted(set(options) | {value}) if not isinstance(value, str) else options
    store(key, container.select_slider(label or key, options, value=value, format_func=fmt, key=f"cfg.{key}",
                                       help=explain(key)))
    container.caption(f"Recommended: {lessons.RECOMMENDED[key]}")


def number(key: str, lo, hi, step, label: str | None = None, container=st):
    value = current(key)
    store(key, container.number_input(label or key, min_value=lo, max_value=hi, value=value, step=step,
                                      key=f"cfg.{key}", help=explain(key)))
    container.caption(f"Recommended: {lessons.RECOMMENDED[key]}")


def slide(key: str, lo, hi, step, label: str | None = None, container=st):
    store(key, container.slider(label or key, lo, hi, float(current(key)), step=step, key=f"cfg.{key}",
                                help=explain(key)))
    container.caption(f"Recommended: {lessons.RECOMMENDED[key]}")


def pick(key: str, label: str | None = None, container=st):
    options = list(DOCS[key][1])
    store(key, container.segmented_control(label or key, options, default=current(key), key=f"cfg.{key}",
                                           help=explain(key)) or current(key))
    container.caption(f"Recommended: {lessons.RECOMMENDED[key]}")


def switch(key: str, label: str | None = None, container=st):
    store(key, container.toggle(label or key, value=bool(current(key)), key=f"cfg.{key}", help=explain(key)))
    container.caption(f"Recommended: {lessons.RECOMMENDED[key]}")


st.caption(f"Model: `{cfg['model']}` · data: `{cfg['data']['path']}`"
           + (f" ({cfg['data']['format']})" if cfg["data"].get("format") else "")
           + " — change them on lessons 1 and 2.")

# -- what is trained --------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("What is trained")
    left, right = st.columns(2, gap="large")
    with left:
        pick("method")
        if cfg["method"] == "lora":
            choose("lora.r", [1, 2, 4, 8, 16, 32, 64, 128, 256])
            choose("lora.alpha", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
            slide("lora.dropout", 0.0, 0.5, 0.01)
        switch("train_on_prompt")
    with right:
        common.lesson_box(lessons.LORA)

# -- how much data, how long -------------------------------------------------------------------
with st.container(border=True):
    st.subheader("How much, how long")
    left, right = st.columns(2, gap="large")
    with left:
        choose("max_length", [64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 4096])
        slide("data.val_fraction", 0.0, 0.5, 0.01)
        number("epochs", 0.01, 100.0, 0.5)
        number("max_steps", 0, 1_000_000, 10)
        common.lesson_box(lessons.EPOCHS_STEPS)
    with right:
        choose("batch_size", [1, 2, 4, 8, 16, 32, 64, 128])
        choose("grad_accum", [1, 2, 4, 8, 16, 32, 64])
        st.markdown(f"Effective batch: **{cfg['batch_size'] * cfg['grad_accum']}** examples per optimizer step.")
        common.lesson_box(lessons.BATCH)

# -- the learning rate ---------------------------------------------------------------------------
LRS = [1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 3e-5, 5e-5, 1e-4, 2e-4, 3e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2]
with st.container(border=True):
    st.subheader("The learning rate")
    left, right = st.columns([2, 3], gap="large")
    with left:
        choose("lr", LRS, fmt=lambda v: f"{v:.0e}")
        pick("scheduler")
        slide("warmup_ratio", 0.0, 0.5, 0.01)
        slide("weight_decay", 0.0, 0.3, 0.01)
        slide("max_grad_norm", 0.0, 5.0, 0.1)
    with right:
        known = st.session_state.get(common.DATA_RECORDS)
        n_examples = st.number_input("Examples in the data set", 1, 10_000_000, int(known or 300), key="cfg.n_examples",
                                     help="Counted on lesson 2; change it to see how the schedule stretches.")
        if not known:
            st.caption("Not counted yet: check the data on lesson 2 for the real number.")
        n_train = max(1, n_examples - round(n_examples * cfg["data"]["val_fraction"]))
        st.session_state[common.N_TRAIN] = n_train
        config_obj = None
        with common.user_errors():
            config_obj = RunConfig.from_dict(cfg)
            total_steps = config_obj.total_steps(n_train)
            warm = train.warmup_steps(config_obj, total_steps)
            st.plotly_chart(charts.lr_schedule_chart(train.lr_schedule(config_obj, total_steps), warm), width="stretch",
                            key="cfg.lr_chart")
            st.caption(f"{total_steps} optimizer steps for {n_train} training examples"
                       + (f", {warm} of them warm-up." if warm else "."))
        common.lesson_box(lessons.SCHEDULE)

# -- memory and speed ------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Memory and speed")
    left, right = st.columns([2, 3], gap="large")
    with left:
        pick("precision")
        switch("gradient_checkpointing")
        common.lesson_box(lessons.PRECISION)
        common.lesson_box(lessons.CHECKPOINTING)
    with right:
        if config_obj is not None:  # again: precision and checkpointing on the left may have just changed
            config_obj = RunConfig.from_dict(cfg)
        memory_view.estimate_section(config_obj, key="cfg")

# -- bookkeeping --------------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Bookkeeping")
    a, b, c = st.columns(3)
    number("eval_every", 0, 1_000_000, 5, container=a)
    number("save_every", 0, 1_000_000, 50, container=b)
    number("seed", 0, 2**31 - 1, 1, container=c)

# -- the result: a config file ------------------------------------------------------------------------
st.header("Your run, as a file")
with common.user_errors():
    config_obj = RunConfig.from_dict(cfg)
    st.session_state[common.RUN_CONFIG] = config_obj.to_dict()
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**config.yaml** — save it, then run `python -m core train config.yaml`")
        st.code(config_obj.to_yaml(), language="yaml")
    with right:
        def flat(d, prefix=""):
            for k, v in d.items():
                if isinstance(v, dict) and k in ("data", "lora"):
                    yield from flat(v, f"{k}.")
                else:
                    yield f"{prefix}{k}", v

        base = dict(flat(RunConfig().to_dict()))
        changed = [(k, ",".join(v) if isinstance(v, list) else v) for k, v in flat(config_obj.to_dict())
                   if base.get(k) != v and k != "data.params"]  # lists as --set takes them: a,b,c
        sets = " \\\n  ".join(f"--set {shlex.quote(f'{k}={v}')}" for k, v in changed)
        st.markdown("**The same from the command line, without the file** — the defaults plus what you changed")
        st.code("echo '{}' > defaults.yaml   # every key at its default\n"
                "python -m core train defaults.yaml" + (" \\\n  " + sets if sets else ""), language="bash")
        if cfg["data"].get("params"):
            st.caption("Format options (data.params) are in the YAML file only.")
        st.caption("Lesson 4 starts exactly this run in a worker process, so closing the tab does not stop it.")

common.next_step("dashboard/fine_tune.py", "Next: 4 · Fine-tune")
