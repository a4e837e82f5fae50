"""The one exception type the CLI turns into a clean one-line message (no traceback)."""


class LowvramError(Exception):
    """A problem the user can fix: the message names the file or option and says how."""


class TrainingInterrupted(LowvramError):
    """Ctrl-C or SIGTERM: the current step finished, a checkpoint and a usable LoRA were saved."""

    exit_code = 130


class TrainingDiverged(LowvramError):
    """Several steps in a row had a non-finite loss or gradient."""
