"""Lesson 2: choose a data set, check it, and see exactly which tokens the model will learn from."""

import hashlib
import json
import re
from pathlib import Path

import streamlit as st

from core import data as data_mod
from core.config import RunConfig
from dashboard import charts, common, lessons

st.title("2 · Prepare data")
st.markdown(
    "The model learns whatever is in the data — so look at it before training. Pick a data set, let a "
    "*format plugin* read it into conversations, check it for problems, and see which tokens are trained."
)

LESSON_SET = common.REPO / "data" / "science_tutor_train.alpaca.json"
REAL_WORLD = common.REPO / "data" / "real-world"
UPLOADS = common.REPO / "runs" / "uploads"


def safe_upload_path(name: str, content: bytes) -> Path:
    """runs/uploads/<cleaned stem>-<content hash><suffix>: no path tricks, no clashes between uploads."""
    stem, suffix = Path(name).stem, Path(name).suffix.lower()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:60] or "upload"
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
    return UPLOADS / f"{stem}-{hashlib.sha256(content).hexdigest()[:10]}{suffix}"


def shown_path(path: Path) -> str:
    """Inside the repository: relative (so a config travels to a GPU machine); elsewhere absolute."""
    try:
        return str(path.resolve().relative_to(common.REPO))
    except ValueError:
        return str(path.resolve())


# -- 1. choose a file ---------------------------------------------------------------------
st.header("Choose the data")
real_world = sorted(p for p in REAL_WORLD.glob("*") if p.is_file() and p.suffix in (".json", ".jsonl", ".csv", ".txt")) \
    if REAL_WORLD.is_dir() else []
sources = ["The lesson set: a science tutor"] + (["A real-world sample"] if real_world else []) + ["Upload your own file"]
source = st.radio("Source", sources, horizontal=True, key="data.source")
path = None
if source.startswith("The lesson set"):
    path = LESSON_SET
    st.caption("Questions a curious student asks, answered by a patient tutor, in the Alpaca format "
               "(instruction / input / output). The fine-tune teaches the model this tutor's voice.")
elif source.startswith("A real-world"):
    chosen = st.selectbox("Sample", [p.name for p in real_world], key="data.real_world",
                          help="Files in the shapes real fine-tuning users bring, from the LLaMA-Factory repository.")
    path = REAL_WORLD / chosen
else:
    upload = st.file_uploader("A data file", type=["json", "jsonl", "csv", "txt"], key="data.upload",
                              help="Alpaca or ShareGPT JSON, JSON lines, CSV with prompt/response columns, or plain "
                                   "text. It is saved under runs/uploads/.")
    if upload is not None:
        content = upload.getvalue()
        path = safe_upload_path(upload.name, content)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        st.caption(f"Saved as `{shown_path(path)}`.")
if path is None:
    st.stop()

# -- 2. the format --------------------------------------------------------------------------
st.header("Read it: the format")
common.lesson_box(lessons.DATA_FORMAT)
formats = common.registry().items("data_formats")
if not formats:
    st.error("No data-format plugin is loaded; see **8 · Plugins** for what failed.")
    st.stop()
detected = None
with common.user_errors():
    detected = data_mod.detect_format(path)
names = list(formats)
left, right = st.columns([1, 2])
fmt_name = left.selectbox("Format", names, index=names.index(detected) if detected in names else 0,
                          key=f"data.format.{path.name}", format_func=lambda n: n + ("  (detected)" if n == detected else ""),
                          help="Detected from the file's first bytes; change it if the guess is wrong.")
fmt = formats[fmt_name]
right.markdown(f"**{fmt_name}** — {fmt.description}  \n"
               f"Reads: {', '.join(fmt.extensions)} · plugin: `{common.registry().owner('data_formats', fmt_name)}`")
params = common.param_form(fmt.params, key=f"data.params.{fmt_name}", container=right) if fmt.params else {}

config = st.session_state.get(common.RUN_CONFIG) or {}
default_max = int(config.get("max_length") or st.session_state.get("data_max_length") or RunConfig().max_length)
LENGTH_CHOICES = sorted({64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, default_max})
max_length = st.select_slider("max_length (tokens)", LENGTH_CHOICES, value=default_max, key="data.max_length",
                              help="Longest example in tokens; longer conversations are truncated. Also set on lesson 3.")

# -- 3. check ---------------------------------------------------------------------------------
model_name = common.current_model_name()
loaded = common.loaded_model()
tokenizer = loaded[1] if loaded else common.load_tokenizer(common.EMBEDDED)


@st.cache_data(show_spinner="Checking every record…", max_entries=20)
def check(path: str, mtime: float, fmt: str, params_json: str, model_name: str, max_length: int, _tokenizer):
    return data_mod.check_file(path, format=fmt, params=json.loads(params_json), tokenizer=_tokenizer,
                               max_length=max_length)


