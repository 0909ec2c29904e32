"""Plotly figure builders: pure functions from plain data to ``go.Figure`` (no Streamlit, testable)."""

from __future__ import annotations

import plotly.graph_objects as go

from tunelab.core.curves import ema  # the smoothing the Fine-tune lesson reads its curves with

# Memory parts, bottom to top, with one colour each (the same on every chart).
MEMORY_PARTS = ("weights", "gradients", "optimizer", "activations", "logits")
MEMORY_COLOURS = {"weights": "#2f6fdb", "gradients": "#f59e0b", "optimizer": "#ef4444",
                  "activations": "#10b981", "logits": "#8b5cf6"}
MEMORY_LABELS = {"weights": "Weights", "gradients": "Gradients", "optimizer": "Optimizer state (Adam)",
                 "activations": "Activations", "logits": "Logits"}
VERDICT_COLOURS = {"fits": "#16a34a", "tight": "#d97706", "won't fit": "#dc2626", "wont_fit": "#dc2626"}
GIB = 1024 ** 3


# Plotly's toolbar (the modebar) sits in the figure's top-right corner, over whatever is there. Every chart
# keeps a band that high free at its top and starts its title and any legend above the plot below it.
MODEBAR_PX = 34
TITLE_PX, LEGEND_PX = 26, 28
# The toolbar, shortened to what a learner uses: zoom, pan, reset, download as PNG (st.plotly_chart's config).
PLOTLY_CONFIG = {"displaylogo": False,
                 "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d", "toggleSpikelines",
                                            "hoverClosestCartesian", "hoverCompareCartesian"]}


def _layout(fig: go.Figure, title: str | None, height: int = 320, legend_above: bool = False,
            **kwargs) -> go.Figure:
    """Height, template and margins; the title (left) and a legend above the plot stay clear of the toolbar."""
    top = MODEBAR_PX + (TITLE_PX if title else 0) + (LEGEND_PX if legend_above else 0)
    if title:
        kwargs["title"] = dict(text=title, x=0, xanchor="left", xref="paper", yref="container", y=1,
                               yanchor="top", pad=dict(t=MODEBAR_PX), font=dict(size=15))
    if legend_above:
        kwargs["legend"] = dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom",
                                **kwargs.get("legend", {}))
    fig.update_layout(height=height + top - 10, margin=dict(l=10, r=10, t=top, b=10), template="plotly_white",
                      **kwargs)
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


# -- lesson 4: training curves ------------------------------------------------------------------

LOSS_COLOUR, VAL_COLOUR = "#2f6fdb", "#dc2626"
RUN_COLOURS = ("#2f6fdb", "#dc2626", "#16a34a", "#d97706", "#8b5cf6", "#0891b2", "#db2777", "#4b5563")


def _xy(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def loss_chart(rows: list[dict], smoothing: float = 0.6, total_steps: int | None = None) -> go.Figure:
    """Training loss (faint raw line + smoothed line) and validation loss (markers) against the step."""
    steps, loss = _xy(rows, "loss")
    val_steps, val_loss = _xy(rows, "eval_loss")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=steps, y=loss, mode="lines+markers" if len(loss) < 30 else "lines",
                             name="training loss (raw)", line=dict(color=LOSS_COLOUR, width=1), opacity=0.35,
                             marker=dict(size=4), hovertemplate="step %{x}: loss %{y:.4f}<extra>raw</extra>"))
    fig.add_trace(go.Scatter(x=steps, y=ema(loss, smoothing), mode="lines", name="training loss (smoothed)",
                             line=dict(color=LOSS_COLOUR, width=3),
                             hovertemplate="step %{x}: smoothed %{y:.4f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=val_steps, y=val_loss, mode="lines+markers", name="validation loss",
                             line=dict(color=VAL_COLOUR, width=2, dash="dot"), marker=dict(size=8),
                             hovertemplate="step %{x}: validation loss %{y:.4f}<extra></extra>"))
    xaxis = dict(title="optimizer step", rangemode="tozero")
    if total_steps:
        xaxis["range"] = [0, total_steps * 1.02]
    return _layout(fig, None, height=360, xaxis=xaxis, yaxis_title="loss (lower is better)", legend_above=True)


def metric_chart(rows: list[dict], key: str, label: str, colour: str = "#2f6fdb", log_y: bool = False,
                 fmt: str = ".3g") -> go.Figure:
    """One metric of the metrics rows (lr, grad_norm, tokens_per_s) against the step."""
    steps, values = _xy(rows, key)
    fig = go.Figure(go.Scatter(x=steps, y=values, mode="lines+markers" if len(values) < 30 else "lines",
                               name=label, line=dict(color=colour, width=2), marker=dict(size=4),
                               hovertemplate=f"step %{{x}}: %{{y:{fmt}}}<extra>{label}</extra>"))
    return _layout(fig, label, height=230, xaxis_title="step", yaxis_type="log" if log_y else None,
                   yaxis_tickformat=fmt if not log_y else None, showlegend=False)


