"""TuneLab's engine: load, prepare, set up, train, generate, evaluate.

No Streamlit here: the dashboard, the CLI and a remote GPU worker all use
this package the same way.
"""

__version__ = "0.1.0"
