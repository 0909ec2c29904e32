"""TuneLab's Streamlit dashboard: one page per lesson, shared widgets (common.py), Plotly figures (charts.py)."""
