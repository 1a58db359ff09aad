"""Errors that are the user's to fix: the entry points print them as one line and exit with code 2."""

import re


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): enough for a one-line error."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def raised_within(error: BaseException | None, kind: type[BaseException]) -> BaseException | None:
    """``error`` or the first exception of ``kind`` it was raised from or during."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


class UserError(Exception):
    """A mistake in the command line, the config or the input files; the message says what and how to fix it."""

    exit_code = 2


class DataError(UserError):
    """A data set that is missing, corrupt or of the wrong shape."""


class MissingDownload(UserError):
    """A file a run downloads when it is missing (pretrained weights) that is not here and could not be downloaded:
    the command line then also names what else the run would have to download, in the same message."""


class CheckpointError(UserError):
    """A checkpoint file that cannot be loaded safely."""


class CheckpointWriteError(OSError):
    """A checkpoint the system refused to store (disk full, quota, file-size limit); the previous file is intact.

    Not the user's mistake: the command line prints it as one line and exits with code 1.
    """


_NOISE = (
    "Does not validate against any of the Union subtypes",
    "Expected a <class 'NoneType'>",
    "Subtypes:",
    "Errors:",
    "Given value",
    "Problem with given class_path",
)


def explain(error: BaseException) -> str:
    """jsonargparse explains a bad value over many nested lines; keep the key path and the innermost reason."""
    text = str(error)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    reasons = [line.strip().removeprefix("- ").strip() for line in text.splitlines()]
    reasons = [line for line in reasons if line and not line.startswith(_NOISE) and not line.startswith("Parser key")]
    reason = reasons[0] if reasons else text.strip().splitlines()[0]
    reason = re.sub(r"<class '(\w+)'>", r"\1", reason)
    return f"--{'.'.join(keys)}: {reason}" if keys else reason
