"""Lesson 5: talk to the model, before and after. (Owned by another engineer; a placeholder until then.)"""

import streamlit as st

from dashboard import common

st.title("5 · Generate")
st.markdown(
    "A language model writes one token at a time: it scores every token in its vocabulary, and a "
    "*sampler* picks one. This page lets you chat with the fine-tuned model, compare its answer with the "
    "base model's, and see how greedy decoding, temperature and top-p change the choice."
)
if common.engine_function("generate", "generate") is None:
    common.missing("core.generate.generate",
                   "a chat with the tuned model, the base model's answer side by side, each sampler's form, "
                   "and the next-token probabilities as a chart")
else:
    st.info("The chat view is being built.", icon=":material/construction:")
if st.session_state.get(common.BEFORE_ANSWER):
    st.markdown("**The base model's answer from lesson 1 (kept for comparison):**")
    st.markdown(f"> {st.session_state[common.BEFORE_ANSWER]}")
