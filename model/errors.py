"""Trainer-side errors. The CLI turns each into one line on stderr and a non-zero exit."""


class AfmError(Exception):
    """A user-facing failure with a message that says what to do."""


class MalformedInput(AfmError):
    """Input data that cannot be used; the message names the file and line."""


class DownloadError(AfmError):
    """The dataset could not be fetched or verified; the message says how to supply it by hand."""


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