def runs_overlay_chart(curves: dict[str, list[dict]], smoothing: float = 0.6) -> go.Figure:
    """Several runs' smoothed training loss (solid) and validation loss (dotted), one colour per run."""
    fig = go.Figure()
    for i, (name, rows) in enumerate(curves.items()):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        steps, loss = _xy(rows, "loss")
        fig.add_trace(go.Scatter(x=steps, y=ema(loss, smoothing), mode="lines", name=f"{name} · training",
                                 line=dict(color=colour, width=2), legendgroup=name,
                                 hovertemplate="step %{x}: %{y:.4f}<extra>" + name + "</extra>"))
        val_steps, val_loss = _xy(rows, "eval_loss")
        if val_loss:
            fig.add_trace(go.Scatter(x=val_steps, y=val_loss, mode="lines+markers", name=f"{name} · validation",
                                     line=dict(color=colour, width=2, dash="dot"), legendgroup=name,
                                     hovertemplate="step %{x}: %{y:.4f}<extra>" + name + " (validation)</extra>"))
    return _layout(fig, None, height=360, xaxis_title="optimizer step", yaxis_title="loss",
                   legend=dict(orientation="h", y=-0.2))


def experiment_chart(curves: dict[str, list[dict]], smoothing: float = 0.6, total_steps: int | None = None,
                     hints: dict[str, str] | None = None) -> go.Figure:
    """An experiment's runs overlaid, one colour per value: the raw training loss faint, smoothed solid,
    validation dashed (where a run has one). ``curves``: value label -> metrics rows."""
    fig = go.Figure()
    for i, (label, rows) in enumerate(curves.items()):
        colour, name = RUN_COLOURS[i % len(RUN_COLOURS)], label + (f" ({hints[label]})" if (hints or {}).get(label) else "")
        steps, loss = _xy(rows, "loss")
        fig.add_trace(go.Scatter(x=steps, y=loss, mode="lines+markers", name=f"{name} · raw", showlegend=False,
                                 line=dict(color=colour, width=1), opacity=0.3, marker=dict(size=4),
                                 legendgroup=label, hovertemplate="step %{x}: %{y:.4f}<extra>" + label + " raw</extra>"))
        fig.add_trace(go.Scatter(x=steps, y=ema(loss, smoothing), mode="lines", name=f"{name} · training",
                                 line=dict(color=colour, width=3), legendgroup=label,
                                 hovertemplate="step %{x}: %{y:.4f}<extra>" + label + "</extra>"))
        val_steps, val_loss = _xy(rows, "eval_loss")
        if val_loss:
            fig.add_trace(go.Scatter(x=val_steps, y=val_loss, mode="lines+markers", name=f"{name} · validation",
                                     line=dict(color=colour, width=2, dash="dash"), marker=dict(size=9, symbol="square"),
                                     legendgroup=label,
                                     hovertemplate="step %{x}: %{y:.4f}<extra>" + label + " validation</extra>"))
    xaxis = dict(title="optimizer step", rangemode="tozero", dtick=1 if (total_steps or 0) <= 20 else None)
    if total_steps:
        xaxis["range"] = [0.5, total_steps + 0.5]
    return _layout(fig, None, height=380, xaxis=xaxis, yaxis_title="loss (lower is better)", legend_above=True)


# -- lesson 5: the next-token distribution -------------------------------------------------------

def next_token_chart(dist: dict, sampler: str = "sampler") -> go.Figure:
    """The most likely next tokens: the model's probabilities (grey) and what the sampler draws from (blue)."""
    # Quoted, and numbered when two tokens read the same (Plotly would merge equal category labels).
    labels, seen = [], {}
    for t in dist["tokens"]:
        seen[t] = seen.get(t, 0) + 1
        labels.append(f"'{t}'" + (f" ({seen[t]})" if seen[t] > 1 else ""))
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=dist["before"], name="model's probabilities (before)", marker_color="#9ca3af",
                         customdata=dist["ids"], hovertemplate="%{x} (id %{customdata}): %{y:.1%}<extra>before</extra>"))
    fig.add_trace(go.Bar(x=labels, y=dist["after"], name=f"after {sampler}", marker_color="#2f6fdb",
                         customdata=dist["ids"], hovertemplate="%{x} (id %{customdata}): %{y:.1%}<extra>after</extra>"))
    return _layout(fig, None, height=340, barmode="group", yaxis_title="probability", yaxis_tickformat=".0%",
                   xaxis_title="next token (␣ = space, ⏎ = new line)", legend_above=True, bargap=0.2)


# -- lesson 6: evaluation ----------------------------------------------------------------------

BASE_COLOUR, TUNED_COLOUR = "#9ca3af", "#2f6fdb"


def eval_metric_chart(evaluator: str, base: dict, tuned: dict, higher_is_better: bool = True) -> go.Figure:
    """Base vs tuned for one evaluator's metrics, as grouped bars."""
    keys = [k for k in tuned if k != "error" and k in base]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=keys, y=[base[k] for k in keys], name="base", marker_color=BASE_COLOUR,
                         text=[_short(base[k]) for k in keys], textposition="outside",
                         hovertemplate="%{x}: %{y:.4g}<extra>base</extra>"))
    fig.add_trace(go.Bar(x=keys, y=[tuned[k] for k in keys], name="tuned", marker_color=TUNED_COLOUR,
                         text=[_short(tuned[k]) for k in keys], textposition="outside",
                         hovertemplate="%{x}: %{y:.4g}<extra>tuned</extra>"))
    title = f"{evaluator} ({'higher' if higher_is_better else 'lower'} is better)"
    return _layout(fig, title, height=300, barmode="group", legend=dict(orientation="h", y=-0.15),
                   yaxis=dict(rangemode="tozero"))


def _short(value) -> str:
    return "n/a" if value is None else f"{value:.3g}"
