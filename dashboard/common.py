"""What every page shares: session state, cached loaders, the concept box, plugin param forms.

Nothing heavy is imported at module level (no torch, no transformers): the Welcome page imports
this module and must paint at once. The functions that need the engine import it when called.
"""

from __future__ import annotations

import html
import os
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

REPO = Path(__file__).resolve().parent.parent
EMBEDDED = "embedded"

# Session-state keys shared between pages (one place, so pages agree on the names).
MODEL_NAME = "model_name"          # what the user loaded on page 1: "embedded", a Hub id or a folder
BEFORE_ANSWER = "before_answer"    # the base model's answer, kept to compare after training
DATA = "data"                      # {"path", "format", "params"} chosen on page 2
DATA_RECORDS = "data_records"      # how many records the data set has, counted on page 2
DATA_MEDIAN_TOKENS = "data_median_tokens"  # the data's median example length in tokens, from page 2
RUN_CONFIG = "run_config"          # the RunConfig as a plain dict, built on page 3
N_TRAIN = "n_train"                # training examples (the data minus the validation share), from page 3
TOKENS_PER_S = "tokens_per_s"      # a measured training speed, when one is known
CURRENT_RUN = "ft.run"             # the run page 4 looks at; pages 5 and 6 pick it first


@contextmanager
def user_errors():
    """Show a ``core.errors.UserError`` as one clear line, never as a traceback."""
    from core.errors import UserError

    try:
        yield
    except UserError as exc:
        st.error(str(exc), icon=":material/error:")


# -- cached loaders (once per process, shared by every session) ---------------------------

def folder_signature(name: str) -> tuple:
    """What changes when a model folder is rewritten: its files' names, sizes and modification times.

    A run folder stands for its final/ (as in ``core.models.resolve``), which a resumed run that
    finishes again writes anew. ``()`` for the embedded model and Hub ids, which do not change.
    """
    if name == EMBEDDED:
        return ()
    path = Path(name).expanduser()
    if (path / "final").is_dir():
        path = path / "final"
    try:
        if not path.is_dir():
            return ()
        files = [(f.name, f.stat()) for f in path.iterdir() if f.is_file()]
        return (path.stat().st_mtime_ns,) + tuple(sorted((n, s.st_size, s.st_mtime_ns) for n, s in files))
    except OSError:  # being rewritten right now: the load that follows reports it
        return ()


_signatures: dict[tuple[str, str], tuple] = {}  # (loader, name) -> the signature its cached entry was loaded at


def _fresh(loader, name: str):
    """``loader(name, signature)``: cached until the folder changes; the stale entry is dropped then."""
    signature = folder_signature(name)
    old = _signatures.get((loader.__name__, name))
    if old is not None and old != signature:
        loader.clear(name, old)
    _signatures[(loader.__name__, name)] = signature
    return loader(name, signature)


@st.cache_resource(show_spinner="Loading the model (the first load of the embedded model converts it once)…")
def _load_model(name: str, signature: tuple):
    from core.models import load_model as _load

    return _load(name)


@st.cache_resource(show_spinner="Loading the tokenizer…")
def _load_tokenizer(name: str, signature: tuple):
    from core.models import load_tokenizer as _load

    return _load(name)


def load_model(name: str = EMBEDDED):
    """``(model, tokenizer)`` from ``core.models.load_model``, loaded once per version of the folder.

    A UserError is raised, not cached.
    """
    return _fresh(_load_model, name)


def load_tokenizer(name: str = EMBEDDED):
    return _fresh(_load_tokenizer, name)


@st.cache_resource(show_spinner=False)
def registry():
    """The plugin registry (``core.registry.get_registry``)."""
    from core.registry import get_registry

    return get_registry()


def reload_registry() -> None:
    """After enabling or disabling a plugin: forget the cached registry."""
    registry.clear()


def current_model_name() -> str:
    return st.session_state.get(MODEL_NAME, EMBEDDED)


def loaded_model():
    """The model loaded on page 1 (or None): only a cache lookup if it was loaded already."""
    if MODEL_NAME not in st.session_state:
        return None
    try:
        return load_model(st.session_state[MODEL_NAME])
    except Exception:  # noqa: BLE001 - page 1 shows the error; other pages just go without
        return None


def planned_config() -> dict:
    """The run as lesson 3 set it up (a plain dict); if it was skipped, the engine's defaults with
    the choices of lessons 1 and 2 (model, data, max_length, train_on_prompt)."""
    if RUN_CONFIG in st.session_state:
        return st.session_state[RUN_CONFIG]
    from core.config import RunConfig

    raw = RunConfig().to_dict()
    raw["model"] = current_model_name()
    if DATA in st.session_state:
        raw["data"].update(st.session_state[DATA])
    for key in ("max_length", "train_on_prompt"):
        if f"data_{key}" in st.session_state:
            raw[key] = st.session_state[f"data_{key}"]
    return raw


