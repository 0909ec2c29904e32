"""Lesson 2: choose a data set, check it, and see exactly which tokens the model will learn from.

The engine reads and checks the file (``detect_format``, ``check_data``, ``load_records``,
``encode_example``); the page shows the report and writes the choice into the planned run.
"""

import html
import json
from pathlib import Path

import streamlit as st

from dashboard import charts, common, lessons, state

LESSON_SET = "data/science_tutor_train.alpaca.json"
REAL_WORLD = common.REPO / "data" / "real-world"
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".txt")
LENGTH_CHOICES = (64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def shown_path(path: str) -> str:
    """Inside the repository: relative (so a config travels to a GPU machine); elsewhere absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(common.REPO))
    except ValueError:
        return str(resolved)


def choose_file() -> str | None:
    """The lesson set, a bundled real-world sample, or an upload (kept for this session)."""
    st.header("Choose the data")
    real_world = sorted(p.name for p in REAL_WORLD.glob("*") if p.is_file() and p.suffix in DATA_SUFFIXES) \
        if REAL_WORLD.is_dir() else []
    sources = (["The lesson set: a science tutor"] + (["A real-world sample"] if real_world else [])
               + ["Upload your own file"])
    source = st.radio("Source", sources, horizontal=True, key="data.source")
    if source.startswith("The lesson set"):
        st.caption("Questions a curious student asks, answered by a patient tutor, in the Alpaca format "
                   "(instruction / input / output). The fine-tune teaches the model this tutor's voice.")
        return LESSON_SET
    if source.startswith("A real-world"):
        chosen = st.selectbox("Sample", real_world, key="data.real_world",
                              help="Files in the shapes real fine-tuning users bring, from the LLaMA-Factory "
                                   "repository (licences in data/real-world/README.md).")
        return shown_path(str(REAL_WORLD / chosen))
    upload = st.file_uploader("A data file", type=[s.lstrip(".") for s in DATA_SUFFIXES], key="data.upload",
                              help="Alpaca or ShareGPT JSON, JSON lines, CSV with prompt/response columns, or plain "
                                   "text. It is kept under runs/uploads/ for a day.")
    if upload is None:
        return None
    path = None
    with common.user_errors():
        path = shown_path(state.engine().save_upload(upload.name, upload.getvalue()))
        state.remember_upload(path)  # Evaluate may read this session's uploads, and nothing else of yours
        st.caption(f"Saved as `{path}`.")
    return path


def choose_format(path: str) -> tuple[str, dict] | None:
    """The format plugin that reads the file (detected, changeable) and its options."""
    st.header("Read it: the format")
    common.lesson_box(lessons.DATA_FORMAT)
    formats = {}
    with common.user_errors():
        formats = {f["name"]: f for f in common.plugin_items("data_formats")}
    if not formats:
        st.error("No data-format plugin is loaded; see **8 · Plugins** for what failed.")
        return None
    detected = None
    with common.user_errors():
        detected = state.engine().detect_format(path)
    names = list(formats)
    left, right = st.columns([1, 2])
    fmt_name = left.selectbox("Format", names, index=names.index(detected) if detected in names else 0,
                              key=f"data.format.{Path(path).name}",
                              format_func=lambda n: n + ("  (detected)" if n == detected else ""),
                              help="Detected from the file's first bytes; change it if the guess is wrong.")
    fmt = formats[fmt_name]
    right.markdown(f"**{fmt_name}** — {fmt['description']}  \n"
                   f"Reads: {', '.join(fmt['extensions'])} · plugin: `{fmt['owner']}`")
    column_params = [s["name"] for s in fmt["params"] if s["name"].endswith("_column")]
    columns = []
    if column_params:  # a table: pick its columns from the file's own header, not type their names
        with common.user_errors():
            columns = state.engine().table_columns(path)
    params = common.param_form(fmt["params"], key=f"data.params.{fmt_name}", container=right,
                               picks={name: columns for name in column_params}) if fmt["params"] else {}
    return fmt_name, params


# Uploads are named by their content's hash and the bundled sets do not change, so a path (with
# the format, options, model and max_length) is a sound cache key.
@st.cache_data(show_spinner="Checking every record…", max_entries=20, ttl=600)
def check(path: str, fmt: str, params_json: str, model: str, max_length: int) -> dict:
    return state.engine().check_data(path, fmt, json.loads(params_json), model, max_length)


@st.cache_data(show_spinner=False, max_entries=20, ttl=600)
def records(path: str, fmt: str, params_json: str) -> list[dict]:
    return state.engine().load_records(path, fmt, json.loads(params_json))


def report_metrics(report: dict, max_length: int) -> None:
    st.header("Check it: the validation report")
    common.lesson_box(lessons.VALIDATION)
    m = st.columns(5)
    m[0].metric("Records", f"{report['records']:,}")
    m[1].metric("Kind", " + ".join(report.get("kinds") or {}) or "?",
                help="messages = conversations (chat); text = raw text (continued pre-training); segments = raw "
                     "text pieces without a chat template, each trained or not (Axolotl's input_output).")
    m[2].metric("Empty", len(report.get("empty") or []), help="Records with an empty message or text.")
    m[3].metric("Duplicates", len(report.get("duplicates") or []), help="Exact repeats of an earlier record.")
    m[4].metric(f"Over {max_length} tokens", report.get("over_max_length", 0),
                help="These examples will be truncated at max_length.")
    problems = []
    if report.get("empty"):
        problems.append(f"empty content in rows {', '.join(map(str, report['empty'][:10]))}"
                        + (" …" if len(report["empty"]) > 10 else ""))
    if report.get("duplicates"):
        problems.append("duplicates: " + ", ".join(f"row {d['row']} = row {d['same_as']}"
                                                   for d in report["duplicates"][:5])
                        + (" …" if len(report["duplicates"]) > 5 else ""))
    if report.get("over_max_length"):
        problems.append(f"{report['over_max_length']} examples longer than max_length = {max_length} will be cut")
    if problems:
        st.warning("Worth a look: " + "; ".join(problems) + ".", icon=":material/warning:")
    elif not report.get("warnings") and not report.get("dropped"):
        st.success("No problems found: no empty records, no duplicates, nothing longer than max_length.",
                   icon=":material/check_circle:")
    kept_and_dropped(report)


def kept_and_dropped(report: dict) -> None:
    """What the format kept, what it dropped and why (KTO's undesirable answers, untrained turns), and its
    warnings (placeholders, tool calls): the reading of data sets from other tools, in plain sight."""
    dropped, warnings, counts = report.get("dropped") or [], report.get("warnings") or [], report.get("counts") or {}
    if not dropped and not warnings:
        return
    n_dropped = counts.get("dropped", len(dropped))
    st.markdown(f"**Kept {report.get('kept', report['records']):,} records"
                + (f", dropped {n_dropped:,}**" if n_dropped else "**"))
    if dropped:
        st.dataframe([{"row": d.get("row"), "why dropped": d.get("reason")} for d in dropped], hide_index=True,
                     width="stretch", key="data.dropped")
    for w in warnings[:10]:
        st.warning((f"Row {w['row']}: " if w.get("row") else "") + w.get("message", ""), icon=":material/warning:")
    if counts.get("warnings", len(warnings)) > 10:
        st.caption(f"… and {counts['warnings'] - 10} more warnings (`python -m tunelab data check FILE` lists them).")


def first_records(rows: list[dict]) -> None:
    st.subheader("The first records, as the model's canonical conversations")
    for i, record in enumerate(rows[:3], 1):
        with st.container(border=True):
            st.caption(f"Record {i}")
            if record.get("messages"):
                for message in record["messages"]:
                    role = message["role"]
                    with st.chat_message("user" if role == "user" else ("assistant" if role == "assistant" else "ai"),
                                         avatar=":material/settings:" if role == "system" else None):
                        st.markdown(f"*{role}*  \n{message['content'][:1200]}")
            elif record.get("segments"):
                st.html(segments_html(record["segments"]))
                st.caption("Raw text, no chat template: the green pieces (label true) are trained, the grey ones "
                           "(label false) are context only.")
            else:
                text = record.get("text") or ""
                st.text(text[:800] + (" …" if len(text) > 800 else ""))


def segments_html(segments: list[dict], limit: int = 1200) -> str:
    """A segments record as its text, trained pieces green and untrained ones grey (the first ``limit`` characters)."""
    out, left = [], limit
    for segment in segments:
        text = segment["text"][:max(left, 0)]
        left -= len(segment["text"])
        style = ("background:#bbf7d0;color:#14532d" if segment["label"] else
                 "background:#eeeeee;color:#6b6b6b")
        out.append(f'<span style="{style};white-space:pre-wrap;border-radius:4px;padding:1px 2px">'
                   f"{html.escape(text)}</span>")
    return '<div style="font-family:monospace;font-size:0.85rem;line-height:1.7">' + "".join(out) + (
        " …" if left < 0 else "") + "</div>"


def token_lengths(lengths: dict, max_length: int) -> None:
    st.header("How long are the examples?")
    common.lesson_box(lessons.LENGTHS)
    if st.button("See it: train at 3 max lengths", icon=":material/science:", key="data.see_length",
                 help="Opens 4b · Experiments with max_length 64, 128 and 256 filled in."):
        state.see_experiment("max_length")
    if not lengths.get("values"):
        return
    s = st.columns(4)
    s[0].metric("Shortest", lengths["min"])
    s[1].metric("Median", f"{lengths['median']:.0f}")
    s[2].metric("95th percentile", lengths["p95"])
    s[3].metric("Longest", lengths["max"])
    st.plotly_chart(charts.token_length_histogram(lengths["values"], max_length), width="stretch",
                    key="data.lengths_chart")
    if lengths["p95"] > max_length:
        st.caption(f"More than 5 % of examples are longer than max_length: consider raising it to about "
                   f"{lengths['p95']}.")


def masking(rows: list[dict], model: str, max_length: int) -> bool:
    """One example token by token, trained (green) or masked (grey); returns train_on_prompt."""
    st.header("What exactly is trained?")
    common.lesson_box(lessons.MASKING, expanded=True)
    left, right = st.columns([1, 1])
    index = left.number_input("Example", 1, len(rows), 1, key="data.example", help="Which record to show (1-based).")
    train_on_prompt = right.toggle("train_on_prompt", value=state.plan().train_on_prompt, key="data.train_on_prompt",
                                   help="Also train on the user's tokens. Normally off: only the reply is learned.")
    with common.user_errors():
        # the first training example the record makes (raw text longer than max_length makes several)
        encoded = state.engine().encode_example(model, rows[int(index) - 1], max_length, train_on_prompt)
        n, trained = len(encoded["ids"]), encoded["trained"]
        st.html(common.masked_tokens_html(encoded["pieces"], encoded["labels"]))
        st.caption(f"{n} tokens: **{trained} trained** (green) and {n - trained} masked with label -100 (grey, "
                   "struck through — the loss ignores them)."
                   + (f" This example was cut at max_length = {max_length}." if encoded["truncated"] else ""))
    return train_on_prompt


def page() -> None:
    common.title(__file__)
    st.markdown(
        "The model learns whatever is in the data — so look at it before training. Pick a data set, let a "
        "*format plugin* read it into conversations, check it for problems, and see which tokens are trained."
    )
    path = choose_file()
    chosen = choose_format(path) if path else None
    if chosen is None:
        return
    fmt_name, params = chosen
    planned = state.plan().max_length
    max_length = st.select_slider("max_length (tokens)", sorted(set(LENGTH_CHOICES) | {planned}), value=planned,
                                  key="data.max_length",
                                  help="Longest example in tokens; longer conversations are truncated. Also set on "
                                       "lesson 3.")
    model, params_json = state.model_name(), json.dumps(params, sort_keys=True)
    report = None
    with common.user_errors():
        report = check(path, fmt_name, params_json, model, max_length)
    if report is None:
        return
    if not report["ok"]:
        st.header("Check it: the validation report")
        st.error(report["error"], icon=":material/error:")
        located = [{k: v for k, v in e.items() if v is not None} for e in report.get("errors") or []
                   if e.get("row") is not None or e.get("field") is not None]  # a whole-file error has neither
        if located:
            st.dataframe(located, hide_index=True, width="stretch")
        return
    report_metrics(report, max_length)
    rows = []
    with common.user_errors():
        rows = records(path, fmt_name, params_json)
    if not rows:
        return
    first_records(rows)
    lengths = report.get("token_lengths") or {}
    token_lengths(lengths, max_length)
    train_on_prompt = masking(rows, model, max_length)

    # -- remember the choice for the next pages: it is the planned run's data now ----------------------
    with common.user_errors():
        state.update_plan(**{"data.path": path, "data.format": fmt_name, "data.params": params,
                             "max_length": max_length, "train_on_prompt": train_on_prompt})
        st.session_state[state.DATA_SUMMARY] = {"records": report["records"], "median_tokens": lengths.get("median")}
        st.success(f"Lesson 3 will train on `{path}` read as **{fmt_name}**.", icon=":material/bookmark:")
    common.next_step(__file__)


page()
