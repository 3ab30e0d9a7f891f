"""Progress bars that draw only on a terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["progress_bar", "progress_write"]


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar on stderr that draws only on a terminal: redirected to a file or a pipe, stderr
    gets no carriage-return frames (the epoch lines of :func:`progress_write` still appear)."""
    import sys

    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False, dynamic_ncols=True,
                **kwargs)


def progress_write(text: str) -> None:
    """A line on stdout that does not break a bar being drawn; flushed at once, so that it keeps
    its place among stderr's lines when stdout is a file or a pipe (block-buffered)."""
    import sys

    from tqdm import tqdm

    tqdm.write(text)
    sys.stdout.flush()
