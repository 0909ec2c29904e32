"""The memory estimate as a chart with a verdict: shared by lesson 3 (Set up) and lesson 7 (Memory).

All numbers come from ``core.memory`` (and the time from ``core.train``); this module only chooses
what to ask and how to show it.
"""

from __future__ import annotations

import streamlit as st

from core import memory, train
from core.config import RunConfig
from dashboard import charts, common

VERDICT_STYLE = {"fits": (st.success, ":material/check_circle:"), "tight": (st.warning, ":material/warning:")}


def settings_from_config(cfg: RunConfig) -> dict:
    """The estimate's inputs from a RunConfig, with 'auto' precision as this machine resolves it."""
    return {"model": cfg.model, "method": cfg.method, "precision": memory.resolve_precision(cfg.precision),
            "batch_size": cfg.batch_size, "max_length": cfg.max_length,
            "gradient_checkpointing": cfg.gradient_checkpointing, "lora_r": cfg.lora.r}


@st.cache_data(show_spinner="Estimating memory…", max_entries=200)
def estimate(model: str, method: str, precision: str, batch_size: int, max_length: int,
             gradient_checkpointing: bool, lora_r: int) -> dict:
    return memory.estimate(model, method=method, precision=precision, batch_size=batch_size, max_length=max_length,
                           gradient_checkpointing=gradient_checkpointing, lora_r=lora_r)


def estimate_section(cfg: RunConfig | None, key: str) -> dict | None:
    """Stacked bar of the estimate against this machine, the verdict, and the estimated time."""
    if cfg is None:
        return None
    settings = settings_from_config(cfg)
    est = None
    with common.user_errors():
        est = estimate(**settings)
    if est is None:
        return None
    available, where = memory.available_for_training()
    verdict = memory.verdict(est["total"], available) if available else None
    st.plotly_chart(charts.memory_bar(est, available, verdict), width="stretch", key=f"{key}.memory_chart")
    show, icon = VERDICT_STYLE.get(verdict, (st.error, ":material/dangerous:"))
    show(f"**{verdict or 'unknown'}**: about {common.human_bytes(est['total'])} at the peak, "
         f"{common.human_bytes(available)} of {where} here ({settings['precision']}).", icon=icon)
    time_estimate(cfg)
    return est


def time_estimate(cfg: RunConfig) -> None:
    """Time from a measured speed when one is known (lesson 7's measured step), for lesson 3's data size."""
    tokens_per_s = st.session_state.get(common.TOKENS_PER_S)
    n_train = st.session_state.get(common.N_TRAIN)
    median = st.session_state.get(common.DATA_MEDIAN_TOKENS)
    if not tokens_per_s or not n_train or not median:
        st.caption("Estimated time: **unknown** until a training step has been measured on this machine "
                   "(lesson 7: *Measure a real step*) and the data checked (lesson 2).")
        return
    seconds = train.estimate_seconds(cfg, n_train, median, tokens_per_s)
    st.caption(f"Estimated time: **{common.human_seconds(seconds)}** — {cfg.total_steps(n_train)} steps × "
               f"{cfg.batch_size * cfg.grad_accum} examples × ~{median:.0f} tokens at the measured "
               f"{tokens_per_s:,.0f} tokens/s.")
