"""Lesson 1: load a model and look inside it — architecture, parameters, tokens, chat template, a first answer.

The page names the model (``"embedded"``, a Hub id or a folder); the engine loads it, keeps it in
its bounded cache, and answers every question about it (``describe_model``, ``tokenize``,
``render_chat``, ``generate``).
"""

import streamlit as st

from dashboard import common, lessons, state

SOURCES = {
    "Embedded (SmolLM2-135M-Instruct, works offline)": "embedded",
    "Hugging Face Hub id": "hub",
    "Local folder": "folder",
}
SAMPLE = [
    {"role": "system", "content": "You are a patient science tutor."},
    {"role": "user", "content": "Why is the sky blue?"},
    {"role": "assistant", "content": "Sunlight scatters off air molecules, and blue light scatters the most."},
]


def choose_model() -> str | None:
    """Where the model comes from, and its name; the name when **Load model** was clicked."""
    current = state.model_name()
    with st.container(border=True):
        index = 0 if current == state.EMBEDDED else (2 if current.startswith(("/", ".", "~")) else 1)
        source = SOURCES[st.radio("Where from?", list(SOURCES), horizontal=True, key="load.source", index=index)]
        if source == "hub":
            name = st.text_input("Hub id", value=current if current != state.EMBEDDED
                                 else "HuggingFaceTB/SmolLM2-135M-Instruct",
                                 help="Any causal language model on huggingface.co, e.g. Qwen/Qwen2.5-0.5B-Instruct "
                                      "or gpt2. Needs the network, or the model already in the local Hugging Face "
                                      "cache.")
        elif source == "folder":
            name = st.text_input("Folder", value=current if current != state.EMBEDDED else "",
                                 placeholder="/path/to/model (holds config.json) or runs/<id>",
                                 help="A folder written by save_pretrained, a run folder (its final/ is used), or a "
                                      "LoRA adapter folder (its base model is loaded first).")
        else:
            name = state.EMBEDDED
            st.caption("SmolLM2-135M-Instruct (Apache-2.0) ships inside TuneLab as a 4-bit GGUF file. The first load "
                       "converts it once to a normal model (about 20 s); later loads take about a second.")
        clicked = st.button("Load model", type="primary", icon=":material/download:", disabled=not name.strip())
    return name.strip() if clicked else None


def anatomy(name: str, info: dict) -> None:
    st.header("Inside the model")
    st.caption(f"Loaded: `{name}`")
    row1 = st.columns(4)
    row1[0].metric("Architecture", info["model_type"], help=f"transformers class: {info['architecture']}")
    row1[1].metric("Layers", info["layers"])
    row1[2].metric("Hidden size", info["hidden_size"])
    row1[3].metric("Vocabulary", f"{info['vocab_size']:,}" if info["vocab_size"] else "?")
    row2 = st.columns(4)
    row2[0].metric("Parameters", common.human_count(info["parameters"]),
                   help=f"{info['parameters']:,} numbers, counting tied weights once")
    row2[1].metric("Trainable", common.human_count(info["trainable_parameters"]),
                   help="Parameters with requires_grad: all of them for full fine-tuning; LoRA freezes them and "
                        "adds small trainable adapters instead.")
    row2[2].metric("dtype", info["dtype"], help="fp32 = 4 bytes per parameter; bf16/fp16 = 2.")
    row2[3].metric("Device", info["device"])
    bytes_per = info["weight_bytes"] // max(1, info["parameters"])
    st.markdown(
        f"The weights alone take **{common.human_bytes(info['weight_bytes'])}** "
        f"({info['parameters']:,} × {bytes_per} bytes). Each of the {info['layers']} layers turns every token into "
        f"a vector of {info['hidden_size']} numbers and refines it; the last step scores all "
        f"{info['vocab_size']:,} vocabulary entries to predict the next token."
        + (" The input embeddings and the output layer share one matrix (*tied embeddings*)."
           if info["tied_embeddings"] else "")
    )


