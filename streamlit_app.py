"""TuneLab's entry point: the lesson pages, in order. Each page explains itself (see dashboard/)."""

import streamlit as st

st.set_page_config(page_title="TuneLab", page_icon=":material/school:", layout="wide")

PAGES = {
    "Start": [
        st.Page("dashboard/welcome.py", title="Welcome", icon=":material/waving_hand:", default=True),
    ],
    "The six steps": [
        st.Page("dashboard/load_model.py", title="1 · Load a model", icon=":material/download:"),
        st.Page("dashboard/prepare_data.py", title="2 · Prepare data", icon=":material/table_view:"),
        st.Page("dashboard/set_up_training.py", title="3 · Set up training", icon=":material/tune:"),
        st.Page("dashboard/fine_tune.py", title="4 · Fine-tune", icon=":material/model_training:"),
        st.Page("dashboard/generate.py", title="5 · Generate", icon=":material/chat:"),
        st.Page("dashboard/evaluate.py", title="6 · Evaluate", icon=":material/fact_check:"),
        st.Page("dashboard/export.py", title="Use your model elsewhere", icon=":material/ios_share:"),
    ],
    "Go deeper": [
        st.Page("dashboard/memory.py", title="7 · Memory", icon=":material/memory:"),
        st.Page("dashboard/plugins.py", title="8 · Plugins", icon=":material/extension:"),
        st.Page("dashboard/questions.py", title="Questions & glossary", icon=":material/quiz:"),
    ],
}

st.navigation(PAGES).run()
