"""``python -m clip_smot`` runs the command line."""

from clip_smot.cli import main

main()
