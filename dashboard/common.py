"""What every page shares: the backend badge, clear errors, settings checked where they are typed,
the concept box, plugin param forms, token chips, a run picker, charts, and plain words for numbers,
paths and samplers.

Nothing here holds a model or a rule of the engine: pages ask ``dashboard.state.engine()`` (the
facade, ``tunelab.core.engine``) for everything, by name. No torch, no transformers: the Streamlit Cloud
app imports this module without them.
"""

from __future__ import annotations

import html
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from tunelab.core.config import cautions, value_problem
from tunelab.core.errors import UserError
from dashboard import charts, course, state

REPO = Path(__file__).resolve().parent.parent
HEALTH_TTL_S = 15  # how long the sidebar trusts its last look at the backend


@contextmanager
def user_errors():
    """Show a ``tunelab.core.errors.UserError`` (``EngineMissing`` included) as one clear line, never a traceback."""
    try:
        yield
    except UserError as exc:
        st.error(str(exc), icon=":material/error:")


# -- settings, checked where they are typed -----------------------------------------------------

def refused(key: str, value, kept=None, container=None) -> bool:
    """Beside a widget: why ``value`` cannot be the run's ``key`` (the engine's own rule,
    ``tunelab.core.config.value_problem``), and what the run keeps instead. True when it was refused."""
    problem = value_problem(key, value)
    if problem:
        (container or st).error(f"Not used: {problem}." + (f" The run keeps {key} = {kept}." if kept is not None
                                                              else ""), icon=":material/block:")
    return bool(problem)


# -- where the work runs ---------------------------------------------------------------------

@st.cache_data(ttl=HEALTH_TTL_S, show_spinner=False)
def _health() -> dict:
    try:
        return state.engine().health()
    except UserError as exc:  # e.g. an unknown TUNELAB_BACKEND: the badge says so, the page goes on
        return {"ok": False, "backend": "?", "where": "nowhere", "detail": str(exc)}


def backend_badge() -> None:
    """In the sidebar: where the work runs, and whether that backend answers (checked every ~15 s)."""
    health = _health()
    colour, word = ("green", "answers") if health.get("ok") else ("red", "does not answer")
    st.sidebar.markdown(f":{colour}-badge[{health.get('backend', '?')} · {word}]  \n"
                        f"Work runs on **{health.get('where', '?')}**")
    if health.get("detail"):
        st.sidebar.caption(health["detail"])


@st.cache_data(ttl=60, show_spinner=False)
def machine() -> dict:
    """The machine training runs on (``Engine.machine``): cores, RAM, GPU, what training may use."""
    return state.engine().machine()


@st.cache_data(ttl=30, show_spinner=False)
def plugin_items(kind: str) -> list[dict]:
    """The engine's ``data_formats`` / ``samplers`` / ``evaluators`` rows (cached 30 s: the
    Plugins page clears it when a plugin is switched on or off)."""
    if kind not in ("data_formats", "samplers", "evaluators"):
        raise ValueError(f"unknown plugin kind {kind!r}")
    return getattr(state.engine(), kind)()


@st.cache_data(show_spinner=False, max_entries=20, ttl=600)
def _data_report(path: str, fmt: str, params_json: str, model: str, max_length: int) -> dict:
    import json

    return state.engine().check_data(path, fmt or None, json.loads(params_json), model, max_length)


def data_report(cfg) -> dict | None:
    """The planned run's data, checked (``Engine.check_data``: records, token lengths, how many are longer
    than max_length), cached for ten minutes; None when it cannot be read (the error is shown)."""
    import json

    report = None
    with user_errors(), st.spinner("Reading the training data: counting the examples and their tokens…"):
        report = _data_report(cfg.data.path, cfg.data.format, json.dumps(cfg.data.params, sort_keys=True),
                              cfg.model, cfg.max_length)
    if report is not None and not report.get("ok"):
        st.error(f"The planned data cannot be used: {report.get('error')} Pick another file on **2 · Prepare data**.",
                 icon=":material/error:")
        return None
    return report


def show_cautions(cfg, report: dict | None, container=None) -> None:
    """What the plan will probably regret for its data (``tunelab.core.config.cautions``), as warnings."""
    if not report:
        return
    lengths = report.get("token_lengths") or {}
    for text in cautions(cfg, report.get("kept") or report.get("records"), report.get("over_max_length"),
                         lengths.get("median"), lengths.get("p95")):
        (container or st).warning(text, icon=":material/warning:")


