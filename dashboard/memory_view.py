"""The memory estimate as a chart with a verdict, and the time estimate: shared by lesson 3 (Set up)
and lesson 7 (Memory).

Every number comes from the engine (``Engine.estimate_memory``, ``Engine.plan_summary``); this
module only chooses what to ask and how to show it.
"""

from __future__ import annotations

import json

import streamlit as st

from tunelab.core.config import RunConfig
from dashboard import charts, common, state

VERDICT_STYLE = {"fits": (st.success, ":material/check_circle:"), "tight": (st.warning, ":material/warning:")}
# The keys the memory estimate reads: a smaller cache key, so set-ups that differ elsewhere share it.
ESTIMATE_KEYS = ("model", "method", "precision", "batch_size", "max_length", "gradient_checkpointing")


def estimate_inputs(cfg: RunConfig, **changes) -> dict:
    """The part of a run config the estimate reads, with ``changes`` applied."""
    raw = cfg.to_dict()
    inputs = {k: raw[k] for k in ESTIMATE_KEYS} | {"lora": {"r": raw["lora"]["r"]}}
    lora_r = changes.pop("lora_r", None)
    if lora_r is not None:
        inputs["lora"] = {"r": lora_r}
    return inputs | changes


@st.cache_data(show_spinner="Estimating memory…", max_entries=200, ttl=30)
def _estimate(config_json: str) -> dict:
    return state.engine().estimate_memory(json.loads(config_json))


def estimate(inputs: dict) -> dict:
    """``Engine.estimate_memory`` of a (partial) run config, cached for 30 s (free memory moves)."""
    return _estimate(json.dumps(inputs, sort_keys=True))


def estimate_section(cfg: RunConfig | None, key: str, n_records: int | None, median_tokens: float | None = None,
                     measure_here: bool = False) -> dict | None:
    """Stacked bar of the estimate against the machine, the verdict, and the estimated time (with a button
    to measure a real step of this plan when ``measure_here``)."""
    if cfg is None:
        return None
    est = None
    with common.user_errors():
        est = estimate(estimate_inputs(cfg))
    if est is None:
        return None
    available, verdict = est.get("available"), est.get("verdict")
    common.chart(charts.memory_bar(est, available, verdict), key=f"{key}.memory_chart")
    show, icon = VERDICT_STYLE.get(verdict, (st.error, ":material/dangerous:"))
    show(f"**{verdict or 'unknown'}**: about {common.human_bytes(est['total'])} at the peak, "
         f"{common.human_bytes(available)} of {est.get('where', 'memory')} where training runs "
         f"({est['precision']}).", icon=icon)
    time_estimate(cfg, n_records, median_tokens, key, measure_here)
    return est


def speed_for(cfg: RunConfig) -> dict | None:
    """The speed the time estimate uses: ``Engine.training_speed`` (runs here, and lesson 3's measured
    step), else lesson 7's measured step as a rough stand-in."""
    measured = st.session_state.get(state.MEASURED_STEP)
    speed = None
    with common.user_errors():
        speed = state.engine().training_speed(cfg.to_dict(), [measured] if measured else None)
    lesson_7 = st.session_state.get(state.TOKENS_PER_S)
    if speed is None and lesson_7:
        speed = {"tokens_per_s": float(lesson_7), "source": "the step measured on 7 · Memory for its basic set-up",
                 "differs": [], "sure": "rough", "error": 0.5}
    return speed


def time_estimate(cfg: RunConfig, n_records: int | None, median_tokens: float | None = None, key: str = "time",
                  measure_here: bool = False) -> None:
    """How long the run will take, how sure that is, and where the speed comes from."""
    median = median_tokens or (st.session_state.get(state.DATA_SUMMARY) or {}).get("median_tokens")
    speed = speed_for(cfg) if n_records and median else None
    summary = None
    if speed:
        with common.user_errors():
            summary = state.engine().plan_summary(cfg.to_dict(), n_records, median, speed["tokens_per_s"])
    if summary and summary.get("seconds"):
        seconds, error = summary["seconds"], speed["error"]
        tokens = summary.get("tokens_per_example") or min(median, cfg.max_length)
        cut = f" (the median example has {median:.0f}; cut at max_length)" if median > cfg.max_length else ""
        how = (f"close: {speed['source']}, with these settings" if speed["sure"] == "close" else
               f"rough: {speed['source']}" + (f", which differs in {', '.join(speed['differs'])}"
                                              if speed["differs"] else ""))
        st.caption(f"Estimated time: **{common.human_seconds(seconds)}** — {summary['total_steps']} steps × "
                   f"{summary['effective_batch']} examples × ~{tokens:.0f} tokens{cut} at "
                   f"{speed['tokens_per_s']:,.0f} tokens/s. How sure: {how}; between "
                   f"{common.human_seconds(seconds * (1 - error))} and {common.human_seconds(seconds * (1 + error))}.")
    elif not (n_records and median):
        st.caption("Estimated time: **unknown** until the data has been counted (2 · Prepare data).")
    else:
        st.caption("Estimated time: **unknown**: nothing with this model and method has trained here yet. "
                   + ("Measure a step of this plan below, or start any short run on 4 · Fine-tune: its first "
                      "steps teach this page the speed." if measure_here else
                      "Measure a step on 3 · Set up training, or start a short run on 4 · Fine-tune."))
    if measure_here:
        measure_step(cfg, key)


def measure_step(cfg: RunConfig, key: str) -> None:
    """A real step of the planned run, measured where training runs: speed for the estimate, and peak memory."""
    measured = st.session_state.get(state.MEASURED_STEP)
    if st.button("Measure a step of this plan", key=f"{key}.measure", icon=":material/speed:",
                 help="Loads the model in a separate process and runs two real training steps of exactly this "
                      "plan on random tokens: the speed feeds the time estimate, the peak memory checks the "
                      "estimate above. It takes as long as loading the model plus two steps."):
        with common.user_errors(), st.spinner("Loading the model in a separate process, then two training steps of "
                                              "this plan…", show_time=True):
            m = state.engine().measure_memory(cfg.to_dict())
            st.session_state[state.MEASURED_STEP] = {"config": cfg.to_dict(), "tokens_per_s": m["tokens_per_s"],
                                                     "peak_bytes": m["peak_bytes"], "step_seconds": m["step_seconds"]}
            st.rerun()
    if measured:
        same = measured["config"] == cfg.to_dict()
        st.caption(f"Measured {'for this plan' if same else 'for an earlier version of this plan'}: a step takes "
                   f"{measured['step_seconds']:.1f} s ({measured['tokens_per_s']:,.0f} tokens/s), peak memory "
                   f"{common.human_bytes(measured['peak_bytes'])}.")
