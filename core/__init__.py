"""TuneLab's engine: load, prepare, set up, train, generate, evaluate.

No Streamlit here: the dashboard, the CLI and a remote GPU worker all use
this package the same way. Its import name is ``tunelab.core`` (see ``tunelab/__init__.py``).
"""

if __name__ != "tunelab.core":
    import sys

    if sys.argv[:1] == ["-m"]:  # `python -m core ...`, the CLI's name before round 3: one line, no traceback
        print("error: TuneLab's command line is `python -m tunelab ...` (or `tunelab ...` once installed)", file=sys.stderr)
        sys.exit(2)
    # `import core` from a checkout's root would load a second engine beside tunelab.core: a second plugin
    # registry, and a UserError class the other copy's `except UserError` does not catch.
    raise ImportError(f"TuneLab's engine is imported as tunelab.core, not {__name__} "
                      "(the CLI is `python -m tunelab ...`, a plugin imports `tunelab.core.hookspecs`)")

from .. import __version__  # noqa: E402,F401 (one version, tunelab's)
