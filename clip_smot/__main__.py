"""The ``clip-smot`` console script and ``python -m clip_smot``.

A light entry point: it imports nothing heavy itself, so that Ctrl-C while the command line
loads (torch and open_clip take seconds to import) is the commands' own one line and exit code
130, not Python's traceback from somewhere inside torch.
"""

import signal
import sys


def main() -> None:
    """Load the command line and run it. A Ctrl-C while it loads is held until the imports are
    done: one that landed inside torch's C++ initialisation (``torch._C._c10d_init`` calls back into
    Python's import machinery) raised KeyboardInterrupt there, which C++ cannot carry, and the
    process ended in std::terminate (SIGABRT, "terminate called after throwing ..."), not in the
    one line and exit code 130."""
    held: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    hold = previous not in (signal.SIG_IGN, None)  # (a SIGINT ignored by whoever started us stays ignored)
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        from clip_smot.cli import main as run  # (torch, torchvision, open_clip: seconds)
    except KeyboardInterrupt:  # (raised by the import itself, as a handler other than ours does)
        held.append(signal.SIGINT)
    finally:
        if hold:
            signal.signal(signal.SIGINT, previous)
    if held:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
