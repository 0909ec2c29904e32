"""Lesson 6: measure base vs tuned on held-out examples. (Owned by another engineer; a placeholder until then.)"""

import streamlit as st

from dashboard import common

st.title("6 · Evaluate")
st.markdown(
    "One good answer proves little. Evaluation runs both models over examples they never trained on and "
    "scores them with *evaluator* plugins (validation loss and perplexity, overlap with the reference "
    "answer, and more), so you can tell learning from luck."
)
if common.engine_function("evaluate", "compare") is None:
    common.missing("core.evaluate.compare",
                   "a table of base vs tuned scores per evaluator, with the change coloured by whether "
                   "higher is better, and the answers side by side")
else:
    st.info("The evaluation view is being built.", icon=":material/construction:")
