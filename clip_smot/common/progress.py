"""Progress bars that draw only on a terminal."""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["progress_bar", "progress_write", "give_up_stdout", "point_at_null"]


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that draws only on a terminal: redirected to a file or a pipe, stderr
    gets no carriage-return frames (the epoch lines of :func:`progress_write` still appear)."""
    import sys

    from tqdm import tqdm

    drawn = sys.stderr is not None and sys.stderr.isatty()  # (None: closed as the process started, `2>&-`)
    return tqdm(iterable, file=sys.stderr, disable=not drawn, leave=False, dynamic_ncols=True, **kwargs)


def progress_write(text: str) -> None:
    """A line on stdout that does not break a bar being drawn; flushed at once, so that it keeps
    its place among stderr's lines when stdout is a file or a pipe (block-buffered).

    Where stdout cannot take it (a reader gone: ``fit | head -1``; a full disk), the run goes on
    without its lines on stdout (:func:`give_up_stdout`): they are reports (fit and train keep them
    in log.jsonl too), and a training stopped for one would leave its work unfinished."""
    import sys

    from tqdm import tqdm

    if sys.stdout is None:  # (closed as the process started, `>&-`: the line goes nowhere, as print's)
        return
    try:
        tqdm.write(text)
        sys.stdout.flush()
    except OSError as e:
        give_up_stdout(e)


def give_up_stdout(error: OSError, say: bool = True) -> None:
    """Send what is written to stdout from now on nowhere, after ``error`` writing to it, and say
    so on stderr. Its file descriptor is pointed at the null device, so that the bytes it holds
    unwritten are not tried again (and failed again) at the process's end; a stream without one is
    replaced by the null device, and kept, not closed, for the same reason. ``say=False``: the
    caller says it (the line that ends a command)."""
    import os
    import sys

    if not point_at_null(sys.stdout):  # (no descriptor: a stream of Python's own)
        _GIVEN_UP.append(sys.stdout)
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 (for the rest of the process)
    if say and sys.stderr is not None:
        print(f"note: stdout cannot be written ({error.strerror or error}): what goes there is dropped from "
              "here on", file=sys.stderr, flush=True)


def point_at_null(stream: IO[str]) -> bool:
    """Point the file descriptor of ``stream`` at the null device and flush what the stream holds
    there (not tried again, and failed again, where it could not be written); False where the
    stream has no descriptor or the null device cannot be opened."""
    import os

    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


_GIVEN_UP: list = []  # the streams given up without a descriptor (their unwritten bytes never tried again)
