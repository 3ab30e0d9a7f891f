"""``python -m clip_smot`` runs the command line."""

from .cli import main

main()
