"""Plotly figure builders: pure functions from plain data to ``go.Figure`` (no Streamlit, testable)."""

from __future__ import annotations

import plotly.graph_objects as go

# Memory parts, bottom to top, with one colour each (the same on every chart).
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "logits")
MEMORY_COLOURS = {"weights": "#2f6fdb", "gradients": "#f59e0b", "optimizer": "#ef4444",
                  "activations": "#10b981", "logits": "#8b5cf6"}
MEMORY_LABELS = {"weights": "Weights", "gradients": "Gradients", "optimizer": "Optimizer state (Adam)",
                 "activations": "Activations", "logits": "Logits"}
VERDICT_COLOURS = {"fits": "#16a34a", "tight": "#d97706", "won't fit": "#dc2626", "wont_fit": "#dc2626"}
GIB = 1024 ** 3


def _layout(fig: go.Figure, title: str | None, height: int = 320, **kwargs) -> go.Figure:
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      template="plotly_white", **kwargs)
    return fig


def token_length_histogram(lengths: list[int], max_length: int | None = None) -> go.Figure:
    """How long the examples are in tokens, with the ``max_length`` cut as a vertical line."""
    fig = go.Figure(go.Histogram(x=list(lengths), name="examples", marker_color="#2f6fdb",
                                 nbinsx=min(60, max(10, len(lengths) // 5 or 10)),
                                 hovertemplate="%{x} tokens: %{y} examples<extra></extra>"))
    if max_length:
        over = sum(n > max_length for n in lengths)
        fig.add_vline(x=max_length, line=dict(color="#dc2626", width=2, dash="dash"),
                      annotation_text=f"max_length = {max_length} ({over} cut)",
                      annotation_position="top right")
    return _layout(fig, None, xaxis_title="tokens per example", yaxis_title="examples", bargap=0.05,
                   showlegend=False)


def lr_schedule_chart(lrs: list[float], warmup_steps: int | None = None) -> go.Figure:
    """The learning rate at each optimizer step."""
    steps = list(range(1, len(lrs) + 1))
    fig = go.Figure(go.Scatter(x=steps, y=list(lrs), mode="lines", name="learning rate",
                               line=dict(color="#2f6fdb", width=3), fill="tozeroy",
                               hovertemplate="step %{x}: lr %{y:.2e}<extra></extra>"))
    if warmup_steps:
        fig.add_vrect(x0=0.5, x1=warmup_steps + 0.5, fillcolor="#f59e0b", opacity=0.12, line_width=0,
                      annotation_text="warm-up", annotation_position="top left")
    return _layout(fig, None, xaxis_title="optimizer step", yaxis_title="learning rate",
                   yaxis_tickformat=".1e", showlegend=False)


def memory_bar(parts: dict, available: float | None = None, verdict: str | None = None,
               label: str = "this set-up") -> go.Figure:
    """One horizontal stacked bar (GiB) of where training memory goes, against the machine's memory."""
    fig = go.Figure()
    for part in MEMORY_PARTS:
        value = (parts.get(part) or 0) / GIB
        fig.add_trace(go.Bar(y=[label], x=[value], name=MEMORY_LABELS[part], orientation="h",
                             marker_color=MEMORY_COLOURS[part],
                             hovertemplate=f"{MEMORY_LABELS[part]}: %{{x:.2f}} GiB<extra></extra>"))
    if available:
        fig.add_vline(x=available / GIB, line=dict(color=VERDICT_COLOURS.get(verdict, "#111"), width=3),
                      annotation_text=f"this machine: {available / GIB:.1f} GiB", annotation_position="top")
    total = (parts.get("total") or sum((parts.get(p) or 0) for p in MEMORY_PARTS)) / GIB
    if parts.get("total"):
        # The parts are never all alive at once (backward frees activations as gradients appear),
        # so the peak is below their sum: mark it.
        fig.add_vline(x=total, line=dict(color="#111", width=2, dash="dot"),
                      annotation_text=f"peak ≈ {total:.2f} GiB", annotation_position="bottom")
    title = f"peak ≈ {total:.2f} GiB" + (f" — {verdict}" if verdict else "")
    return _layout(fig, title, height=230, barmode="stack", xaxis_title="GiB",
                   legend=dict(orientation="h", y=-0.45))


def memory_comparison(setups: dict[str, dict], available: float | None = None) -> go.Figure:
    """Several set-ups side by side, each a stacked bar of memory parts (GiB)."""
    labels = list(setups)
    fig = go.Figure()
    for part in MEMORY_PARTS:
        fig.add_trace(go.Bar(x=labels, y=[(setups[s].get(part) or 0) / GIB for s in labels],
                             name=MEMORY_LABELS[part], marker_color=MEMORY_COLOURS[part],
                             hovertemplate="%{x}: %{y:.2f} GiB<extra>" + MEMORY_LABELS[part] + "</extra>"))
    peaks = [setups[s].get("total") for s in labels]
    if all(peaks):
        fig.add_trace(go.Scatter(x=labels, y=[p / GIB for p in peaks], mode="markers", name="peak (estimated)",
                                 marker=dict(symbol="line-ew-open", size=36, color="#111", line=dict(width=3)),
                                 hovertemplate="%{x}: peak %{y:.2f} GiB<extra></extra>"))
    if available:
        fig.add_hline(y=available / GIB, line=dict(color="#111", width=2, dash="dot"),
                      annotation_text=f"this machine: {available / GIB:.1f} GiB")
    return _layout(fig, None, height=380, barmode="stack", yaxis_title="GiB",
                   legend=dict(orientation="h", y=-0.25))
