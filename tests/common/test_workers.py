"""DataLoader workers started with Ctrl-C held off (common.workers.started)."""

import os
import signal

import pytest
import torch

from clip_smot.common.workers import started


class _Masks(torch.utils.data.Dataset):
    """Item: whether SIGINT raises KeyboardInterrupt in the process that makes it, and what the init
    function saw."""

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return signal.getsignal(signal.SIGINT) is not signal.default_int_handler, os.environ.get("INIT_RAN", "")


def _init(worker_id):
    os.environ["INIT_RAN"] = f"yes {worker_id}"


_SEND = []


def _interrupt_in_fork_hook():  # (what a terminal's Ctrl-C during the fork amounts to)
    if _SEND:
        os.kill(os.getpid(), signal.SIGINT)


os.register_at_fork(after_in_parent=_interrupt_in_fork_hook)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (the dropped one)
def test_a_ctrl_c_during_the_fork_is_raised_after_it_and_workers_take_it_again():
    """Python drops a KeyboardInterrupt raised in an at-fork hook ("Exception ignored"): Ctrl-C as
    DataLoader workers started was lost, or killed a half-started worker. Held off during the fork,
    it is raised in the main process once the workers are up; in the workers Python's handler is
    back, and the loader's own worker_init_fn still runs."""
    loader = torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1, worker_init_fn=_init)
    blocked, init = zip(*[(bool(b), i[0]) for b, i in started(loader)])
    assert blocked == (False, False) and init == ("yes 0", "yes 0")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # (the main process: as before)
    _SEND.append(True)
    try:
        with pytest.raises(KeyboardInterrupt):
            started(torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1))
        # without it, the interrupt raised in the hook is dropped: the loader runs on as if none came
        assert len(list(iter(torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1)))) == 2
    finally:
        _SEND.clear()


def test_each_worker_gets_its_own_id_and_a_loader_started_each_epoch_is_wrapped_once():
    """The loader's worker_init_fn is called with each worker's id (per-worker seeding or
    sharding relies on it), in every epoch that starts the workers again; the handler-restoring
    wrapper goes around it once, not once more per epoch."""
    loader = torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=2, worker_init_fn=_init)
    for _ in range(2):  # (two epochs)
        assert sorted(i[0] for _, i in started(loader)) == ["yes 0", "yes 1"]
    assert loader.worker_init_fn.then is _init


def test_a_ctrl_c_held_off_goes_to_the_handler_installed_before():
    """Held off during the fork, the SIGINT is handed to the handler that was there (the command
    line's, which records it), not turned into a KeyboardInterrupt of its own: a handler that
    does not raise lets the workers start."""
    got = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    _SEND.append(True)
    try:
        items = list(started(torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1)))
    except KeyboardInterrupt:  # (so that pytest reports it as this test's failure, not as a Ctrl-C of its own)
        items = None
    finally:
        _SEND.clear()
        signal.signal(signal.SIGINT, previous)
    assert items is not None and len(items) == 2 and got == [signal.SIGINT]


def test_an_ignored_ctrl_c_stays_ignored_in_the_workers():
    """Under nohup (SIGINT ignored) there is nothing to hold off: the workers keep ignoring it, and a
    SIGINT during the fork changes nothing."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    _SEND.append(True)
    try:
        loader = torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1)
        assert [bool(b) for b, _ in started(loader)] == [True, True]  # (not Python's handler)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        _SEND.clear()
        signal.signal(signal.SIGINT, previous)


def test_workers_start_from_a_thread_other_than_the_main_one():
    """Only the main thread may set a signal handler: elsewhere the loader is started as it is."""
    import threading

    got = []
    thread = threading.Thread(target=lambda: got.extend(
        started(torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1, worker_init_fn=_init))))
    thread.start()
    thread.join(timeout=120)
    assert [(bool(b), i[0]) for b, i in got] == [(False, "yes 0"), (False, "yes 0")]


class _FailingSampler(torch.utils.data.Sampler):
    def __init__(self):
        pass

    def __iter__(self):
        raise RuntimeError("the sampler failed")


def test_a_loader_that_fails_to_start_gives_ctrl_c_back():
    """Ctrl-C is held off only while the workers start: a loader whose start fails (here its
    sampler) raises its error with the handler from before back in place; left behind, every later
    Ctrl-C would be recorded and dropped, and the run could not be interrupted."""
    loader = torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=1, sampler=_FailingSampler())
    with pytest.raises(RuntimeError, match="the sampler failed"):
        started(loader)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_loader_without_workers_is_started_as_it_is(monkeypatch):
    """No worker process, no fork: nothing to hold off, and the loader is left as it was (its
    worker_init_fn not wrapped, the SIGINT handler never swapped)."""
    swaps = []
    real_signal = signal.signal
    monkeypatch.setattr(signal, "signal", lambda *args: swaps.append(args) or real_signal(*args))
    loader = torch.utils.data.DataLoader(_Masks(), batch_size=1, num_workers=0, worker_init_fn=_init)
    assert len(list(started(loader))) == 2 and loader.worker_init_fn is _init and swaps == []
