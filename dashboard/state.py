"""The one owner of the planned run and of every session key the pages share.

LLaMA-Factory's webui turns widget state into engine arguments in one function; here the planned
run is one ``RunConfig`` kept in the session, read with :func:`plan` and changed with
:func:`update_plan`. No page keeps its own copy, and no page invents a session key: they are all
declared below.

The engine the pages talk to comes from :func:`engine`: local, or the GPU box named in the
environment or in the app's ``[backend]`` secrets (Streamlit Community Cloud).
"""

from __future__ import annotations

import uuid

import streamlit as st

from tunelab.core.config import RunConfig
from tunelab.core.engine import Engine, get_engine

EMBEDDED = "embedded"

# -- every session key shared between pages ------------------------------------------------------
PLAN = "plan"                      # the planned run: a RunConfig as a plain dict (see plan / update_plan)
PLAN_SET_UP = "plan_set_up"        # True once lesson 3 has been visited (the plan is no longer only defaults)
MODEL_NAME = "model_name"          # the model loaded on page 1: "embedded", a Hub id or a folder
BEFORE_ANSWER = "before_answer"    # the base model's answer on page 1, kept to compare after training
BEFORE_PROMPT = "before_prompt"    # the question that answer was for
DATA_SUMMARY = "data_summary"      # {"records", "median_tokens"} of the data checked on page 2
TOKENS_PER_S = "tokens_per_s"      # a measured training speed (lesson 7), for the time estimate
MEASURED_STEP = "measured_step"    # lesson 3's measured step: {"config", "tokens_per_s", "peak_bytes", "step_seconds"}
CURRENT_RUN = "current_run"        # the run page 4 looks at; pages 5, 6 and export pick it first
OWNER = "owner"                    # this browser session's id: in a shared deployment, whose runs are whose
UPLOADS = "uploads"                # paths of the files this session uploaded (Evaluate may read only these)
GEN_ANSWERS = "gen_answers"        # the last answers on page 5 (and the sampler they were made with)
# keys one page keeps for itself, declared here all the same so no two pages collide
FT_FIGURES = "ft.figures"          # page 4: the live charts, rebuilt only when a new metrics row arrived
FT_FOLLOWED = "ft.followed"        # page 4: the run the picker and the overlay were last moved to
FT_DELETING = "ft.deleting"        # page 4: the run whose Delete waits for "Yes, delete"
EXPORT_FAILED = "export_failed"    # export page: the last failed check {"run_id", "type", "message", "check"}
EXP_SETTING = "exp.setting"        # experiments page: the setting to vary (a "See it" link sets it)
EXP_VALUES = "exp.values"          # experiments page: its values, as text ("1e-4"); a "See it" link sets them
EXP_BUDGET = "exp.budget"          # experiments page: the time budget in minutes
EXP_CURRENT = "exp.current"        # experiments page: the experiment it shows (also ?experiment= in the address)
EXP_ANSWERS = "exp.answers"        # experiments page: {exp id: {label: {"answer", "perplexity"}}}, made once
EXP_FIGURE = "exp.figure"          # experiments page: the live chart, rebuilt only when a new metrics row arrived
MEMORY_MEASURED = "memory_measured"  # page 7: the last measured steps
CATALOG_RESULT = "catalog.result.{package}"  # page 8: the outcome of installing a catalog package
EXPORT_RESULT = "export_result"    # export page: the last export's result {"run_id", "type", "result"}


def engine() -> Engine:
    """The engine for this deployment: ``TUNELAB_BACKEND`` et al., else the ``[backend]`` secrets."""
    return get_engine(backend_secrets())


def backend_secrets() -> dict:
    """The ``[backend]`` table of ``.streamlit/secrets.toml`` (or Cloud's secrets box); {} when there is none."""
    try:
        return dict(st.secrets.get("backend", {}))
    except Exception:  # noqa: BLE001 - no secrets file at all is the normal laptop case
        return {}


def owner() -> str:
    """A stable id for this browser session (runs it starts are recorded as its own)."""
    if OWNER not in st.session_state:
        st.session_state[OWNER] = uuid.uuid4().hex[:12]
    return st.session_state[OWNER]


# -- the planned run -----------------------------------------------------------------------------

def plan() -> RunConfig:
    """The run as the lessons have set it up so far: the engine's defaults, then every change made."""
    raw = st.session_state.get(PLAN)
    if raw is None:
        return RunConfig()
    return RunConfig.from_dict(raw, "the planned run")


def update_plan(**changes) -> RunConfig:
    """Change keys of the planned run; dotted keys (``data.path``, ``lora.r``) are passed as
    ``data__path=...`` or in a dict: ``update_plan(**{"data.path": p})``. Bad values raise UserError
    and leave the plan as it was."""
    cfg = plan()
    for key, value in changes.items():
        cfg.set(key.replace("__", "."), value, "the planned run")
    cfg.validate("the planned run")
    st.session_state[PLAN] = cfg.to_dict()
    return cfg


def model_name() -> str:
    """The model chosen on page 1 (the planned run's model)."""
    return st.session_state.get(MODEL_NAME, EMBEDDED)


def set_model(name: str) -> None:
    st.session_state[MODEL_NAME] = name
    st.session_state.pop(BEFORE_ANSWER, None)  # a new model: its 'before' answer is still to come
    update_plan(model=name)


def remember_upload(path: str) -> None:
    uploads = st.session_state.setdefault(UPLOADS, [])
    if path not in uploads:
        uploads.append(path)


def uploads() -> list[str]:
    return list(st.session_state.get(UPLOADS, []))


def see_experiment(setting: str, values: list[str] | None = None) -> None:
    """Open the Experiments page with ``setting`` and ``values`` (text; default: the values that teach,
    from ``Engine.experiment_settings``) filled in: what a "See it" link does."""
    if values is None:
        rows = {row["key"]: row for row in engine().experiment_settings(plan().to_dict())}
        values = [s["text"] for s in rows[setting]["suggestions"]]
    st.session_state[EXP_SETTING] = setting
    st.session_state[EXP_VALUES] = list(values)
    st.switch_page("dashboard/experiments.py")


def current_run() -> str | None:
    return st.session_state.get(CURRENT_RUN)


def set_current_run(run_id: str | None) -> None:
    if run_id is None:
        st.session_state.pop(CURRENT_RUN, None)
    else:
        st.session_state[CURRENT_RUN] = run_id
