"""A worker's receive across the priority levels of its status: ``<name>-<status>-high``, the
status's own queue (normal) and ``<name>-<status>-low``.

The rule, in three parts:

- **Busy** (the last receive brought messages, or the worker just started): each receive is a
  *round* of short polls (wait 0). Its first level is picked by smooth weighted round robin over
  the levels in play, weights high 6 : normal 3 : low 1; if that level gives fewer messages than
  there is room for, the round tops up from the other levels in priority order. Under saturation
  high gets 6 rounds in 10, normal 3 and low 1: high waits far less, and low is never starved. A
  level whose poll came back empty sits out the rounds of the next :data:`RECHECK_S` seconds, so
  a worker busy on one level makes at most one extra receive a second per empty level, and a job
  arriving in an empty level is looked for within that second.
- **Idle** (a whole round brought nothing): one long poll (the queue's ``wait_time``) on one
  level at a time, the levels taken in turn, exactly one receive per wait as with one queue. A
  job in a level the worker is not polling waits for its turn: at most ``(levels - 1) x
  wait_time`` (40 s with three levels and the default 20 s; several workers de-phase it). The
  first message seen makes the worker busy, and the next round looks at every level.
- **One level** (no priority queue exists): every receive is one long poll of the status's
  queue, as without priorities.

Which levels exist is found at the first receive and then every :data:`DISCOVER_EVERY_S`
seconds: a level queue this process created is known for free, another costs one ``depth()``
(on SQS a ``GetQueueUrl``, failing while the queue does not exist): two requests a minute while
neither exists, none once both are found. A level queue that cannot be received from (removed,
or refused) is left until the next look; the status's own queue never is.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from . import keys
from .backends.base import Message, QueueDepth
from .context import Context
from .errors import NotFound, RemoteJobError

logger = logging.getLogger(__name__)

Level = str | None
"""A priority level as queues name it: ``"high"``, None (normal), ``"low"``."""
Received = tuple[str, Message]
"""A message and the queue it was received from."""

LEVELS: tuple[Level, ...] = ("high", None, "low")
"""The levels, highest first (the order of top-ups and of idle turns)."""
WEIGHTS: dict[Level, int] = {"high": 6, None: 3, "low": 1}
"""Shares of a busy worker's rounds per level (smooth weighted round robin)."""
DISCOVER_EVERY_S = 60.0
"""How often a worker looks for level queues it does not know of yet."""
RECHECK_S = 1.0
"""How long a level found empty sits out a busy worker's rounds."""


