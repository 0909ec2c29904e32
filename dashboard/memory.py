"""Lesson 7: where memory goes in training, and what each trick saves — estimated, then measured.

The set-up is the planned run (``state.plan()``; this page's controls change it); the numbers
come from the engine (``estimate_memory``, ``measure_memory``, ``machine``).
"""

import streamlit as st

from dashboard import charts, common, lessons, memory_view, state

BATCHES, LENGTHS = [1, 2, 4, 8, 16, 32, 64], [64, 128, 256, 512, 1024, 2048, 4096]
MEASURED = state.MEMORY_MEASURED


def your_set_up():
    """method, precision, checkpointing, batch_size, max_length of the planned run; returns the plan."""
    st.header("Your set-up")
    cfg = state.plan()
    with st.container(border=True):
        c = st.columns(3) + st.columns(3)
        method = c[0].segmented_control("method", ["full", "lora"], default=cfg.method, key="mem.method") or "full"
        precision = c[1].segmented_control("precision", ["auto", "fp32", "bf16", "fp16"], default=cfg.precision,
                                           key="mem.precision") or "auto"
        checkpointing = c[2].toggle("gradient_checkpointing", value=cfg.gradient_checkpointing,
                                    key="mem.checkpointing")
        batch_size = c[3].select_slider("batch_size", sorted(set(BATCHES) | {cfg.batch_size}), value=cfg.batch_size,
                                        key="mem.batch_size")
        max_length = c[4].select_slider("max_length", sorted(set(LENGTHS) | {cfg.max_length}), value=cfg.max_length,
                                        key="mem.max_length")
        st.caption(f"Model: `{cfg.model}` (change it on lesson 1). These controls change the planned run.")
    changes = {k: v for k, v in (("method", method), ("precision", precision), ("gradient_checkpointing", checkpointing),
                                 ("batch_size", batch_size), ("max_length", max_length)) if cfg.get(k) != v}
    if changes:
        with common.user_errors():
            cfg = state.update_plan(**changes)
    return cfg