def finished_run_picker(label: str, key: str, help: str, none_option: str | None = None):
    """A select box over the runs that finished (lesson 4's run first), from ``Engine.list_runs``.

    Returns ``(run id or None, [finished run ids])``; None when ``none_option`` is chosen, and
    ``(None, [])`` without a widget when no run finished and there is no ``none_option``. A
    finished run's trained model is ``tunelab.core.engine.run_model(run_id)``.
    """
    finished = [r["run_id"] for r in state.engine().list_runs() if r.get("state") == "finished"]
    if not finished and none_option is None:
        return None, []
    ids = finished + ([none_option] if none_option else [])
    preferred = state.current_run()
    chosen = st.selectbox(label, ids, index=ids.index(preferred) if preferred in ids else 0, key=key, help=help)
    return (None if chosen == none_option else chosen), finished


# -- charts ------------------------------------------------------------------------------

def chart(fig, key: str, container=None) -> None:
    """A Plotly figure at full width with the short toolbar (``charts.PLOTLY_CONFIG``)."""
    (container or st).plotly_chart(fig, key=key, width="stretch", config=charts.PLOTLY_CONFIG)


# -- formatting --------------------------------------------------------------------------

SAMPLER_WORDS = {"greedy": "greedy (always the likeliest token)", "temperature": "temperature sampling",
                 "top_k": "top-k sampling", "top_p": "top-p (nucleus) sampling", "min_p": "min-p sampling",
                 "beam": "beam search"}


def sampler_words(name: str | None, params: dict | None = None) -> str:
    """A sampler and its settings in words: ``top-p (nucleus) sampling, top p 0.9, temperature 0.7``."""
    if not name:
        return "Ollama's defaults"
    parts = [SAMPLER_WORDS.get(name, name.replace("_", " "))]
    for key, value in (params or {}).items():
        if key == "repetition_penalty" and value in (1, 1.0):
            continue  # 1 = no penalty: nothing to say
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{key.replace('_', ' ')} {shown}")
    return ", ".join(parts)


def plain_path(path) -> str:
    """A path as a learner reads it: inside the repository relative to it, else with ``~`` for home."""
    p = Path(str(path))
    try:
        return str(p.resolve().relative_to(REPO))
    except (ValueError, OSError):
        pass
    try:
        return "~/" + str(p.resolve().relative_to(Path.home()))
    except (ValueError, OSError):
        return str(p)


def human_bytes(n: float | None) -> str:
    """``1.2 GiB`` (binary units, as ``free`` and ``nvidia-smi`` use), or ``unknown``."""
    if n is None:
        return "unknown"
    n, sign = abs(float(n)), "-" if n < 0 else ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    return f"{sign}{n:.1f} TiB"


def human_count(n: float | None) -> str:
    """``1.2M`` / ``34.8K`` for a count, or ``unknown``."""
    if n is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def human_seconds(s: float | None) -> str:
    """``27 s`` / ``12 min`` / ``1.5 h``, or ``unknown``."""
    if s is None:
        return "unknown"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# -- the concept box ----------------------------------------------------------------------

def concept_box(title: str, what: str, why: str, watch: str, mistakes: str, expanded: bool = False) -> None:
    """What it is / Why it matters / What to watch for / Common mistakes, next to the controls."""
    with st.expander(f"**{title}** — what, why, what to watch, common mistakes", expanded=expanded,
                     icon=":material/lightbulb:"):
        left, right = st.columns(2)
        left.markdown(f"**What it is**  \n{what}")
        left.markdown(f"**Why it matters**  \n{why}")
        right.markdown(f"**What to watch for**  \n{watch}")
        right.markdown(f"**Common mistakes**  \n{mistakes}")


def lesson_box(box: dict, expanded: bool = False) -> None:
    """A concept box from a ``dashboard.lessons`` entry."""
    concept_box(box["title"], box["what"], box["why"], box["watch"], box["mistakes"], expanded=expanded)


# -- plugin forms -------------------------------------------------------------------------

def param_form(specs: list[dict], key: str, values: dict | None = None, container=None,
               picks: dict[str, list[str]] | None = None) -> dict:
    """Widgets for a plugin's ``params`` list; returns ``{name: value}``.

    int/float -> slider when both bounds are known, else number_input; bool -> toggle;
    choice -> selectbox; str -> text_input, or a selectbox over ``picks[name]`` when the page knows the
    possible values (a CSV file's columns). The spec's ``help`` is the explanation.
    """
    box = container or st
    values, picks = values or {}, picks or {}
    out = {}
    for spec in specs or []:
        name, kind = spec["name"], spec["type"]
        label = spec.get("label") or name.replace("_", " ").capitalize()
        value = values.get(name, spec.get("default"))
        help_text, wkey = spec.get("help"), f"{key}.{name}"
        if kind == "str" and picks.get(name):
            out[name] = _pick(box, spec, label, value, picks[name], help_text, wkey)
        elif kind in ("int", "float"):
            out[name] = _number_widget(box, spec, label, value, help_text, wkey)
        elif kind == "bool":
            out[name] = box.toggle(label, value=bool(value), help=help_text, key=wkey)
        elif kind == "choice":
            choices = list(spec.get("choices") or [])
            index = choices.index(value) if value in choices else 0
            out[name] = box.selectbox(label, choices, index=index, help=help_text, key=wkey)
        else:
            out[name] = box.text_input(label, value="" if value is None else str(value), help=help_text, key=wkey)
    return out


