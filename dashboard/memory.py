"""Lesson 7: where memory goes in training, and what each trick saves — estimated, then measured."""

import json

import streamlit as st

from core import memory
from core.config import RunConfig
from dashboard import charts, common, lessons, memory_view

st.title("7 · Memory")
st.markdown(
    "*Out of memory* is the error every fine-tuner meets. It is predictable: training memory is the sum of "
    "five parts, and each trick below shrinks one of them. Estimate them for your model, then measure a "
    "real training step to check the estimate."
)
common.lesson_box(lessons.MEMORY_ESTIMATE, expanded=True)

cfg = common.planned_config()
model_name = common.current_model_name()

# -- this set-up -------------------------------------------------------------------------------
st.header("Your set-up")
with st.container(border=True):
    c = st.columns(3) + st.columns(3)
    method = c[0].segmented_control("method", ["full", "lora"], default=cfg["method"], key="mem.method") or "full"
    precision = c[1].segmented_control("precision", ["fp32", "bf16", "fp16"],
                                       default=memory.resolve_precision(cfg["precision"]),
                                       key="mem.precision") or "fp32"
    BATCHES, LENGTHS = [1, 2, 4, 8, 16, 32, 64], [64, 128, 256, 512, 1024, 2048, 4096]
    batch_size = c[3].select_slider("batch_size", BATCHES, value=cfg["batch_size"] if cfg["batch_size"] in BATCHES
                                    else 4, key="mem.batch_size")
    max_length = c[4].select_slider("max_length", LENGTHS, value=cfg["max_length"] if cfg["max_length"] in LENGTHS
                                    else 256, key="mem.max_length")
    checkpointing = c[2].toggle("gradient_checkpointing", value=bool(cfg["gradient_checkpointing"]),
                                key="mem.checkpointing")
    lora_r = cfg["lora"]["r"]
    st.caption(f"Model: `{model_name}` (change it on lesson 1).")

current = None
with common.user_errors():
    current = RunConfig.from_dict({**cfg, "model": model_name, "method": method, "precision": precision,
                                   "batch_size": batch_size, "max_length": max_length,
                                   "gradient_checkpointing": checkpointing})
est = memory_view.estimate_section(current, key="mem")

# -- what each trick saves -----------------------------------------------------------------------
st.header("What each trick saves")
base = dict(model=model_name, method="full", precision="fp32", batch_size=batch_size, max_length=max_length,
            gradient_checkpointing=False, lora_r=lora_r)
half = "bf16" if common.machine().get("bf16") else "fp16"
optimised = dict(base, method="lora", gradient_checkpointing=True, precision=memory.resolve_precision("auto"))
SETUPS = {
    "basic": base,
    "+ gradient checkpointing": dict(base, gradient_checkpointing=True),
    "+ LoRA": dict(base, method="lora"),
    f"+ {half}": dict(base, precision=half),
    "batch_size ÷ 2": dict(base, batch_size=max(1, batch_size // 2)),
    "max_length ÷ 2": dict(base, max_length=max(16, max_length // 2)),
    "optimised (LoRA + checkpointing" + (f" + {optimised['precision']})" if optimised["precision"] != "fp32" else ")"):
        optimised,
}
estimates = {}
with common.user_errors():
    estimates = {label: memory_view.estimate(**s) for label, s in SETUPS.items()}
if estimates:
    available, where = memory.available_for_training()
    st.plotly_chart(charts.memory_comparison(estimates, available), width="stretch", key="mem.comparison")
    basic_total = estimates["basic"]["total"]
    st.markdown("  \n".join(
        f"- **{label}**: {common.human_bytes(e['total'])}"
        + (f" ({(1 - e['total'] / basic_total) * 100:.0f} % less than basic)" if label != "basic" and basic_total else "")
        for label, e in estimates.items()))
cols = st.columns(2)
with cols[0]:
    common.lesson_box(lessons.LORA)
    common.lesson_box(lessons.CHECKPOINTING)
with cols[1]:
    common.lesson_box(lessons.PRECISION)
    common.lesson_box(lessons.BATCH)

# -- measured ---------------------------------------------------------------------------------------
st.header("Basic vs optimised: measured")
optimised_label = list(SETUPS)[-1]
measured = st.session_state.setdefault("memory_measured", {})
st.markdown("An estimate is a model of reality; a measurement is reality. This runs **one real training "
            "step** of each set-up on this machine (a few seconds for the lesson model; longer for big models).")
if st.button("Measure a real step (basic and optimised)", icon=":material/speed:", type="primary"):
    for label in ("basic", optimised_label):
        s = SETUPS[label]
        with common.user_errors(), st.spinner(f"One training step, {label}…"):
            measured[label] = memory.measure_step(s["model"], method=s["method"], precision=s["precision"],
                                                  batch_size=s["batch_size"], max_length=s["max_length"],
                                                  gradient_checkpointing=s["gradient_checkpointing"],
                                                  lora_r=s["lora_r"])
    basic_step = measured.get("basic") or {}
    if basic_step.get("tokens_per_s"):
        # The basic set-up's speed stands in for the run's, so lesson 3 can estimate time.
        st.session_state[common.TOKENS_PER_S] = basic_step["tokens_per_s"]

results_path = common.REPO / "docs" / "results.json"
results = None
if results_path.is_file():
    try:
        results = json.loads(results_path.read_text())
    except ValueError:
        st.warning(f"{results_path.name} is not valid JSON; quality is left out.")


def quality_of(label: str):
    if not isinstance(results, dict):
        return None
    entry = results.get("optimised" if label == optimised_label else label) or {}
    return entry.get("quality") if isinstance(entry, dict) else None


table = []
for label in ("basic", optimised_label):
    m = measured.get(label) or {}
    row = {"set-up": label,
           "estimated memory": common.human_bytes(estimates.get(label, {}).get("total")) if estimates else "—",
           "measured peak memory": common.human_bytes(m.get("peak_bytes")) if m else "not measured",
           "time per step": f"{m['step_seconds']:.2f} s" if m.get("step_seconds") is not None else "not measured",
           "measured on": m.get("device", "—")}
    if results is not None:
        q = quality_of(label)
        row["quality"] = q if q is not None else "—"
    table.append(row)
st.dataframe(table, hide_index=True, width="stretch")
if results is None:
    st.caption("Quality (how well each set-up learns the lesson) comes from the project's own figures: run "
               "`make lesson` to train both set-ups and write docs/results.json.")
if measured:
    with st.expander("Raw measurements"):
        st.json(measured)

# -- when it does not fit -----------------------------------------------------------------------------
st.header("When it does not fit: the out-of-memory ladder")
if est:
    available, where = memory.available_for_training()
    advice = memory.oom_advice(est, available)
    if advice:
        st.markdown(f"Your set-up is too big for this machine's {where}. Change, in this order:")
    else:
        st.success("Your set-up fits here: nothing to change.", icon=":material/check_circle:")
        st.markdown("Were it to meet a machine with only half the memory it needs, the ladder would be:")
        advice = memory.oom_advice(est, est["total"] // 2)
    st.markdown("\n".join(f"{i}. {step}" for i, step in enumerate(advice, 1)))
    st.caption("Climb one rung at a time, cheapest first: each rung costs a little speed or capacity. "
               "Each saving is re-estimated for this set-up.")
