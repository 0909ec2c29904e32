"""The memory estimate as a chart with a verdict, and the time estimate: shared by lesson 3 (Set up)
and lesson 7 (Memory).

Every number comes from the engine (``Engine.estimate_memory``, ``Engine.plan_summary``); this
module only chooses what to ask and how to show it.
"""

from __future__ import annotations

import json

import streamlit as st

from core.config import RunConfig
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


def estimate_section(cfg: RunConfig | None, key: str, n_records: int | None) -> dict | None:
    """Stacked bar of the estimate against the machine, the verdict, and the estimated time."""
    if cfg is None:
        return None
    est = None
    with common.user_errors():
        est = estimate(estimate_inputs(cfg))
    if est is None:
        return None
    available, verdict = est.get("available"), est.get("verdict")
    st.plotly_chart(charts.memory_bar(est, available, verdict), width="stretch", key=f"{key}.memory_chart")
    show, icon = VERDICT_STYLE.get(verdict, (st.error, ":material/dangerous:"))
    show(f"**{verdict or 'unknown'}**: about {common.human_bytes(est['total'])} at the peak, "
         f"{common.human_bytes(available)} of {est.get('where', 'memory')} where training runs "
         f"({est['precision']}).", icon=icon)
    time_estimate(cfg, n_records)
    return est


def time_estimate(cfg: RunConfig, n_records: int | None) -> None:
    """Time from a measured speed when one is known (lesson 7's measured step), for the data's size."""
    tokens_per_s = st.session_state.get(state.TOKENS_PER_S)
    median = (st.session_state.get(state.DATA_SUMMARY) or {}).get("median_tokens")
    if not tokens_per_s or not n_records or not median:
        st.caption("Estimated time: **unknown** until a training step has been measured on this machine "
                   "(lesson 7: *Measure a real step*) and the data checked (lesson 2).")
        return
    summary = None
    with common.user_errors():
        summary = state.engine().plan_summary(cfg.to_dict(), n_records, median, tokens_per_s)
    if summary is None:
        return
    st.caption(f"Estimated time: **{common.human_seconds(summary['seconds'])}** — {summary['total_steps']} steps × "
               f"{summary['effective_batch']} examples × ~{median:.0f} tokens at the measured "
               f"{tokens_per_s:,.0f} tokens/s.")
