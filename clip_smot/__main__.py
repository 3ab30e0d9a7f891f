"""The ``clip-smot`` console script and ``python -m clip_smot``.

A light entry point: it imports nothing heavy itself, so that Ctrl-C while the command line
loads (torch and open_clip take seconds to import) is the commands' own one line and exit code
130, not Python's traceback from somewhere inside torch.
"""

import sys


def main() -> None:
    """Load the command line and run it."""
    try:
        from clip_smot.cli import main as run  # (torch, torchvision, open_clip: seconds)
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
