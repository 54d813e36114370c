"""Jobs due later: ``submit(..., delay=)`` / ``at=`` for any delay, with no scheduler process.

A queue delays a message itself for up to 15 minutes (SQS's ``DelaySeconds``; the embedded queue
is as strict). A job due within that is sent at once with the remaining delay, which costs
nothing extra. A job due later is **parked**: its sealed message is written into the store as a
timer object, ``timers/<due ms><random>`` (the key sorts by due time, and one object holds up to
:data:`PARK_MAX_MESSAGES` messages of one submit). Every worker, once per ``schedule_check``
(60 s by default), lists ``timers/`` from its start and **dispatches** each timer due within the
queue's own delay: it sends the messages with the delay that is left, then deletes the timer.
So a parked job reaches its queue several minutes before it is due and starts on time; it never
starts early, because its queue holds it until then (and a worker that sees a job before its
``due``, after a clock jump, gives it back until then).

Any number of workers dispatch at once, and a worker may die between sending and deleting; so a
parked message may be sent twice. Its envelope says ``once``: its first delivery claims the run
(``jobs/<id>/start-<status>``, a create-once record naming its message id, as a pipeline's
later stages do) and every other copy is dropped without running. That delivery also reads the
job's outcome record, so a cancel made months before still holds.

Cost, in requests: a job due within 15 minutes, none beyond its send. A parked job: one PUT of
its timer per :data:`PARK_MAX_MESSAGES` jobs of a submit, one GET and one DELETE of it at
dispatch, the sends (ten messages per request), then one PUT (the start claim) and one GET (the
outcome check) at its first delivery. Each worker lists ``timers/`` once per check: one LIST,
whatever the number of parked jobs (it stops at the first timer not yet due).
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import keys, signing
from .backends.base import OutgoingMessage
from .errors import EnvelopeError, NotFound, RemoteJobError, UncertainResult
from .limits import group, send_batches

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)

PARK_MAX_MESSAGES = 500
"""Messages one timer object holds at most (a larger submit writes several)."""
PARK_MAX_BYTES = 8 * 1024 * 1024
"""Bytes of messages one timer object holds at most."""
DISPATCH_MAX = 1000
"""Timer objects one dispatch sends at most (the next check goes on)."""
DISPATCHERS = 8
"""Timer objects one dispatch sends at once."""
_PUT_TRIES = 5
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90``, ``90s``, ``15m``, ``2h``, ``1d``, ``1w``, ``1h30m``.

    Raises:
        ValueError: not such a duration.
    """
    rest, total, parts = text.strip().lower(), 0.0, 0
    while rest:
        match = _DURATION.match(rest)
        if match is None or (not match[2] and (parts or match.end() != len(rest))):
            raise ValueError(f"cannot read {text!r} as a duration: write e.g. 90s, 15m, 2h, 1d, 1w or 1h30m")
        total += float(match[1]) * _UNITS[match[2] or "s"]
        parts += 1
        rest = rest[match.end():].lstrip()
    if not parts:
        raise ValueError("empty duration: write e.g. 90s, 15m, 2h, 1d")
    return total


def parse_time(text: str) -> datetime:
    """An ISO 8601 time with its zone, e.g. ``2026-12-01T09:00Z`` or ``2026-12-01 09:00+01:00``.

    Raises:
        ValueError: not such a time, or one without a zone.
    """
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"cannot read {text!r} as a time: write ISO 8601 with a zone, "
                         "e.g. 2026-12-01T09:00Z") from None
    if when.tzinfo is None:
        raise ValueError(f"time {text!r} has no zone: add one, e.g. {text.strip()}Z for UTC")
    return when


def due_time(delay: float | timedelta | None, at: datetime | None, now: float) -> float | None:
    """When a job submitted at ``now`` with ``delay`` (seconds or a timedelta) or ``at`` (an aware
    datetime) may start, seconds since the epoch; None when neither is given. A time in the
    past means at once.

    Raises:
        ValueError: both given, a negative or non-finite delay, or a naive datetime.
        TypeError: a delay or time of another type.
    """
    if delay is not None and at is not None:
        raise ValueError("give delay= or at=, not both")
    if at is not None:
        if not isinstance(at, datetime):
            raise TypeError(f"at must be a datetime with a timezone, got {type(at).__name__}")
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError("at is a naive datetime: give it a timezone, e.g. "
                             "datetime(2026, 12, 1, 9, tzinfo=timezone.utc)")
        return at.timestamp()
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"delay must be seconds (a number) or a timedelta, got {type(delay).__name__}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"delay must be a finite number of seconds >= 0, got {delay!r}")
    return now + seconds if seconds > 0 else None


