"""The command line: ``remotejob`` (or ``python -m remotejob``); see ``remotejob --help``."""

from . import admin, jobs, ops, run, scale, schedule, ui
from .app import main

__all__ = ["admin", "jobs", "main", "ops", "run", "scale", "schedule", "ui"]