class Poller:
    """Receives a status's messages across its priority levels (see the module docstring).

    Args:
        ctx: the job system.
        status: the status served.
        stopping: set to cut a long poll short (where the backend can).
    """

    def __init__(self, ctx: Context, status: str, stopping: threading.Event | None = None) -> None:
        self.ctx = ctx
        self.status = status
        self._stopping = stopping
        self._queues: dict[Level, str] = {None: keys.queue_name(ctx.name, status)}
        self._current: dict[Level, int] = dict.fromkeys(LEVELS, 0)
        self._dry: dict[Level, float] = {}
        """Levels whose last poll was empty, and when (monotonic)."""
        self._empty_at: dict[Level, float] = {}
        """Levels whose last long poll was empty since a message was last seen, and when it began."""
        self._busy = True  # a worker starts with a round: jobs may be waiting in any level
        self._turn = 0
        self._discovered_at = -math.inf

    @property
    def levels(self) -> list[Level]:
        """The levels whose queues are known to exist, highest first."""
        return [level for level in LEVELS if level in self._queues]

    @property
    def quiet_since(self) -> float | None:
        """When (epoch seconds) the oldest of the latest empty long polls of every level began,
        if every level was long-polled empty since a message was last received; else None."""
        if any(level not in self._empty_at for level in self._queues):
            return None
        return min(self._empty_at[level] for level in self._queues)

    def receive(self, room: int, wait: float) -> list[Received]:
        """Up to ``room`` (1-10) messages with their queues: a busy round, or one long poll of
        ``wait`` seconds.

        Raises:
            RemoteJobError: the status's own queue could not be received from (a level's queue
                that cannot be is left until the next look).
        """
        self._discover()
        if len(self._queues) == 1:
            return self._poll(None, room, wait)
        if self._busy:
            got = self._round(room)
            self._busy = bool(got)
            return got
        levels = self.levels
        level = levels[self._turn % len(levels)]
        self._turn += 1
        got = self._poll(level, room, wait)
        self._busy = bool(got)
        return got

    def _round(self, room: int) -> list[Received]:
        """Short polls: the weighted pick first, then the other levels, highest first, while
        there is room (levels found empty within RECHECK_S sit it out)."""
        now = time.monotonic()
        ready = [level for level in self.levels if now - self._dry.get(level, -math.inf) >= RECHECK_S]
        if not ready:
            return []
        first = self._pick(ready)
        got: list[Received] = []
        for level in (first, *(level for level in ready if level != first)):
            got += self._poll(level, room - len(got), 0)
            if len(got) >= room:
                break
        return got

    def _pick(self, ready: list[Level]) -> Level:
        """Smooth weighted round robin (as nginx balances upstreams): over any ten picks among
        the three levels, high 6, normal 3, low 1, spread out; ties go to the higher level."""
        for level in ready:
            self._current[level] += WEIGHTS[level]
        best = max(ready, key=lambda level: self._current[level])
        self._current[best] -= sum(WEIGHTS[level] for level in ready)
        return best

    def _poll(self, level: Level, room: int, wait: float) -> list[Received]:
        queue = self._queues[level]
        began = time.time()
        try:
            messages = self.ctx.queues.receive(queue, room, wait, self.ctx.visibility_timeout,
                                               self._stopping if wait else None)
        except RemoteJobError as exc:
            if level is None:
                raise
            # e.g. removed, or refused by an IAM policy older than priorities: the other levels go on
            logger.warning("cannot receive from priority queue %s (%s); leaving it for %g s", queue, exc,
                           DISCOVER_EVERY_S)
            self._forget(level)
            return []
        if messages:
            self._dry.pop(level, None)
            self._empty_at.clear()
        else:
            self._dry[level] = time.monotonic()
            if wait:
                self._empty_at[level] = began
        return [(queue, message) for message in messages]

    def _forget(self, level: Level) -> None:
        del self._queues[level]
        self._dry.pop(level, None)
        self._empty_at.pop(level, None)

    def _discover(self) -> None:
        """Now and then, look for the level queues not known yet (see the module docstring)."""
        if time.monotonic() - self._discovered_at < DISCOVER_EVERY_S:
            return
        self._discovered_at = time.monotonic()
        created = self.ctx.level_queues(self.status)
        for level in ("high", "low"):
            if level in self._queues:
                continue
            name = keys.queue_name(self.ctx.name, self.status, level)
            if level not in created:
                try:
                    self.ctx.queues.depth(name)
                except NotFound:
                    continue
                except RemoteJobError as exc:  # it may exist: receiving from it will tell
                    logger.info("could not read the depth of priority queue %s: %s", name, exc)
            logger.info("serving priority queue %s", name)
            self._queues[level] = name


def level_depths(ctx: Context, missing: dict[str, float] | None = None) -> dict[str, QueueDepth]:
    """The depths of the statuses' priority level queues that exist, by ``<status>-<level>``
    (e.g. ``pending-high``). With ``missing`` (kept by the caller between calls), a level queue
    found missing is looked for again at most every :data:`DISCOVER_EVERY_S` seconds; one that
    cannot be read is left out."""
    found: dict[str, QueueDepth] = {}
    for status in ctx.statuses:
        for level in ("high", "low"):
            name = keys.queue_name(ctx.name, status, level)
            if missing is not None and time.monotonic() - missing.get(name, -math.inf) < DISCOVER_EVERY_S:
                continue
            try:
                found[f"{status}-{level}"] = ctx.queues.depth(name)
            except NotFound:
                if missing is not None:
                    missing[name] = time.monotonic()
            except RemoteJobError as exc:
                logger.debug("cannot read the depth of %s: %s", name, exc)
    return found