def setups(cfg) -> dict[str, dict]:
    """The basic set-up (full, fp32, no checkpointing) and what each trick changes, as estimate inputs."""
    base = memory_view.estimate_inputs(cfg, method="full", precision="fp32", gradient_checkpointing=False)
    m = common.machine()
    half = "fp16" if m.get("cuda") and not m.get("bf16") else "bf16"  # fp16 only where bf16 is missing: old GPUs
    optimised = dict(base, method="lora", gradient_checkpointing=True, precision="auto")
    return {
        "basic": base,
        "+ gradient checkpointing": dict(base, gradient_checkpointing=True),
        "+ LoRA": dict(base, method="lora"),
        f"+ {half}": dict(base, precision=half),
        "batch_size ÷ 2": dict(base, batch_size=max(1, cfg.batch_size // 2)),
        "max_length ÷ 2": dict(base, max_length=max(16, cfg.max_length // 2)),
        "optimised (LoRA + checkpointing + auto precision)": optimised,
    }


def what_each_trick_saves(plans: dict[str, dict]) -> dict[str, dict]:
    st.header("What each trick saves")
    estimates = {}
    with common.user_errors():
        estimates = {label: memory_view.estimate(inputs) for label, inputs in plans.items()}
    if estimates:
        available = estimates["basic"].get("available")
        st.plotly_chart(charts.memory_comparison(estimates, available), width="stretch", key="mem.comparison")
        basic_total = estimates["basic"]["total"]
        st.markdown("  \n".join(
            f"- **{label}**: {common.human_bytes(e['total'])} ({e['precision']})"
            + (f" ({abs(1 - e['total'] / basic_total) * 100:.0f} % {'less' if e['total'] <= basic_total else 'more'} "
               "than basic)" if label != "basic" and basic_total else "")
            for label, e in estimates.items()))
    cols = st.columns(2)
    with cols[0]:
        common.lesson_box(lessons.LORA)
        if st.button("See it: full fine-tuning against LoRA", icon=":material/science:", key="mem.see_method",
                     help="Opens 4b · Experiments: the same run with every weight learning, and with LoRA."):
            state.see_experiment("method")
        common.lesson_box(lessons.CHECKPOINTING)
    with cols[1]:
        common.lesson_box(lessons.PRECISION)
        common.lesson_box(lessons.BATCH)
    return estimates


def measured(plans: dict[str, dict], estimates: dict[str, dict]) -> None:
    """One real training step of the basic and the optimised set-up, in a worker process."""
    st.header("Basic vs optimised: measured")
    optimised_label = list(plans)[-1]
    results = st.session_state.setdefault(MEASURED, {})
    st.markdown("An estimate is a model of reality; a measurement is reality. This runs **one real training "
                "step** of each set-up where training runs. Each loads the model in a separate process first, so "
                "expect a minute or more on a laptop CPU for the lesson model (the spinner counts the seconds).")
    if st.button("Measure a real step (basic and optimised)", icon=":material/speed:", type="primary"):
        base = state.plan().to_dict()
        for label in ("basic", optimised_label):
            inputs = plans[label]
            with common.user_errors(), st.spinner(f"Loading the model, then one training step, {label}…",
                                                  show_time=True):
                results[label] = state.engine().measure_memory({**base, **inputs, "lora": {**base["lora"],
                                                                                          **inputs["lora"]}})
        basic_step = results.get("basic") or {}
        if basic_step.get("tokens_per_s"):
            # The basic set-up's speed stands in for the run's, so lesson 3 can estimate time.
            st.session_state[state.TOKENS_PER_S] = basic_step["tokens_per_s"]
    table = []
    for label in ("basic", optimised_label):
        m = results.get(label) or {}
        table.append({"set-up": label,
                      "estimated memory": common.human_bytes(estimates.get(label, {}).get("total")) if estimates
                      else "—",
                      "measured peak memory": common.human_bytes(m.get("peak_bytes")) if m else "not measured",
                      "time per step": f"{m['step_seconds']:.2f} s" if m.get("step_seconds") is not None
                      else "not measured",
                      "measured on": m.get("device", "—")})
    st.dataframe(table, hide_index=True, width="stretch")
    if results:
        with st.expander("Raw measurements"):
            st.json(results)


def oom_ladder(est: dict | None) -> None:
    st.header("When it does not fit: the out-of-memory ladder")
    if not est:
        return
    advice = est.get("advice") or []
    if advice:
        st.markdown(f"Your set-up is too big for the {est.get('where', 'memory')} where training runs. Change, in "
                    "this order:")
    else:
        st.success("Your set-up fits where training runs: nothing to change.", icon=":material/check_circle:")
        st.markdown("Were it to meet a machine with only half the memory it needs, the ladder would be:")
        advice = est.get("ladder") or []
    st.markdown("\n".join(f"{i}. {step}" for i, step in enumerate(advice, 1)))
    st.caption("Climb one rung at a time, cheapest first: each rung costs a little speed or capacity. "
               "Each saving is re-estimated for this set-up.")


def page() -> None:
    common.title(__file__)
    st.markdown(
        "*Out of memory* is the error every fine-tuner meets. It is predictable: training memory is the sum of "
        "five parts, and each trick below shrinks one of them. Estimate them for your model, then measure a "
        "real training step to check the estimate."
    )
    common.lesson_box(lessons.MEMORY_ESTIMATE, expanded=True)
    cfg = your_set_up()
    n_records = (st.session_state.get(state.DATA_SUMMARY) or {}).get("records")
    est = memory_view.estimate_section(cfg, key="mem", n_records=n_records)
    plans = {}
    with common.user_errors():
        plans = setups(cfg)
    if not plans:
        return
    estimates = what_each_trick_saves(plans)
    measured(plans, estimates)
    oom_ladder(est)


page()
