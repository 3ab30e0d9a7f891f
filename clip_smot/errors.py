"""The one exception type for a user's mistake (bad file, bad flag, bad data).

Library code raises :class:`UserError` with one line that names the file or flag and what is
wrong; the CLI prints that line and exits non-zero without a traceback (SPEC section 6).
"""

__all__ = ["UserError", "first_line"]


class UserError(Exception):
    """A problem with the user's input, reported as one line, never with a traceback."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty
    (for a one-line error that quotes the reason, e.g. an empty file's unpickling error)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