def _pick(box, spec: dict, label: str, value, options: list[str], help_text, wkey: str) -> str:
    """A select box over the known values; an optional one (default "") also offers none."""
    optional = spec.get("default") == ""
    choices = ([""] if optional else []) + [o for o in options if o]
    if value not in choices:  # the default is not in this file: guess by name, else the first
        value = next((o for o in choices if o and str(spec.get("default") or "?").lower() in o.lower()),
                     choices[0])
    return box.selectbox(label, choices, index=choices.index(value), help=help_text, key=wkey,
                         format_func=lambda o: o or "(none)")


def _number_widget(box, spec: dict, label: str, value, help_text, wkey: str):
    """A slider when both bounds are known, else a number box."""
    kind, lo, hi = spec["type"], spec.get("min"), spec.get("max")
    cast = int if kind == "int" else float
    value = cast(value) if value is not None else (cast(lo) if lo is not None else cast(0))
    lo_c = cast(lo) if lo is not None else None
    hi_c = cast(hi) if hi is not None else None
    if lo_c is not None and hi_c is not None:
        step = spec.get("step") or (1 if kind == "int" else _float_step(lo_c, hi_c))
        return box.slider(label, lo_c, hi_c, value, step=cast(step), help=help_text, key=wkey)
    return box.number_input(label, min_value=lo_c, max_value=hi_c, value=value,
                            step=None if kind == "float" else 1, help=help_text, key=wkey)


def _float_step(lo: float, hi: float) -> float:
    span = hi - lo
    for step in (1.0, 0.1, 0.05, 0.01, 0.001, 0.0001):
        if span / step >= 20:
            return step
    return span / 100


# -- tokens, shown as coloured chips --------------------------------------------------------

_CHIP_COLOURS = ("#dbeafe", "#fde68a", "#bbf7d0", "#fecaca", "#e9d5ff", "#fed7aa", "#a5f3fc")
IGNORED = -100  # the label of a token the loss skips (core.data.IGNORE_INDEX), as encode_example returns it


def _visible(piece: str) -> str:
    """A token's text with its whitespace made visible."""
    return html.escape(piece).replace(" ", "·").replace("\n", "↵").replace("\t", "→") or "∅"


def token_chips_html(pieces: list[str], ids: list[int]) -> str:
    """Alternating colours so token boundaries are visible; each chip shows its id underneath."""
    chips = []
    for i, (piece, tid) in enumerate(zip(pieces, ids)):
        colour = _CHIP_COLOURS[i % len(_CHIP_COLOURS)]
        chips.append(
            f'<span style="display:inline-flex;flex-direction:column;align-items:center;margin:2px;'
            f'padding:2px 6px;border-radius:6px;background:{colour};font-family:monospace;font-size:0.9rem">'
            f'<span>{_visible(piece)}</span><span style="font-size:0.65rem;color:#555">{tid}</span></span>'
        )
    return f'<div style="line-height:2.2">{"".join(chips)}</div>'


def masked_tokens_html(pieces: list[str], labels: list[int]) -> str:
    """Prompt tokens (label -100, not trained on) grey and struck; response tokens green."""
    spans = []
    for piece, label in zip(pieces, labels):
        if label == IGNORED:
            style = "background:#eeeeee;color:#9a9a9a;text-decoration:line-through"
        else:
            style = "background:#bbf7d0;color:#14532d;font-weight:600"
        spans.append(f'<span style="{style};display:inline-block;margin:1px;padding:1px 3px;border-radius:4px;'
                     f'font-family:monospace;font-size:0.85rem">{_visible(piece)}</span>')
    return f'<div style="display:flex;flex-wrap:wrap;line-height:1.8">{"".join(spans)}</div>'


def go_to(page: str, label: str, icon: str = ":material/arrow_forward:") -> None:
    """A divider and a link to another page, at the bottom of a page."""
    st.divider()
    st.page_link(page, label=label, icon=icon)


def title(page_file: str) -> None:
    """The page's title, from the lesson table (``dashboard/course.py``)."""
    st.title(course.lesson(page_file).title)


def next_step(page_file: str) -> None:
    """The link to the lesson after this page's, from the lesson table (nothing after the last)."""
    label = course.next_label(page_file)
    if label:
        go_to(course.following(page_file).path, label)
