"""clip_smot.common.progress: bars only on a terminal."""


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