def tokens(name: str) -> None:
    st.header("How the model reads: tokens")
    common.lesson_box(lessons.TOKENIZER)
    text = st.text_area("Type anything", "Fine-tuning teaches a pretrained model one new subject: photosynthesis! 🌱",
                        key="load.tokenizer_text", height=80)
    with common.user_errors():
        read = state.engine().tokenize(name, text)
        st.html(common.token_chips_html(read["pieces"], read["ids"]))
        n = len(read["ids"])
        st.caption(f"{len(text)} characters → **{n} tokens** ({len(text) / max(1, n):.1f} characters per token). "
                   "Spaces are shown as ·, new lines as ↵; the small number is the token's id.")


def chat_template(name: str, info: dict) -> None:
    st.header("How a conversation becomes text: the chat template")
    common.lesson_box(lessons.CHAT_TEMPLATE)
    if info["chat_template_fallback"]:
        st.warning("This tokenizer has no chat template of its own, so TuneLab uses its documented fallback, "
                   "**ChatML** (`<|im_start|>role … <|im_end|>`), the format SmolLM2 and Qwen use. The model has "
                   "never seen it before training: fine-tuning teaches it.", icon=":material/info:")
    left, right = st.columns(2)
    with left:
        st.markdown("**The conversation** (what you write)")
        st.json(SAMPLE, expanded=True)
    with right:
        st.markdown("**What the model actually reads**")
        with common.user_errors():
            st.code(state.engine().render_chat(name, SAMPLE), language=None, wrap_lines=True)
        st.caption("At generation time the template ends with the assistant's opening marker "
                   "(`add_generation_prompt=True`), inviting the model to write the reply.")


def before_answer(name: str) -> None:
    """The base model's answer to a question: the *before* picture lessons 5 and 6 compare with."""
    st.header("Ask it something: the 'before' answer")
    common.lesson_box(lessons.BEFORE)
    prompt = st.text_input("Question", "Explain photosynthesis to a 12-year-old in two sentences.", key="load.prompt")
    max_new = st.slider("Longest answer (new tokens)", 16, 256, 96, step=16, key="load.max_new_tokens",
                        help="Generation stops at the end-of-turn token or after this many tokens.")
    asked = st.button("Ask the base model", icon=":material/chat:")
    kept = st.session_state.get(state.BEFORE_ANSWER)
    if asked or kept is not None:
        st.markdown(f"**Q:** {prompt if asked else st.session_state.get(state.BEFORE_PROMPT, '')}")
    if asked:
        with common.user_errors(), st.chat_message("assistant"):
            answer = st.write_stream(state.engine().generate(name, prompt, "greedy", max_new_tokens=max_new))
            st.session_state[state.BEFORE_ANSWER] = answer if isinstance(answer, str) else "".join(map(str, answer))
            st.session_state[state.BEFORE_PROMPT] = prompt
    elif kept is not None:
        with st.chat_message("assistant"):
            st.markdown(kept or "*(an empty answer)*")
    if st.session_state.get(state.BEFORE_ANSWER) is not None:
        st.caption("Kept as the *before* answer: lessons 5 and 6 put the fine-tuned model's answer next to it.")


def page() -> None:
    common.title(__file__)
    st.markdown(
        "Fine-tuning starts from a **pretrained** model: one that has already learned language. Load one, look "
        "at what it is made of, see how it reads text, and ask it a question — its answer is the *before* "
        "picture you will compare against after training."
    )
    common.lesson_box(lessons.MODEL)
    chosen = choose_model()
    if chosen:
        with common.user_errors(), st.spinner("Loading the model (the first load of the embedded model converts "
                                              "it once)…"):
            state.engine().describe_model(chosen)  # loads it into the engine's cache, or says what is wrong
            state.set_model(chosen)
    if state.MODEL_NAME not in st.session_state:
        st.info("Choose a model and click **Load model**. The embedded one is a good start.",
                icon=":material/arrow_upward:")
        return
    name = state.model_name()
    info = None
    with common.user_errors():
        info = state.engine().describe_model(name)
    if info is None:
        return
    anatomy(name, info)
    tokens(name)
    chat_template(name, info)
    before_answer(name)
    common.next_step(__file__)


page()
