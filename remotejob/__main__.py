"""``python -m remotejob`` runs the command line."""

from .cli import main

main()
