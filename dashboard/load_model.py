"""Lesson 1: load a model and look inside it — architecture, parameters, tokens, chat template, a first answer."""

import streamlit as st

from dashboard import common, lessons

st.title("1 · Load a model")
st.markdown(
    "Fine-tuning starts from a **pretrained** model: one that has already learned language. Load one, look "
    "at what it is made of, see how it reads text, and ask it a question — its answer is the *before* "
    "picture you will compare against after training."
)
common.lesson_box(lessons.MODEL)

# -- choose and load ----------------------------------------------------------------------
SOURCES = {
    "Embedded (SmolLM2-135M-Instruct, works offline)": "embedded",
    "Hugging Face Hub id": "hub",
    "Local folder": "folder",
}
current = common.current_model_name()
with st.container(border=True):
    source_label = st.radio("Where from?", list(SOURCES), horizontal=True, key="load.source",
                            index=0 if current == common.EMBEDDED else (2 if current.startswith(("/", ".", "~")) else 1))
    source = SOURCES[source_label]
    if source == "hub":
        name = st.text_input("Hub id", value=current if current != common.EMBEDDED else "HuggingFaceTB/SmolLM2-135M-Instruct",
                             help="Any causal language model on huggingface.co, e.g. Qwen/Qwen2.5-0.5B-Instruct or "
                                  "gpt2. Needs the network, or the model already in the local Hugging Face cache.")
    elif source == "folder":
        name = st.text_input("Folder", value=current if current != common.EMBEDDED else "",
                             placeholder="/path/to/model (holds config.json) or runs/<id>",
                             help="A folder written by save_pretrained, a run folder (its final/ is used), or a LoRA "
                                  "adapter folder (its base model is loaded first).")
    else:
        name = common.EMBEDDED
        st.caption("SmolLM2-135M-Instruct (Apache-2.0) ships inside TuneLab as a 4-bit GGUF file. The first load "
                   "converts it once to a normal model (about 20 s); later loads take about a second.")
    clicked = st.button("Load model", type="primary", icon=":material/download:", disabled=not name.strip())

if clicked:
    with common.user_errors():
        common.load_model(name.strip())
        st.session_state[common.MODEL_NAME] = name.strip()
        st.session_state.pop(common.BEFORE_ANSWER, None)  # a new model: its 'before' answer is still to come

if common.MODEL_NAME not in st.session_state:
    st.info("Choose a model and click **Load model**. The embedded one is a good start.", icon=":material/arrow_upward:")
    st.stop()

loaded_name = st.session_state[common.MODEL_NAME]
try:
    model, tokenizer = common.load_model(loaded_name)
except Exception as exc:  # noqa: BLE001 - UserError (or an unexpected failure) as one line
    st.error(str(exc), icon=":material/error:")
    st.stop()

from core.generate import generate  # noqa: E402 - only once a model is there (they import torch)
from core.models import describe  # noqa: E402

info = describe(model, tokenizer)

# -- inside the model -----------------------------------------------------------------------
st.header("Inside the model")
st.caption(f"Loaded: `{loaded_name}`")
row1 = st.columns(4)
row1[0].metric("Architecture", info["model_type"], help=f"transformers class: {info['architecture']}")
row1[1].metric("Layers", info["layers"])
row1[2].metric("Hidden size", info["hidden_size"])
row1[3].metric("Vocabulary", f"{info['vocab_size']:,}" if info["vocab_size"] else "?")
row2 = st.columns(4)
row2[0].metric("Parameters", common.human_count(info["parameters"]),
               help=f"{info['parameters']:,} numbers, counting tied weights once")
row2[1].metric("Trainable", common.human_count(info["trainable_parameters"]),
               help="Parameters with requires_grad: all of them for full fine-tuning; LoRA freezes them and adds "
                    "small trainable adapters instead.")
