"""clip_smot.common.progress: bars only on a terminal."""

import pytest


def test_progress_bar_draws_only_on_a_terminal(monkeypatch):
    """Redirected to a file, stderr gets no carriage-return frames; on a terminal the bar draws."""
    import io
    import sys

    from clip_smot.common.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, draws in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        assert list(progress_bar(range(3), desc="epoch 1")) == [0, 1, 2]
        assert ("\r" in stream.getvalue()) is draws, stream.getvalue()
    assert stream.getvalue().startswith("\repoch 1:   0%")  # (its desc: the bar says what it counts)


def test_a_finished_bar_clears_its_line_on_the_terminal(monkeypatch):
    """The bar leaves nothing behind (leave=False): its last frame is blanked and the cursor is
    back at the start of the line, for the next line of output."""
    import io
    import sys

    from clip_smot.common.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    list(progress_bar(range(3)))
    last = stream.getvalue().rsplit("\r", 2)
    assert stream.getvalue().endswith("\r") and last[-2].strip() == "" and "\n" not in stream.getvalue()


def test_progress_write_is_one_line_on_stdout_flushed_at_once(monkeypatch):
    import io
    import sys

    from clip_smot.common.progress import progress_write

    class Stdout(io.StringIO):
        def flush(self):
            flushed.append(self.getvalue())

    flushed, stdout, stderr = [], Stdout(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    progress_write("epoch 1/2  loss 0.5")
    assert flushed[-1] == stdout.getvalue() == "epoch 1/2  loss 0.5\n" and stderr.getvalue() == ""


def test_a_bar_follows_the_width_of_a_resized_terminal(monkeypatch):
    """The width is read again at each frame (dynamic_ncols): a terminal narrowed from 80 to 41
    columns gets frames of 40 characters (its last column left free), not ones of 79 that wrap.
    The width reaches tqdm both ways it reads it: os.get_terminal_size (tqdm 4.68 on), and before
    that an ioctl on the stream, which fails here (the descriptor is /dev/null's), then $COLUMNS."""
    import io
    import os
    import sys

    from clip_smot.common.progress import progress_bar

    devnull = os.open(os.devnull, os.O_WRONLY)

    class Terminal(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            return devnull

    columns = [80]
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((columns[0], 24)))
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("LINES", "24")
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    bar = progress_bar(total=4, desc="epoch 1")
    bar.update(1)
    bar.refresh()
    columns[0] = 41
    monkeypatch.setenv("COLUMNS", "41")
    bar.update(1)
    bar.refresh()
    bar.close()
    os.close(devnull)
    frames = [f.rstrip() for f in stream.getvalue().split("\r") if f.strip()]
    assert len(frames[0]) == 79 and len(frames[-1]) == 40 and frames[-1].startswith("epoch 1:  50%"), frames


def test_progress_write_clears_a_bar_being_drawn_and_draws_it_again_below(monkeypatch):
    """On a terminal the line does not land in the middle of the bar: the bar's frame is blanked
    on stderr first, and drawn again after the line (a plain print left "epoch 1:  33%|###3 ...epoch
    1/2  loss 0.5" on one screen line)."""
    import io
    import sys

    from clip_smot.common.progress import progress_bar, progress_write

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stderr, stdout = Terminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", stdout)
    bar = progress_bar(total=3, desc="epoch 1")
    bar.update(1)
    bar.refresh()
    before = len(stderr.getvalue())
    progress_write("epoch 1/2  loss 0.5")
    frames = stderr.getvalue()[before:].split("\r")
    bar.close()
    assert frames[0] == "" and frames[1] and frames[1].strip() == "", frames  # (the frame blanked)
    assert frames[-1].startswith("epoch 1:  33%|###3"), frames  # (and drawn again)
    assert stdout.getvalue() == "epoch 1/2  loss 0.5\n"


@pytest.mark.parametrize("closed", ["stderr", "stdout"])
def test_a_closed_standard_stream_draws_and_writes_nothing(monkeypatch, closed):
    """A process started with stderr or stdout closed (`2>&-`, `>&-`) has that stream None in
    Python, as print() takes (it writes nothing): no bar is drawn, the epoch line goes nowhere, and
    the run goes on. Not so, `fit 2>&-` stopped at its first epoch's bar (exit 1, nothing said:
    the traceback went to the closed stderr) and `fit >&-` after its last epoch, before the prompt
    was written."""
    import io
    import sys

    from clip_smot.common.progress import progress_bar, progress_write

    other = io.StringIO()
    monkeypatch.setattr(sys, closed, None)
    monkeypatch.setattr(sys, "stdout" if closed == "stderr" else "stderr", other)
    assert list(progress_bar(range(3), desc="epoch 1")) == [0, 1, 2]
    progress_write("epoch 1/2  loss 0.5")
    assert other.getvalue() == ("epoch 1/2  loss 0.5\n" if closed == "stderr" else "")


_NOTE = "note: stdout cannot be written (No space left on device): what goes there is dropped from here on\n"


def test_a_stdout_without_a_descriptor_that_fails_is_given_up_and_kept(monkeypatch):
    """stdout a stream of Python's own (no file descriptor) whose writes fail (ENOSPC): the epoch
    line's write is the one note on stderr, later lines go to the null device, and the stream given
    up is kept, never closed, so that its unwritten bytes are not tried again (a stream collected
    is closed, which flushes them: 'Exception ignored' on stderr under python -X dev)."""
    import errno
    import gc
    import io
    import os
    import sys

    from clip_smot.common.progress import progress_write

    class FullRaw(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    closed = []

    class Stream(io.TextIOWrapper):
        def close(self):  # (as a collection of the stream calls it: a flush of what it holds, failing again)
            closed.append(self)
            super().close()

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(sys, "stdout", Stream(io.BufferedWriter(FullRaw()), encoding="utf-8"))
    progress_write("epoch 1/2  loss 0.5")  # (buffered, then its flush fails)
    assert isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.name == os.devnull
    progress_write("epoch 2/2  loss 0.4")
    sys.stdout.close()  # (the null device's, opened for the rest of a process)
    gc.collect()
    assert stderr.getvalue() == _NOTE and closed == []


def test_a_stdout_with_a_descriptor_that_fails_is_pointed_at_the_null_device(monkeypatch):
    """stdout a file on a full disk (/dev/full: ENOSPC): its descriptor is pointed at the null
    device, the stream kept (print and click write to it), one note on stderr; a caller that says
    the line itself (say=False) gets no note."""
    import errno
    import io
    import os
    import sys

    from clip_smot.common.progress import give_up_stdout, progress_write

    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    with open("/dev/full", "w", encoding="utf-8") as full:
        monkeypatch.setattr(sys, "stdout", full)
        progress_write("epoch 1/2  loss 0.5")
        assert sys.stdout is full and os.path.samestat(os.fstat(full.fileno()), os.stat(os.devnull))
        progress_write("epoch 2/2  loss 0.4")
        assert stderr.getvalue() == _NOTE
    with open("/dev/full", "w", encoding="utf-8") as full:
        monkeypatch.setattr(sys, "stdout", full)
        give_up_stdout(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), say=False)
        assert os.path.samestat(os.fstat(full.fileno()), os.stat(os.devnull)) and stderr.getvalue() == _NOTE
