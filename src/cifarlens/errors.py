"""User-facing errors.

A ``CifarlensError`` is a mistake the user can fix (bad path, unknown name,
bad option). The CLI prints its message as one line and exits with code 2,
never with a traceback. Anything else is a bug and keeps its traceback.
"""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to many lines), or its type's name."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class CifarlensError(Exception):
    """An error caused by user input; ``str(err)`` says what is wrong and how to fix it."""

    exit_code = 2


class DataError(CifarlensError):
    """The dataset is missing, truncated or not in the CIFAR-10 python format."""


class ConfigError(CifarlensError):
    """A config file or option value is invalid."""


class RunDirError(CifarlensError):
    """A run directory is missing, incomplete or inconsistent."""


class TrainingDiverged(CifarlensError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(CifarlensError):
    """SIGTERM or Ctrl-C stopped training after a step; a recovery checkpoint was written."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class CheckpointWriteError(CifarlensError):
    """A checkpoint could not be written (a full disk); the previous one is kept."""
