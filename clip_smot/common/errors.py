"""The one exception type for a user's mistake (bad file, bad flag, bad data).

Library code raises :class:`UserError` with one line that names the file or flag and what is
wrong; the CLI prints that line and exits non-zero without a traceback (docs/method.md §6).
"""

import re

__all__ = ["UserError", "cut", "first_line", "load_error", "one_line"]

# control characters (C0, DEL, C1: str.splitlines breaks at some, a terminal acts on others, a NUL
# ends a C string) and the Unicode line and paragraph separators, where str.splitlines breaks too
# control characters, line and paragraph separators, and the lone surrogates by which Python keeps a
# name's bytes that are not UTF-8 (which a strict UTF-8 stdout cannot write: a UnicodeEncodeError)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class UserError(Exception):
    """A problem with the user's input, reported as one line, never with a traceback."""


def cut(text: str, limit: int = 40) -> str:
    """``text``, or its first ``limit - 3`` characters and ``...`` when it is longer than ``limit``
    (a value quoted from a user's file may be long)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, or its type's name when the message is empty
    (for a one-line error that quotes the reason, e.g. an empty file's unpickling error). A first
    line that only announces the next (torch's "Error(s) in loading state_dict for CLIP:") has
    the next one added; what is longer than ``limit`` characters is cut there."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return cut(text, limit)


def load_error(e: BaseException) -> str:
    """A ``torch.load(weights_only=True)`` error as "Type: reason" on one line. Its refusal of a
    file keeps only the unpickler's reason, and its refusal of a TorchScript archive says that it
    is one: torch's first line advises loading the file with ``weights_only=False``, which would
    run whatever code the file holds."""
    text = str(e)
    if "Weights only load failed" in text:
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?:\. |\n|$)", text)
        reason = found.group(1).strip() if found else "an object other than tensors and plain values"
        return f"{type(e).__name__}: not a weights-only file ({reason[:200]})"
    if "with TorchScript archives" in text:  # (its advice too: weights_only=False)
        return f"{type(e).__name__}: a TorchScript archive (torch.jit.save's), not a file of tensors and plain values"
    return f"{type(e).__name__}: {first_line(e)}"


def one_line(text: str) -> str:
    """``text`` with each line break and other control character written as its escape
    (``\\u000a``, ``\\u0000``): a message that quotes a file name holding a newline stays one
    line, and one holding a NUL byte or an escape sequence prints as text; a byte of a name that
    is not UTF-8 (kept by Python as a lone surrogate) as ``\\udcff``, which any stream can write."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