def delay_for(due: float, max_delay_s: int, now: float | None = None) -> int:
    """The message delay (whole seconds, as SQS takes it) that makes a job due at ``due`` visible
    less than a second before then (at most the queue's ``max_delay_s``); the worker that takes
    it waits out the rest (``lifecycle.begin``), so it starts neither early nor a second late."""
    left = due - (time.time() if now is None else now)
    return max(0, min(max_delay_s, math.floor(left)))


def park_batches(messages: Sequence[str]) -> list[list[int]]:
    """Indices of ``messages`` grouped into timer objects (:data:`PARK_MAX_MESSAGES`,
    :data:`PARK_MAX_BYTES` each)."""
    sizes = [len(message.encode("utf-8")) + 8 for message in messages]  # + the JSON around it
    return group(sizes, PARK_MAX_MESSAGES, PARK_MAX_BYTES)


def park(ctx: Context, status: str, priority: str | None, due: float, messages: Sequence[str]) -> str:
    """Write a timer holding ``messages`` (sealed) for ``status`` until ``due``; return its key.

    Raises:
        UncertainResult: the write's reply was lost after every try (the timer may exist).
    """
    key = keys.timer_key(due)
    doc: dict[str, Any] = {"v": 1, "status": status, "due": due, "messages": list(messages)}
    if priority is not None:
        doc["priority"] = priority
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
    for attempt in range(_PUT_TRIES):
        try:
            ctx.store.put(key, body, content_type="application/json")
            return key
        except UncertainResult:  # the same bytes under the same key: trying again is harmless
            if attempt == _PUT_TRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)
    return key  # pragma: no cover - the loop returns or raises


def dispatch(ctx: Context, now: float | None = None) -> int:
    """Send the parked jobs due within the queue's own delay; return how many messages were sent.

    Up to :data:`DISPATCH_MAX` timers per call, :data:`DISPATCHERS` at a time: the overdue ones
    first, then the others in a random order, so that workers dispatching at once mostly take
    different timers (a timer another worker took is gone: one GET finds that). A timer whose
    messages could not all be sent stays, and the next dispatch sends it again (its jobs run
    once: see the module docstring).
    """
    now = time.time() if now is None else now
    overdue: list[str] = []
    upcoming: list[str] = []
    for info in ctx.store.list(keys.TIMERS):
        due = keys.parse_timer(info.key)
        if due is None:
            continue
        if due > now + ctx.max_delay_s or len(overdue) + len(upcoming) >= DISPATCH_MAX:
            break
        (overdue if due <= now else upcoming).append(info.key)
    random.shuffle(upcoming)  # noqa: S311 - spreading work, not secrecy
    timers = overdue + upcoming
    if len(timers) <= 1:
        return sum(_dispatch_safely(ctx, key) for key in timers)
    with ThreadPoolExecutor(min(DISPATCHERS, len(timers)), thread_name_prefix="remotejob-dispatch") as pool:
        return sum(pool.map(lambda key: _dispatch_safely(ctx, key), timers))


def _dispatch_safely(ctx: Context, key: str) -> int:
    try:
        return _dispatch_one(ctx, key)
    except RemoteJobError as exc:
        logger.warning("could not dispatch parked jobs %s: %s; the next check tries again", key, exc)
        return 0


def _dispatch_one(ctx: Context, key: str) -> int:
    try:
        with ctx.store.get(key) as obj:
            raw = obj.read()
    except NotFound:
        return 0  # another worker dispatched it
    try:
        doc = json.loads(raw)
        status, due, messages = str(doc["status"]), float(doc["due"]), list(doc["messages"])
        priority = doc.get("priority")
        bodies = [_reseal(ctx, str(m)) for m in messages]
    except (ValueError, KeyError, TypeError, EnvelopeError) as exc:
        logger.error("parked timer %s is not one remotejob can send (%s); left in place", key, exc)
        return 0
    queue = ctx.status_queue(status, priority)
    delay = delay_for(due, ctx.max_delay_s)  # from the time of sending, not of the listing
    for batch in send_batches(bodies):
        ctx.queues.send_batch(queue, [OutgoingMessage(bodies[i], delay) for i in batch])
    ctx.store.delete(key)
    logger.info("dispatched %d parked job(s) to %s, due in %d s", len(bodies), queue, delay)
    return len(bodies)


def _reseal(ctx: Context, text: str) -> str:
    """A parked message as sent: its signature checked (not its age: it was parked on purpose)
    and renewed, so the receiver's age check measures the time since dispatch."""
    if ctx.signing is None:
        return text
    ctx.signing.verify(text, check_age=False)
    return ctx.seal(signing.strip(text))
