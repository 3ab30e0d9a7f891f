"""DataLoader worker processes started with Ctrl-C held off, so that it is never lost in a fork."""

from __future__ import annotations

import signal
import threading
from typing import Callable, Iterator

import torch

__all__ = ["started"]


def started(loader: torch.utils.data.DataLoader) -> Iterator:
    """``iter(loader)``, with Ctrl-C held off while its worker processes are forked.

    Ctrl-C that arrives during a fork runs Python's handler inside at-fork hooks (logging's,
    filelock's), where the KeyboardInterrupt is printed as "Exception ignored" and dropped: the
    run went on, or a half-started worker died and the main process saw "worker exited
    unexpectedly". Meanwhile SIGINT is only recorded (whichever thread the signal reaches, Python
    runs its handler in the main thread, hooks included); once the workers are started, the
    handler that was installed before gets it, where it raises as usual. Each worker restores
    Python's own handler first (before the loader's ``worker_init_fn``): torch's worker loop ends
    quietly on Ctrl-C.
    """
    previous = signal.getsignal(signal.SIGINT)
    if loader.num_workers == 0 or threading.current_thread() is not threading.main_thread() or not callable(previous):
        return iter(loader)  # (SIGINT ignored or left to the OS: nothing to hold off)
    if not isinstance(loader.worker_init_fn, _LetIn):
        loader.worker_init_fn = _LetIn(loader.worker_init_fn)
    came: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: came.append(signum))
    try:
        workers = iter(loader)
    finally:
        signal.signal(signal.SIGINT, previous)
    if came:
        previous(signal.SIGINT, None)  # (Python's: raises KeyboardInterrupt; the workers are stopped by the loader)
    return workers


class _LetIn:
    """A worker's init function: Python's SIGINT handler again, then the loader's own one."""

    def __init__(self, then: Callable[[int], None] | None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.then is not None:
            self.then(worker_id)
