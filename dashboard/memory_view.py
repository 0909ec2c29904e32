"""The memory estimate as a chart with a verdict: shared by lesson 3 (Set up) and lesson 7 (Memory).

All numbers come from ``core.memory``; this module only chooses what to ask and how to show it.
"""

from __future__ import annotations

import inspect

import streamlit as st

from dashboard import charts, common

VERDICT_STYLE = {"fits": (st.success, ":material/check_circle:"), "tight": (st.warning, ":material/warning:")}


def call_supported(fn, *args, **kwargs):
    """Call ``fn`` with the keyword arguments it accepts (core.memory grows options over time)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs)
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params})


def resolved_precision(precision: str) -> str:
    """'auto' as this machine resolves it (core.memory.resolve_precision)."""
    resolve = common.engine_function("memory", "resolve_precision") or common.engine_function("train", "resolve_precision")
    return resolve(precision) if resolve else (precision if precision != "auto" else "fp32")


def settings_from_config(config) -> dict:
    """The estimate's inputs from a RunConfig (object or dict)."""
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    lora = get("lora")
    lora_r = lora["r"] if isinstance(lora, dict) else lora.r
    return {"model": get("model"), "method": get("method"), "precision": resolved_precision(get("precision")),
            "batch_size": get("batch_size"), "max_length": get("max_length"),
            "gradient_checkpointing": get("gradient_checkpointing"), "lora_r": lora_r}


@st.cache_data(show_spinner="Estimating memory…", max_entries=200)
def estimate(model: str, method: str, precision: str, batch_size: int, max_length: int,
             gradient_checkpointing: bool, lora_r: int) -> dict:
    memory = common.engine("memory")
    return call_supported(memory.estimate, model, method=method, precision=precision, batch_size=batch_size,
                          max_length=max_length, gradient_checkpointing=gradient_checkpointing, lora_r=lora_r)


def machine_available() -> tuple[float | None, str]:
    """(bytes available for training, where): the GPU's memory when there is one, else free RAM."""
    memory = common.engine("memory")
    info = memory.machine_memory()
    if info.get("cuda"):
        return info.get("gpu_total"), f"GPU memory ({info.get('gpu_name', 'GPU')})"
    return info.get("ram_available") or info.get("ram_total"), "free RAM"


def estimate_section(config, key: str) -> dict | None:
    """Stacked bar of the estimate against this machine, the verdict, and the estimated time."""
    memory = common.engine("memory")
    if memory is None or not hasattr(memory, "estimate"):
        common.missing("core.memory.estimate", "the memory this run needs (weights, gradients, optimizer, "
                       "activations, logits) against this machine's memory, marked fits / tight / won't fit")
        return None
    if config is None:
        return None
    settings = settings_from_config(config)
    est = None
    with common.user_errors():
        est = estimate(**settings)
    if est is None:
        return None
    available, where = machine_available()
    verdict = memory.verdict(est["total"], available) if available else None
    st.plotly_chart(charts.memory_bar(est, available, verdict), width="stretch", key=f"{key}.memory_chart")
    show, icon = VERDICT_STYLE.get(verdict, (st.error, ":material/dangerous:"))
    show(f"**{verdict or 'unknown'}**: about {common.human_bytes(est['total'])} at the peak, "
         f"{common.human_bytes(available)} of {where} here ({settings['precision']}).", icon=icon)
    time_estimate(config, est)
    return est


def time_estimate(config, est: dict) -> None:
    """Time from a measured speed when one is known (lesson 7's measured step, or a finished run)."""
    tokens_per_s = st.session_state.get(common.TOKENS_PER_S)
    steps = st.session_state.get("total_steps")
    median = st.session_state.get("data_median_tokens")
    if not tokens_per_s or not steps or not median:
        st.caption("Estimated time: **unknown** until a training step has been measured on this machine "
                   "(lesson 7: *Measure a real step*) and the data checked (lesson 2).")
        return
    get = (lambda k: config[k]) if isinstance(config, dict) else (lambda k: getattr(config, k))
    tokens = steps * get("batch_size") * get("grad_accum") * median  # tokens the run will process
    st.caption(f"Estimated time: **{common.human_seconds(tokens / tokens_per_s)}** — {steps} steps × "
               f"{get('batch_size') * get('grad_accum')} examples × ~{median:.0f} tokens at the measured "
               f"{tokens_per_s:,.0f} tokens/s.")
