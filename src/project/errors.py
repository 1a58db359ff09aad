"""Errors that are the user's to fix: the CLI prints them as one line and exits with code 2."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): enough for a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class UserError(Exception):
    """A mistake in the command line, the config or the input files; the message says what and how to fix it."""

    exit_code = 2


class DataError(UserError):
    """A data set that is missing, corrupt or of the wrong shape."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded safely."""
