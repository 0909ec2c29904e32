"""Where TuneLab's files live: the repository, the run store, the home folder. One owner for each.

- ``REPO_ROOT``: the checkout (or the installed package's parent): bundled data, docs, configs.
- ``runs_root()``: the run store, ``$TUNELAB_RUNS_DIR`` (default ``runs/`` in the repository). Uploads,
  experiments and the queue's slots live under it, so one setting moves all of a deployment's files.
- ``tunelab_home()``: caches and settings, ``$TUNELAB_HOME`` (default ``~/.cache/tunelab``).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_root() -> Path:
    """Where runs live: ``$TUNELAB_RUNS_DIR``, default ``runs/`` in the repository."""
    return Path(os.environ.get("TUNELAB_RUNS_DIR") or REPO_ROOT / "runs")


def tunelab_home() -> Path:
    """Where TuneLab keeps its caches and settings (``$TUNELAB_HOME``, default ``~/.cache/tunelab``)."""
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")
