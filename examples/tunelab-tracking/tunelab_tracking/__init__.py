"""tunelab-tracking: log TuneLab runs to TensorBoard and/or MLflow.

The entry point (``[project.entry-points.tunelab]`` in pyproject.toml) names this module;
pluggy registers it, so the four ``@hookimpl`` functions imported below are its hooks:

- ``on_train_start``: open the backends, log the run config (MLflow params, a TensorBoard text);
- ``on_log`` / ``on_evaluate``: log each metrics row at its step;
- ``on_train_end``: record how the run ended, flush and close.

Which backends and where: ``TUNELAB_TRACKING``, ``TUNELAB_TENSORBOARD_DIR``,
``TUNELAB_MLFLOW_TRACKING_URI``, ``TUNELAB_MLFLOW_EXPERIMENT`` (see the README). The
tracking libraries are imported only when a run starts, so loading the plugin costs nothing.
"""

from .hooks import on_evaluate, on_log, on_train_end, on_train_start

__version__ = "0.1.0"
__all__ = ["on_train_start", "on_log", "on_evaluate", "on_train_end"]
