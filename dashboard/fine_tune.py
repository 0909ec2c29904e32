"""Lesson 4: start a training run and watch it live. (Owned by another engineer; a placeholder until then.)"""

import streamlit as st

from dashboard import common

st.title("4 · Fine-tune")
st.markdown(
    "Training runs in its own worker process (`python -m core train config.yaml`), so closing the tab "
    "or clicking around never stops it. This page starts a run from the settings of lesson 3 and polls "
    "its metrics to draw the loss, the learning rate and the speed as they happen."
)
if common.engine_function("train", "train") is None or common.engine("runs") is None:
    common.missing("core.train / core.runs",
                   "a Start button, the live loss and validation-loss curves, the learning rate, tokens per "
                   "second, and Stop / Resume for the run")
else:
    st.info("The live training view is being built. Meanwhile start a run from a terminal with the "
            "command shown on **3 · Set up training**.", icon=":material/construction:")
common.next_step("dashboard/set_up_training.py", "Back to 3 · Set up training", icon=":material/arrow_back:")
