"""DataLoader worker processes started with Ctrl-C held off, so that it is never lost in a fork."""

from __future__ import annotations

import signal
import threading
from typing import Callable, Iterator

import torch

__all__ = ["started"]


def started(loader: torch.utils.data.DataLoader) -> Iterator:
    """``iter(loader)``, with SIGINT blocked while its worker processes are forked.

    Ctrl-C that arrives during a fork runs Python's handler inside at-fork hooks (logging's,
    filelock's), where the KeyboardInterrupt is printed as "Exception ignored" and dropped: the
    run went on, or a half-started worker died and the main process saw "worker exited
    unexpectedly". Held off, the signal waits until the workers are started and is raised in the
    main process as usual; each worker lets it in again once forked (before the loader's own
    ``worker_init_fn``), where torch's worker loop ends quietly on it.
    """
    if loader.num_workers == 0 or threading.current_thread() is not threading.main_thread():
        return iter(loader)
    if not isinstance(loader.worker_init_fn, _LetIn):
        loader.worker_init_fn = _LetIn(loader.worker_init_fn)
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return iter(loader)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class _LetIn:
    """A worker's init function: SIGINT unblocked (the fork is over), then the loader's own one."""

    def __init__(self, then: Callable[[int], None] | None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        if self.then is not None:
            self.then(worker_id)
