"""The one exception type for a user's mistake.

Anything raised as ``UserError`` is shown as a single clear line (CLI: on
stderr with exit code 2; dashboard: ``st.error``), never as a traceback.
The message says what is wrong, where (file, row, field) and how to fix it.
"""


class UserError(Exception):
    """Bad input from the user: a file, a config value, a model name."""
