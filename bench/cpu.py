"""CPU time of a process, for the benchmark's "CPU per job" figures.

``snapshot()`` is ``resource.getrusage(RUSAGE_SELF)``: user and system CPU seconds of every thread
of this process so far (children not included). A measured phase is the difference of two
snapshots taken in the process that did the work; :func:`between` gives it.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping


def snapshot() -> dict[str, float]:
    """This process's user and system CPU seconds so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": usage.ru_utime, "sys_s": usage.ru_stime}


def between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """The CPU seconds spent between two :func:`snapshot`\\ s: ``user_s``, ``sys_s`` and ``cpu_s``."""
    user = after["user_s"] - before["user_s"]
    system = after["sys_s"] - before["sys_s"]
    return {"user_s": user, "sys_s": system, "cpu_s": user + system}


def total(*phases: Mapping[str, float]) -> dict[str, float]:
    """The sum of several :func:`between` results (e.g. a worker and its top-ups)."""
    out = {"user_s": 0.0, "sys_s": 0.0, "cpu_s": 0.0}
    for phase in phases:
        for key in out:
            out[key] += phase.get(key, 0.0)
    return out
