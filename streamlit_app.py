"""TuneLab's entry point: the lesson pages, in order (``dashboard/course.py``), and where the work runs.

Each page explains itself (see dashboard/).
"""

import streamlit as st

from dashboard import common, course

st.set_page_config(page_title="TuneLab", page_icon=":material/school:", layout="wide")

sections: dict[str, list] = {}
for row in course.LESSONS:
    sections.setdefault(row.section, []).append(
        st.Page(row.path, title=row.title, icon=row.icon, default=row.path == course.WELCOME,
                **({"url_path": row.url} if row.url else {})))

try:
    st.navigation(sections).run()
finally:
    # After the page, so its text paints before the health check (the first one imports torch); in a
    # finally, so a page that stops early still shows where its work runs.
    common.backend_badge()
