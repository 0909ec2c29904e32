"""Where TuneLab's files live: the repository, the run store, the home folder. One owner for each.

- ``REPO_ROOT``: the checkout, or for an installed wheel the folder it was started in: bundled data,
  configs and relative paths in a config resolve against it.
- ``IMPORT_ROOT``: the folder holding the ``tunelab`` package; a child process (a worker, a Ray task)
  started there, or with it on ``PYTHONPATH``, imports this same engine.
- ``runs_root()``: the run store, ``$TUNELAB_RUNS_DIR`` (default ``runs/`` in the repository). Uploads,
  experiments and the queue's slots live under it, so one setting moves all of a deployment's files.
- ``tunelab_home()``: caches and settings, ``$TUNELAB_HOME`` (default ``~/.cache/tunelab``).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import INSTALLED  # tunelab/__init__.py tells a wheel from a checkout, once

# The folder holding core/ and plugins/: the checkout's root, or site-packages/tunelab when installed.
ENGINE_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = ENGINE_ROOT if INSTALLED else ENGINE_ROOT / "tunelab"  # tunelab/__init__.py and __main__.py
IMPORT_ROOT = PACKAGE_DIR.parent
# An installed engine has no repository: like any command-line tool it works in the folder it was started
# in (runs/ there, relative data paths from there). Its child processes start in the same folder.
REPO_ROOT = Path.cwd() if INSTALLED else ENGINE_ROOT


def runs_root() -> Path:
    """Where runs live: ``$TUNELAB_RUNS_DIR``, default ``runs/`` in the repository."""
    return Path(os.environ.get("TUNELAB_RUNS_DIR") or REPO_ROOT / "runs")


def tunelab_home() -> Path:
    """Where TuneLab keeps its caches and settings (``$TUNELAB_HOME``, default ``~/.cache/tunelab``)."""
    return Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab")
