"""A Python prelude that makes the engine's packages missing, as on the Streamlit Cloud app.

Prepended to a script run in a subprocess: importing a blocked package fails, and
``importlib.util.find_spec`` (what ``tunelab.core.engine.engine_installed`` and the datasets library ask)
says None, as when the package is not installed.
"""

ENGINE_PACKAGES = ("torch", "transformers", "peft", "accelerate")

_PRELUDE = """
import importlib.util, sys
BLOCKED = set({blocked!r})

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in BLOCKED else _find_spec(name, package))
sys.meta_path.insert(0, Missing())
sys.path.insert(0, {repo!r})
"""


def without_engine(script: str, repo, blocked=ENGINE_PACKAGES) -> str:
    """``script`` with the blocking prelude in front (``BLOCKED`` is defined for it to check)."""
    return _PRELUDE.format(blocked=sorted(blocked), repo=str(repo)) + script
