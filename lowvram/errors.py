"""The one exception type the CLI turns into a clean one-line message (no traceback)."""


class LowvramError(Exception):
    """A problem the user can fix: the message names the file or option and says how."""
