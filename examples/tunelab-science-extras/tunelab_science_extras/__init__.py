"""tunelab-science-extras: a worked example of a TuneLab plugin package.

The entry point (``[project.entry-points.tunelab]`` in pyproject.toml) names this
module. pluggy registers the module itself, so every function below marked with
``@hookimpl`` is a hook implementation. Each kind lives in its own module; this
file only gathers their hooks.
"""

from .qa_jsonl import register_data_formats
from .readability import register_evaluators
from .typical import register_samplers

__version__ = "0.1.0"
__all__ = ["register_data_formats", "register_samplers", "register_evaluators"]
