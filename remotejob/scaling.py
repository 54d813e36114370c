"""The scaling signal: how much work waits in each status's queues, per worker, and how many
workers it wants.

A status's **backlog** is its messages waiting (``visible``) plus those held by workers
(``in_flight``), summed over the status's own queue and its priority levels' queues
(``<name>-<status>-high`` and ``-low``, once they exist). Delayed messages (``delayed``: sent
with a delay, not due yet) are reported but not counted: no worker can take them yet. This is
what AWS advises target tracking on for SQS consumers: backlog per worker, against the backlog
one worker should have (acceptable latency / job duration x the worker's concurrency).

``remotejob stats`` prints it; ``remotejob metrics --cloudwatch`` publishes it. The functions
below other than :func:`depths` and :func:`backlog` are pure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import keys, levels
from .backends.base import QueueDepth
from .errors import ConfigError

if TYPE_CHECKING:
    from .queue import Queue

PRIORITIES: tuple[tuple[str | None, str], ...] = ((None, "normal"), ("high", "high"), ("low", "low"))
"""A status's queues: the level as queue names spell it, and as users do."""


@dataclass(frozen=True)
class LevelDepth:
    """The depth of one queue of a status: its own (``normal``) or a priority level's."""

    status: str
    priority: str
    """``"normal"``, ``"high"`` or ``"low"``."""
    queue: str
    """The queue's name, e.g. ``jobs-pending-high``."""
    depth: QueueDepth


@dataclass(frozen=True)
class Backlog:
    """One status's messages, summed over its priority levels' queues."""

    status: str
    visible: int = 0
    """Waiting for a worker."""
    in_flight: int = 0
    """Received by a worker and not yet deleted (running, or held for a retry's backoff)."""
    delayed: int = 0
    """Sent with a delay that has not passed: not in the backlog."""

    @property
    def backlog(self) -> int:
        """The work for workers: ``visible + in_flight``."""
        return self.visible + self.in_flight

    def doc(
        self,
        workers: int | None = None,
        target: float | None = None,
        min_workers: int = 0,
        max_workers: int | None = None,
    ) -> dict[str, Any]:
        """The JSON object ``stats --json`` prints: ``status``, ``visible``, ``in_flight``,
        ``delayed``, ``backlog``; with ``workers``, ``per_worker`` (see :func:`per_worker`); with
        ``target`` (the backlog one worker should have), ``desired_workers`` (see
        :func:`desired_workers`)."""
        doc: dict[str, Any] = {"status": self.status, "visible": self.visible, "in_flight": self.in_flight,
                               "delayed": self.delayed, "backlog": self.backlog}
        if workers is not None:
            doc["per_worker"] = per_worker(self.backlog, workers)
        if target is not None:
            doc["desired_workers"] = desired_workers(self.backlog, target, min_workers, max_workers)
        return doc


def per_worker(backlog: int, workers: int) -> float:
    """``backlog / workers``; with no worker running, the whole backlog (so that a service
    scaled to zero scales out when work arrives, and stays at zero while there is none).

    Raises:
        ValueError: a negative count.
    """
    if backlog < 0 or workers < 0:
        raise ValueError(f"backlog ({backlog}) and workers ({workers}) must not be negative")
    return float(backlog) if workers == 0 else backlog / workers


def desired_workers(backlog: int, target: float, min_workers: int = 0, max_workers: int | None = None) -> int:
    """``ceil(backlog / target)``, kept within ``[min_workers, max_workers]``.

    Args:
        backlog: the status's backlog.
        target: the backlog one worker should have (> 0): acceptable latency / job duration x
            the worker's concurrency.
        min_workers: the fewest workers to ask for.
        max_workers: the most (None: no bound).

    Raises:
        ValueError: ``target`` not above 0, a negative bound, or ``min_workers > max_workers``.
    """
    if not target > 0 or math.isinf(target):
        raise ValueError(f"the backlog per worker must be a number above 0, not {target}")
    if min_workers < 0 or (max_workers is not None and max_workers < min_workers):
        raise ValueError(f"the worker bounds must satisfy 0 <= min ({min_workers}) <= max ({max_workers})")
    wanted = math.ceil(round(backlog / target, 9))  # 0.3 / 0.1 is 2.9999999999999996
    if max_workers is not None:
        wanted = min(wanted, max_workers)
    return max(wanted, min_workers)


def ecs_service(value: str) -> tuple[str, str]:
    """``CLUSTER/SERVICE`` (the cluster by name or ARN) as ``(cluster, service)``.

    Raises:
        ConfigError: not of that form.
    """
    cluster, _, service = value.rpartition("/")
    if not cluster or not service:
        raise ConfigError(f"{value!r} is not CLUSTER/SERVICE, e.g. jobs-cluster/thumbnail-workers")
    return cluster, service


def depths(queue: Queue) -> list[LevelDepth]:
    """The depths of every status's queues that exist, status by status (normal, high, low).

    Raises:
        NotFound: a status's own queue does not exist (``remotejob init`` creates them).
        BackendUnavailable: a depth could not be read (a level's queue that cannot be is left out).
    """
    ctx = queue.context
    found = levels.level_depths(ctx)  # the priority levels' queues that exist
    rows: list[LevelDepth] = []
    for status in ctx.statuses:
        for level, priority in PRIORITIES:
            name = keys.queue_name(ctx.name, status, level)
            depth = found.get(f"{status}-{level}") if level else ctx.queues.depth(name)
            if depth is not None:
                rows.append(LevelDepth(status, priority, name, depth))
    return rows


def backlogs(found: Iterable[LevelDepth]) -> list[Backlog]:
    """Sum ``found`` per status (in the order the statuses first appear)."""
    sums: dict[str, Backlog] = {}
    for row in found:
        was = sums.get(row.status, Backlog(row.status))
        sums[row.status] = Backlog(row.status, was.visible + row.depth.waiting,
                                   was.in_flight + row.depth.in_flight, was.delayed + row.depth.delayed)
    return list(sums.values())


def backlog(queue: Queue) -> list[Backlog]:
    """The backlog of each of the job system's statuses (``queue.statuses``): one depth read per
    queue of each status (see :func:`depths`)."""
    return backlogs(depths(queue))
