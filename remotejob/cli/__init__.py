"""The command line: ``remotejob`` (or ``python -m remotejob``); see ``remotejob --help``."""

from . import admin, jobs, run
from .app import main

__all__ = ["admin", "jobs", "main", "run"]
