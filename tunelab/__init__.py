"""TuneLab: learn language-model fine-tuning by doing it.

The import names are ``tunelab.core`` (the engine, its hook specs and the test kit ``tunelab.core.testing``)
and ``tunelab.plugins`` (the built-in plugins), so an installed TuneLab takes one name in site-packages
and never a generic ``core`` or ``plugins``. The repository keeps its design's top-level folders
(``core/``, ``plugins/``, ``dashboard/``); two places map the names onto them:

- an installed wheel: ``pyproject.toml``'s ``package-dir`` copies ``core/`` to ``tunelab/core/`` and
  ``plugins/`` to ``tunelab/plugins/``;
- a checkout: this file adds the repository root to the package's search path, so ``tunelab.core`` is
  the ``core/`` folder itself and an edit there needs no reinstall (the dashboard, the CLI and the tests
  run from the checkout this way, Streamlit Cloud included, which installs nothing of ours).

``core/__init__.py`` refuses to be imported under any other name: two copies of the engine in one
process would hold two registries and two ``UserError`` classes that do not catch each other.
"""

from pathlib import Path

_HERE = Path(__file__).resolve().parent
# Installed, core/ sits inside this package; in a checkout it is a sibling of this folder.
INSTALLED = (_HERE / "core" / "__init__.py").exists()
if not INSTALLED:
    __path__.append(str(_HERE.parent))  # noqa: F821 (a package's __path__ is set before its code runs)

__version__ = "0.3.0"
