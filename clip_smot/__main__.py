"""The ``clip-smot`` console script and ``python -m clip_smot``.

A light entry point: it imports nothing heavy itself, so that Ctrl-C while the command line
loads (torch and open_clip take seconds to import) is the commands' own one line and exit code
130, not Python's traceback from somewhere inside torch.
"""

import os
import signal
import sys


def main() -> None:
    """Load the command line and run it. A Ctrl-C while it loads is held until the imports are
    done: one that landed inside torch's C++ initialisation (``torch._C._c10d_init`` calls back into
    Python's import machinery) raised KeyboardInterrupt there, which C++ cannot carry, and the
    process ended in std::terminate (SIGABRT, "terminate called after throwing ..."), not in the
    one line and exit code 130."""
    if sys.stderr is not None:
        sys.stderr = _Unfailing(sys.stderr)
    held: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    hold = previous not in (signal.SIG_IGN, None)  # (a SIGINT ignored by whoever started us stays ignored)
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    unloadable = None
    try:
        from clip_smot.cli import main as run  # (torch, torchvision, open_clip: seconds)
    except KeyboardInterrupt:  # (raised by the import itself, as a handler other than ours does)
        held.append(signal.SIGINT)
    except (ImportError, MemoryError) as e:  # (a missing package; a memory limit torch cannot be mapped in)
        unloadable = e
    finally:
        if hold:
            signal.signal(signal.SIGINT, previous)
    if held:
        if sys.stderr is not None:  # (closed as the process started: print would write it to stdout)
            print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    if unloadable is not None:
        if sys.stderr is not None:
            print(f"Error: {_unloadable(unloadable)}", file=sys.stderr)
        sys.exit(1)
    # (a process of torchrun ends as Python ends it: torchrun's agent stops every other process
    # as soon as one has failed, and the second the teardown takes is what lets each say its line)
    worker = os.environ.get("WORLD_SIZE", "1").strip() not in ("", "1")
    try:
        run()
    except SystemExit as e:  # (click ends every command so)
        if worker:
            raise
        _end(e.code)
    if not worker:
        _end(0)


def _unloadable(e: BaseException) -> str:
    """One line for the libraries that could not be loaded (``e``: the ImportError or MemoryError
    of the import), with the address-space limit where one is set (``ulimit -v``, a batch system's
    memory limit): under 1 to 3 GiB torch's libraries cannot be mapped ("failed to map segment
    from shared object") or its first allocations fail."""
    import resource

    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"the libraries clip-smot runs on could not be loaded ({type(e).__name__}: {lines[0] if lines else '-'})"
    try:
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (OSError, ValueError, AttributeError):
        return text
    if soft != resource.RLIM_INFINITY:
        text += f"; the address space is limited to {soft >> 20} MiB (ulimit -v): torch needs more"
    return text


class _Unfailing:
    """stderr whose failing writes are dropped: on a full disk (``2> log``) or with its reader gone,
    the notes, epoch lines and error lines written there have nowhere else to go, and a training
    or a scoring is not thrown away for one (train's first epoch line stopped it before its
    model was written). Its file descriptor is then pointed at the null device, so that what the
    stream holds unwritten is not tried again, nor at the process's end."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._drop()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._drop()

    def _drop(self) -> None:
        from clip_smot.common.progress import point_at_null  # (light: nothing heavy imported)

        point_at_null(self._stream)

    def __getattr__(self, name):  # (isatty, fileno, encoding, ...: the stream's own)
        return getattr(self._stream, name)


def _end(code) -> None:
    """End the process with the exit code ``code`` as the interpreter does once a program is over
    (the threads joined, the atexit callbacks run, the streams flushed), less its teardown of the
    modules: Python restores SIGINT's default action first, so a Ctrl-C in that second (torch's
    modules are many) ended the process with no line, and no handler of ours could say it."""
    import atexit
    import ctypes
    import threading

    if code is None:
        code = 0
    elif not isinstance(code, int):  # (sys.exit("message"), as the interpreter shows it)
        if sys.stderr is not None:
            print(code, file=sys.stderr)
        code = 1
    shutdown = getattr(threading, "_shutdown", None)  # (what the interpreter calls first: non-daemon threads)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # (closed as the process started, `>&-`: Python's end passes it over too)
            continue
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 (a closed pipe: the interpreter's exit code for it, whatever the command's)
            code = 120
    try:
        ctypes.CDLL(None).fflush(None)  # (what C libraries wrote to their own buffers)
    except (OSError, AttributeError):
        pass
    os._exit(code)


if __name__ == "__main__":
    main()