row2[2].metric("dtype", info["dtype"], help="fp32 = 4 bytes per parameter; bf16/fp16 = 2.")
row2[3].metric("Device", info["device"])
bytes_per = info["weight_bytes"] // max(1, info["parameters"])
st.markdown(
    f"The weights alone take **{common.human_bytes(info['weight_bytes'])}** "
    f"({info['parameters']:,} × {bytes_per} bytes). Each of the {info['layers']} layers turns every token into a "
    f"vector of {info['hidden_size']} numbers and refines it; the last step scores all "
    f"{info['vocab_size']:,} vocabulary entries to predict the next token."
    + (" The input embeddings and the output layer share one matrix (*tied embeddings*)." if info["tied_embeddings"] else "")
)

# -- tokens ---------------------------------------------------------------------------------
st.header("How the model reads: tokens")
common.lesson_box(lessons.TOKENIZER)
text = st.text_area("Type anything", "Fine-tuning teaches a pretrained model one new subject: photosynthesis! 🌱",
                    key="load.tokenizer_text", height=80)
ids = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
pieces = common.decode_pieces(tokenizer, ids)
st.html(common.token_chips_html(pieces, ids))
st.caption(f"{len(text)} characters → **{len(ids)} tokens** ({len(text) / max(1, len(ids)):.1f} characters per "
           "token). Spaces are shown as ·, new lines as ↵; the small number is the token's id.")

# -- chat template --------------------------------------------------------------------------
st.header("How a conversation becomes text: the chat template")
common.lesson_box(lessons.CHAT_TEMPLATE)
SAMPLE = [
    {"role": "system", "content": "You are a patient science tutor."},
    {"role": "user", "content": "Why is the sky blue?"},
    {"role": "assistant", "content": "Sunlight scatters off air molecules, and blue light scatters the most."},
]
if info["chat_template_fallback"]:
    st.warning("This tokenizer has no chat template of its own, so TuneLab uses its documented fallback, "
               "**ChatML** (`<|im_start|>role … <|im_end|>`), the format SmolLM2 and Qwen use. The model has never "
               "seen it before training: fine-tuning teaches it.", icon=":material/info:")
left, right = st.columns(2)
with left:
    st.markdown("**The conversation** (what you write)")
    st.json(SAMPLE, expanded=True)
with right:
    st.markdown("**What the model actually reads**")
    st.code(tokenizer.apply_chat_template(SAMPLE, tokenize=False), language=None, wrap_lines=True)
    st.caption("At generation time the template ends with the assistant's opening marker "
               "(`add_generation_prompt=True`), inviting the model to write the reply.")

# -- a first answer ---------------------------------------------------------------------------
st.header("Ask it something: the 'before' answer")
common.lesson_box(lessons.BEFORE)
prompt = st.text_input("Question", "Explain photosynthesis to a 12-year-old in two sentences.", key="load.prompt")
max_new = st.slider("Longest answer (new tokens)", 16, 256, 96, step=16, key="load.max_new_tokens",
                    help="Generation stops at the end-of-turn token or after this many tokens.")
asked = st.button("Ask the base model", icon=":material/chat:")
if asked or st.session_state.get(common.BEFORE_ANSWER) is not None:
    st.markdown(f"**Q:** {prompt if asked else st.session_state.get('before_prompt', '')}")
if asked:
    with common.user_errors(), st.chat_message("assistant"):
        answer = st.write_stream(generate(model, tokenizer, prompt, sampler="greedy", max_new_tokens=max_new,
                                          stream=True))
        st.session_state[common.BEFORE_ANSWER] = answer if isinstance(answer, str) else "".join(map(str, answer))
        st.session_state["before_prompt"] = prompt
elif st.session_state.get(common.BEFORE_ANSWER) is not None:
    with st.chat_message("assistant"):
        st.markdown(st.session_state[common.BEFORE_ANSWER] or "*(an empty answer)*")
if st.session_state.get(common.BEFORE_ANSWER) is not None:
    st.caption("Kept as the *before* answer: lessons 5 and 6 put the fine-tuned model's answer next to it.")

common.next_step("dashboard/prepare_data.py", "Next: 2 · Prepare data")