@st.cache_data(show_spinner=False, max_entries=20)
def records(path: str, mtime: float, fmt: str, params_json: str) -> list[dict]:
    dataset, _ = data_mod.load_records(path, fmt, json.loads(params_json))
    return dataset.to_list()


params_json = json.dumps(params, sort_keys=True)
mtime = path.stat().st_mtime
report = None
with common.user_errors():
    report = check(str(path), mtime, fmt_name, params_json, model_name, max_length, tokenizer)
if report is None:
    st.stop()

st.header("Check it: the validation report")
common.lesson_box(lessons.VALIDATION)
if not report["ok"]:
    st.error(report["error"], icon=":material/error:")
    if report.get("errors"):
        st.dataframe(report["errors"], hide_index=True, width="stretch")
    st.stop()

lengths = report.get("token_lengths") or {}
m = st.columns(5)
m[0].metric("Records", f"{report['records']:,}")
m[1].metric("Kind", " + ".join(report.get("kinds") or {}) or "?", help="messages = conversations (chat); text = raw text (continued pre-training).")
m[2].metric("Empty", len(report.get("empty") or []), help="Records with an empty message or text.")
m[3].metric("Duplicates", len(report.get("duplicates") or []), help="Exact repeats of an earlier record.")
m[4].metric(f"Over {max_length} tokens", report.get("over_max_length", 0),
            help="These examples will be truncated at max_length.")
problems = []
if report.get("empty"):
    problems.append(f"empty content in rows {', '.join(map(str, report['empty'][:10]))}"
                    + (" …" if len(report["empty"]) > 10 else ""))
if report.get("duplicates"):
    problems.append("duplicates: " + ", ".join(f"row {d['row']} = row {d['same_as']}" for d in report["duplicates"][:5])
                    + (" …" if len(report["duplicates"]) > 5 else ""))
if report.get("over_max_length"):
    problems.append(f"{report['over_max_length']} examples longer than max_length = {max_length} will be cut")
if problems:
    st.warning("Worth a look: " + "; ".join(problems) + ".", icon=":material/warning:")
else:
    st.success("No problems found: no empty records, no duplicates, nothing longer than max_length.",
               icon=":material/check_circle:")

rows = records(str(path), mtime, fmt_name, params_json)
st.subheader("The first records, as the model's canonical conversations")
for i, record in enumerate(rows[:3], 1):
    with st.container(border=True):
        st.caption(f"Record {i}")
        if record.get("messages"):
            for message in record["messages"]:
                with st.chat_message("user" if message["role"] == "user" else
                                     ("assistant" if message["role"] == "assistant" else "ai"),
                                     avatar=":material/settings:" if message["role"] == "system" else None):
                    st.markdown(f"*{message['role']}*  \n{message['content'][:1200]}")
        else:
            text = record.get("text") or ""
            st.text(text[:800] + (" …" if len(text) > 800 else ""))

# -- 4. token lengths -------------------------------------------------------------------------
st.header("How long are the examples?")
common.lesson_box(lessons.LENGTHS)
if lengths.get("values"):
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

# -- 5. one example, token by token ------------------------------------------------------------
st.header("What exactly is trained?")
common.lesson_box(lessons.MASKING, expanded=True)
left, right = st.columns([1, 1])
index = left.number_input("Example", 1, len(rows), 1, key="data.example", help="Which record to show (1-based).")
train_on_prompt = right.toggle("train_on_prompt", value=bool(config.get("train_on_prompt", False)), key="data.train_on_prompt",
                               help="Also train on the user's tokens. Normally off: only the reply is learned.")
record = rows[int(index) - 1]
# the first training example the record makes (raw text longer than max_length makes several)
encoded = data_mod.encode_record(record, tokenizer, max_length, train_on_prompt)[0]
pieces = common.decode_pieces(tokenizer, encoded["input_ids"])
trained = sum(label != data_mod.IGNORE_INDEX for label in encoded["labels"])
st.html(common.masked_tokens_html(pieces, encoded["labels"]))
st.caption(f"{len(encoded['input_ids'])} tokens: **{trained} trained** (green) and {len(encoded['input_ids']) - trained} "
           "masked with label -100 (grey, struck through — the loss ignores them)."
           + (f" This example was cut at max_length = {max_length}." if encoded.get("truncated") else ""))

# -- remember the choice for the next pages ----------------------------------------------------
choice = {"path": shown_path(path), "format": fmt_name, "params": params}
st.session_state[common.DATA] = choice
st.session_state[common.DATA_RECORDS] = report["records"]
st.session_state[common.DATA_MEDIAN_TOKENS] = lengths.get("median")
if config:
    config.setdefault("data", {}).update(choice)
    config["max_length"], config["train_on_prompt"] = max_length, train_on_prompt
else:
    st.session_state["data_max_length"], st.session_state["data_train_on_prompt"] = max_length, train_on_prompt
st.success(f"Lesson 3 will train on `{choice['path']}` read as **{fmt_name}**.", icon=":material/bookmark:")
common.next_step("dashboard/set_up_training.py", "Next: 3 · Set up training")