def finished_runs() -> list[dict]:
    """Runs (newest first) that finished with a trained model in their final/ folder."""
    from core import runs

    return [r for r in runs.list_runs() if r.get("state") == "finished" and (Path(r["run_dir"]) / "final").is_dir()]


def pick_finished_run(finished: list[dict], label: str, key: str, help: str, none_option: str | None = None):
    """A select box over ``finished`` (lesson 4's run first); the chosen run's folder, or None for ``none_option``."""
    ids = [r["run_id"] for r in finished] + ([none_option] if none_option else [])
    preferred = st.session_state.get(CURRENT_RUN)
    chosen = st.selectbox(label, ids, index=ids.index(preferred) if preferred in ids else 0, key=key, help=help)
    return next((Path(r["run_dir"]) for r in finished if r["run_id"] == chosen), None)


@st.cache_data(show_spinner=False, ttl=60)
def machine() -> dict:
    """This machine: CPU cores, RAM, GPU (core.memory.machine_memory; torch is imported there, lazily)."""
    from core.memory import machine_memory

    return {"cpu_cores": os.cpu_count() or 1, **machine_memory()}


# -- formatting --------------------------------------------------------------------------

def human_bytes(n: float | None) -> str:
    """``1.2 GiB`` (core.memory's format), or ``unknown``."""
    from core.memory import fmt_bytes  # a light module: torch is imported only inside its functions

    return "unknown" if n is None else fmt_bytes(n)


def human_count(n: float | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def human_seconds(s: float | None) -> str:
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

def param_form(specs: list[dict], key: str, values: dict | None = None, container=None) -> dict:
    """Widgets for a plugin's ``params`` list; returns ``{name: value}``.

    int/float -> slider when both bounds are known, else number_input; bool -> toggle;
    choice -> selectbox; str -> text_input. The spec's ``help`` is the explanation.
    """
    box = container or st
    values = values or {}
    out = {}
    for spec in specs or []:
        name, kind = spec["name"], spec["type"]
        label = spec.get("label") or name.replace("_", " ").capitalize()
        value = values.get(name, spec.get("default"))
        help_text = spec.get("help")
        wkey = f"{key}.{name}"
        lo, hi = spec.get("min"), spec.get("max")
        if kind in ("int", "float"):
            cast = int if kind == "int" else float
            value = cast(value) if value is not None else (cast(lo) if lo is not None else cast(0))
            lo_c = cast(lo) if lo is not None else None
            hi_c = cast(hi) if hi is not None else None
            if lo_c is not None and hi_c is not None:
                step = spec.get("step") or (1 if kind == "int" else _float_step(lo_c, hi_c))
                out[name] = box.slider(label, lo_c, hi_c, value, step=cast(step), help=help_text, key=wkey)
            else:
                out[name] = box.number_input(label, min_value=lo_c, max_value=hi_c, value=value,
                                             step=None if kind == "float" else 1, help=help_text, key=wkey)
        elif kind == "bool":
            out[name] = box.toggle(label, value=bool(value), help=help_text, key=wkey)
        elif kind == "choice":
            choices = list(spec.get("choices") or [])
            index = choices.index(value) if value in choices else 0
            out[name] = box.selectbox(label, choices, index=index, help=help_text, key=wkey)
        else:
            out[name] = box.text_input(label, value="" if value is None else str(value), help=help_text, key=wkey)
    return out


def _float_step(lo: float, hi: float) -> float:
    span = hi - lo
    for step in (1.0, 0.1, 0.05, 0.01, 0.001, 0.0001):
        if span / step >= 20:
            return step
    return span / 100


# -- tokens, shown as coloured chips --------------------------------------------------------

_CHIP_COLOURS = ("#dbeafe", "#fde68a", "#bbf7d0", "#fecaca", "#e9d5ff", "#fed7aa", "#a5f3fc")


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
        if label == -100:
            style = "background:#eeeeee;color:#9a9a9a;text-decoration:line-through"
        else:
            style = "background:#bbf7d0;color:#14532d;font-weight:600"
        spans.append(f'<span style="{style};display:inline-block;margin:1px;padding:1px 3px;border-radius:4px;'
                     f'font-family:monospace;font-size:0.85rem">{_visible(piece)}</span>')
    return f'<div style="display:flex;flex-wrap:wrap;line-height:1.8">{"".join(spans)}</div>'


def decode_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token id as the text it stands for (so chips read as words, not byte symbols)."""
    return [tokenizer.decode([i]) for i in ids]


def next_step(page: str, label: str, icon: str = ":material/arrow_forward:") -> None:
    st.divider()
    st.page_link(page, label=label, icon=icon)
