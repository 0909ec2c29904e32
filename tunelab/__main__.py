"""``python -m tunelab ...`` (and the ``tunelab`` command an install puts on the PATH): the CLI."""

from tunelab.core.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
