"""Periodic jobs with no scheduler process: ``Queue.every(name, cron=..., data=...)``.

A schedule is one JSON object, ``schedules/<name>``: its cron expression (UTC; 5 fields, or 6
with seconds first, parsed by ``cronsim``), the status and priority of its jobs, their metadata
and time limit, the ``missed`` policy, and the jobs' input: inline (base64) up to
:data:`INLINE_MAX` bytes, else stored once as ``in/<name>@input`` and copied (server-side) to
each tick's own ``in/<tick-id>`` as the tick is sent, so a schedule replaced or removed never
pulls the input from under a tick already sent.

Every worker serves every schedule (:class:`TickServer`, from the worker's clock thread every
``schedule_check`` seconds), any number at once, and a tick still makes exactly one job: its id,
``<name>@<YYYYMMDDTHHMMSSZ>``, comes from the schedule and the tick, and its ``queued`` record is
created once. The creator sends the message (delayed by the queue until the tick is due, and
``once``: a copy never runs twice), then marks the record ``sent``; a record still unsent after
:data:`STUCK_S` (its creator died in between) is sent by the next server that reads it. Job ids
``<name>@...`` thus belong to the schedule ``name``.

A check serves the ticks in ``(now - grace, now + horizon]``, ``horizon = min(2 * check + 5 s,
the queue's longest delay)`` and ``grace = max(2 * check, 300 s)``: no tick is lost while any
worker runs, and one up to ``grace`` late runs under every policy. Earlier ticks, missed while
no worker ran, follow ``missed``: ``latest`` (the default) runs the latest of them once, ``all``
each of them (the :data:`MAX_MISSED` latest), ``skip`` none. No tick from before the schedule's
last change (``updated``) runs.

Requests: per tick 1 PUT (create) + 1 SendMessage + 1 PUT (mark sent), +1 COPY for a stored
input; per worker per check 1 LIST of ``schedules/``, 1 GET per schedule changed since, and at
most 1 GET per tick (a server remembers the ticks it saw settled).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import logging
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from cronsim import CronSim, CronSimError

from . import keys, records, timers
from .batch import check_time_limit
from .bodies import check_body, parse_entry
from .context import Context, check_priority
from .envelope import Envelope, encode
from .errors import AlreadyExists, NotFound, RemoteJobError

logger = logging.getLogger(__name__)

PREFIX = keys.SCHEDULES
MISSED = ("latest", "all", "skip")
INLINE_MAX = 128 * 1024
"""Input bytes a schedule keeps inline (in its object and in each tick's message) at most."""
STUCK_S = 60.0
"""A tick's record left unsent this long is sent by the next server that reads it."""
MAX_MISSED = 100
"""Ticks ``missed="all"`` runs at most after a downtime (the latest ones)."""
MAX_WINDOW = 1000
"""Ticks one schedule may have in one check's window at most (more are left for later checks)."""
_NAME = re.compile(r"[A-Za-z0-9_-]{1,80}")
_JSON = "application/json"


@dataclass(frozen=True)
class Schedule:
    """A periodic job: a cron expression (UTC) and what each of its ticks submits."""

    name: str
    cron: str
    status: str = "pending"
    missed: str = "latest"
    """What runs of the ticks missed while no worker ran: ``latest``, ``all`` or ``skip``."""
    meta: dict[str, str] = field(default_factory=dict, hash=False)
    time_limit: float | None = None
    priority: str | None = None
    created: float = 0.0
    updated: float = 0.0
    """When the schedule was last changed; no tick before it runs."""
    input_size: int = 0

    def next_ticks(self, n: int = 5, after: datetime | None = None) -> list[datetime]:
        """The next ``n`` tick times (aware, UTC) after ``after`` (an aware datetime; now).

        Raises:
            ValueError: a naive ``after``.
        """
        if after is None:
            after = datetime.now(UTC)
        elif after.tzinfo is None:
            raise ValueError("after must be an aware datetime, e.g. datetime.now(UTC)")
        return list(itertools.islice(CronSim(self.cron, after.astimezone(UTC)), n))

    def tick_id(self, tick: datetime | float) -> str:
        """The job id of the tick at ``tick`` (a datetime or seconds since the epoch)."""
        return tick_id(self.name, tick)


@dataclass(frozen=True)
class _Spec:
    schedule: Schedule
    body: str | None
    """The input, base64, when it is inline; else it is stored at ``in/<name>@input``."""
    sha256: str


def tick_id(name: str, tick: datetime | float) -> str:
    """``<name>@<YYYYMMDDTHHMMSSZ>``: the job id of a schedule's tick."""
    when = tick if isinstance(tick, datetime) else datetime.fromtimestamp(tick, UTC)
    return f"{name}@{when.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def schedule_key(name: str) -> str:
    """Where a schedule lives: ``schedules/<name>``."""
    return keys.schedule_key(validate_name(name))


def input_key(name: str) -> str:
    """Where a schedule's large input is stored once: ``in/<name>@input``."""
    return keys.schedule_input_key(validate_name(name))


def validate_name(name: object) -> str:
    """Check a schedule name: 1-80 letters, digits, ``-`` and ``_``.

    Raises:
        ValueError: any other name.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"schedule name {name!r:.100} is invalid: use 1-80 letters, digits, '-' and '_', "
                         "e.g. 'nightly-report'")
    return name


def check_cron(cron: object) -> str:
    """Check a cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6
    with seconds first; UTC.

    Raises:
        ValueError: it is not one, or it never matches.
    """
    if not isinstance(cron, str):
        raise ValueError(f"cron must be a str such as '0 2 * * *', got {type(cron).__name__}")
    try:
        next(CronSim(cron, datetime.now(UTC)))
    except CronSimError as exc:
        raise ValueError(f"cron expression {cron!r} is invalid ({exc}): use 5 fields 'minute hour "
                         "day-of-month month day-of-week' (e.g. '0 2 * * *', UTC), or 6 with seconds "
                         "first") from None
    except StopIteration:
        raise ValueError(f"cron expression {cron!r} never matches in the next 50 years") from None
    return cron


def add(
    ctx: Context, name: str, cron: str, data: Mapping[str, Any] | None = None, status: str = "pending",
    missed: str = "latest", time_limit: float | None = None, priority: str | None = None,
    now: float | None = None,
) -> Schedule:
    """Create or replace the schedule ``name`` (see ``Queue.every``); an identical one is left
    as it is (so calling this at every start of a program costs one GET)."""
    validate_name(name)
    check_cron(cron)
    if missed not in MISSED:
        raise ValueError(f"missed must be one of {', '.join(MISSED)}, got {missed!r}")
    limit = check_time_limit(time_limit)
    priority = check_priority(priority)
    if status not in ctx.statuses:
        ctx.status_queue(status)  # raises UnknownStatus, naming the configured ones
    entry = parse_entry(data if data is not None else {"body": b""})
    if entry.key is not None:
        raise ValueError("a schedule's jobs are named by their ticks (<name>@<time>): drop 'key' from data")
    now = time.time() if now is None else now
    spool, size, sha256 = _read_body(entry.body)
    with spool:
        inline = base64.b64encode(spool.read()).decode("ascii") if size <= INLINE_MAX else None
        old = _load(ctx, name)
        created = now if old is None else old.schedule.created
        meta = dict(entry.metadata)
        schedule = Schedule(name, cron, status, missed, meta, limit, priority, created, now, size)
        if old is not None and _fields(old.schedule) + (old.sha256,) == _fields(schedule) + (sha256,):
            return old.schedule
        if inline is None:
            spool.seek(0)
            ctx.store.put(input_key(name), spool, entry.metadata, entry.content_type)
    doc = {"v": 1, "name": name, "cron": cron, "status": status, "missed": missed, "meta": schedule.meta,
           "time_limit": limit, "priority": priority, "created": schedule.created, "updated": now,
           "size": size, "sha256": sha256, "body": inline}
    ctx.store.put(schedule_key(name), json.dumps(doc, separators=(",", ":")).encode(), content_type=_JSON)
    if inline is not None and old is not None and old.body is None:
        ctx.store.delete(input_key(name))  # replaced by an inline one
    return schedule


def _fields(s: Schedule) -> tuple[Any, ...]:
    return s.cron, s.status, s.missed, s.meta, s.time_limit, s.priority, s.input_size


def _read_body(body: Any) -> tuple[IO[bytes], int, str]:
    """The body spooled (in memory up to :data:`INLINE_MAX`), its size and SHA-256."""
    check_body(body)
    spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=INLINE_MAX + 1)  # noqa: SIM115
    if isinstance(body, str):
        spool.write(body.encode("utf-8"))
    elif isinstance(body, (bytes, bytearray, memoryview)):
        spool.write(bytes(body))
    elif hasattr(body, "read"):
        shutil.copyfileobj(body, spool)
    else:
        with open(body, "rb") as source:
            shutil.copyfileobj(source, spool)
    size = spool.tell()
    spool.seek(0)
    digest = hashlib.sha256()
    while chunk := spool.read(1024 * 1024):
        digest.update(chunk)
    spool.seek(0)
    return spool, size, digest.hexdigest()


def _load(ctx: Context, name: str) -> _Spec | None:
    """The schedule ``name`` as stored, or None.

    Raises:
        RemoteJobError: the object is not a schedule of ours.
    """
    doc = records.read(ctx.store, schedule_key(name))
    if doc is None:
        return None
    try:
        if doc.get("v") != 1:
            raise ValueError(f"unknown version {doc.get('v')!r}")
        limit, body = doc.get("time_limit"), doc.get("body")
        schedule = Schedule(
            name=name, cron=str(doc["cron"]), status=str(doc["status"]), missed=str(doc["missed"]),
            meta={str(k): str(v) for k, v in (doc.get("meta") or {}).items()},
            time_limit=None if limit is None else float(limit), priority=doc.get("priority"),
            created=float(doc["created"]), updated=float(doc["updated"]), input_size=int(doc["size"]),
        )
        check_cron(schedule.cron)
        return _Spec(schedule, None if body is None else str(body), str(doc["sha256"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RemoteJobError(f"schedule object {schedule_key(name)!r} is corrupt ({exc}): replace it with "
                             "every() or remove it with unschedule()") from exc


def get(ctx: Context, name: str) -> Schedule:
    """The schedule ``name``.

    Raises:
        NotFound: there is none. ValueError: an invalid name.
    """
    spec = _load(ctx, name)
    if spec is None:
        raise NotFound(f"no schedule {name!r} in {ctx.name!r}: add it with every() (remotejob schedule add)")
    return spec.schedule


def list_all(ctx: Context) -> list[Schedule]:
    """Every schedule, by name (1 LIST and a GET per schedule); corrupt ones are skipped."""
    found = []
    for info in ctx.store.list(PREFIX):
        name = info.key[len(PREFIX):]
        if _NAME.fullmatch(name):
            try:
                spec = _load(ctx, name)
            except RemoteJobError as exc:
                logger.warning("skipping a schedule: %s", exc)
                continue
            if spec is not None:
                found.append(spec.schedule)
    return found


def remove(ctx: Context, name: str) -> bool:
    """Remove the schedule ``name``; return whether it existed. Ticks already sent still run
    (cancel them by id, ``<name>@<YYYYMMDDTHHMMSSZ>``)."""
    try:
        ctx.store.head(schedule_key(name))
    except NotFound:
        return False
    ctx.store.delete(schedule_key(name))
    ctx.store.delete(input_key(name))  # each tick has its own copy
    return True


def _ticks(cron: str, after: float, until: float, limit: int = MAX_WINDOW, back: bool = False) -> list[float]:
    """The tick times in ``(after, until]``, oldest first (``back``: latest first), ``limit`` at most."""
    found: list[float] = []
    start = datetime.fromtimestamp(until, UTC) + timedelta(microseconds=1) if back \
        else datetime.fromtimestamp(after, UTC)
    for tick in CronSim(cron, start, reverse=back):
        moment = tick.timestamp()
        if len(found) >= limit or (moment <= after if back else moment > until):
            break
        if after < moment <= until:
            found.append(moment)
    return found


class TickServer:
    """Creates and sends the jobs of every schedule's ticks (see the module docstring). One per
    worker, kept between checks: it caches schedules by ETag and remembers settled ticks."""

    def __init__(self, ctx: Context, check_s: float = 60.0) -> None:
        self.ctx = ctx
        self.check_s = check_s
        self._lock = threading.Lock()
        self._specs: dict[str, tuple[str, _Spec | None]] = {}
        """Schedules by name: the ETag last read and the schedule (None: unreadable)."""
        self._covered: dict[str, tuple[float, float]] = {}
        """Per schedule: its ``updated`` and the end of the last window served for it."""
        self._done: dict[str, float] = {}
        """Ticks known settled (sent, or taken by another job), by job id: their times."""
        self._young: dict[str, tuple[str, float]] = {}
        """Ticks another server created but has not marked sent yet: look again later."""

    def serve(self, now: float | None = None) -> int:
        """One check: create and send the ticks due soon (and missed ones); return how many
        this server sent."""
        now = time.time() if now is None else now
        horizon = min(2 * self.check_s + 5, float(self.ctx.max_delay_s))
        start, end = now - max(2 * self.check_s, 300.0), now + horizon
        sent = 0
        with self._lock:
            specs = self._refresh()
            young, self._young = self._young, {}
            for spec in specs.values():
                try:
                    sent += self._serve_one(spec, now, start, end)
                except RemoteJobError as exc:
                    logger.warning("schedule %s: could not serve its ticks (next check tries again): %s",
                                   spec.schedule.name, exc)
            for job_id, (name, tick) in young.items():  # those outside this check's window
                if name in specs and job_id not in self._young and job_id not in self._done:
                    try:
                        sent += self._tick(specs[name], tick, now)
                    except RemoteJobError as exc:
                        logger.warning("tick %s: could not settle it (next check retries): %s", job_id, exc)
            self._done = {job_id: tick for job_id, tick in self._done.items() if tick > start}
        return sent

    def _refresh(self) -> dict[str, _Spec]:
        """List ``schedules/``; read those whose ETag changed."""
        listed = {info.key[len(PREFIX):]: info.etag for info in self.ctx.store.list(PREFIX)}
        for name in set(self._specs) - set(listed):
            del self._specs[name]
            self._covered.pop(name, None)
        for name, etag in listed.items():
            cached = self._specs.get(name)
            if not _NAME.fullmatch(name) or (cached is not None and etag and cached[0] == etag):
                continue
            try:
                self._specs[name] = (etag, _load(self.ctx, name))
            except RemoteJobError as exc:
                logger.warning("skipping a schedule: %s", exc)
                self._specs[name] = (etag, None)
        return {name: spec for name, (_, spec) in self._specs.items() if spec is not None}

    def _serve_one(self, spec: _Spec, now: float, start: float, end: float) -> int:
        s = spec.schedule
        self.ctx.status_queue(s.status, s.priority)  # a status this worker lacks: nothing is created
        since, covered = s.updated, self._covered.get(s.name)
        lower = since if covered is None or covered[0] != since else max(since, covered[1])
        late: list[tuple[float, dict[str, Any] | None]] = []
        if lower < start and s.missed != "skip":
            late = self._missed(spec, lower, start)
        sent = 0
        for tick, record in late:
            sent += self._tick(spec, tick, now, probed=True, record=record)
        for tick in _ticks(s.cron, max(start, since), end):
            sent += self._tick(spec, tick, now)
        self._covered[s.name] = (since, end)
        return sent

    def _missed(self, spec: _Spec, lower: float, start: float) -> list[tuple[float, dict[str, Any] | None]]:
        """The missed ticks in ``(lower, start]`` to run, oldest first, with their records: the
        latest (``latest``), or those since the latest that exists (``all``)."""
        s = spec.schedule
        found: list[tuple[float, dict[str, Any] | None]] = []
        limit = 1 if s.missed == "latest" else MAX_MISSED
        for tick in _ticks(s.cron, lower, start, limit, back=True):
            record = records.read(self.ctx.store, keys.record_key(tick_id(s.name, tick), "queued"))
            found.append((tick, record))
            if record is not None:  # ticks before it were served then
                break
        return found[::-1]

    def _tick(self, spec: _Spec, tick: float, now: float, *, probed: bool = False,
              record: dict[str, Any] | None = None) -> int:
        """Make sure the tick's job exists and was sent; return 1 if this call sent it."""
        s = spec.schedule
        job_id = tick_id(s.name, tick)
        if job_id in self._done:
            return 0
        queued = keys.record_key(job_id, "queued")
        if not probed:
            record = records.read(self.ctx.store, queued)
        if record is None:
            try:
                records.create_queued(self.ctx.store, job_id, s.status, now, s.meta, due=tick,
                                      priority=s.priority, extra={"sent": False, "schedule": s.name})
            except AlreadyExists:
                record = records.read(self.ctx.store, queued)
                if record is None:
                    return 0  # removed in between: the next check looks again
            else:
                return self._send(spec, job_id, tick, now, now)
        if record.get("sent") is False:
            created = float(record.get("created") or 0.0)
            if now - created < STUCK_S:
                self._young[job_id] = (s.name, tick)
                return 0
            logger.info("tick %s was created %.0f s ago and not sent: sending it", job_id, now - created)
            return self._send(spec, job_id, tick, now, created)
        self._done[job_id] = tick
        return 0

    def _send(self, spec: _Spec, job_id: str, tick: float, now: float, created: float) -> int:
        """Send a created tick's message, due at ``tick``; then mark its record sent (its
        ``updated`` stays its creation, so it never looks newer than a run's progress)."""
        s, ctx = spec.schedule, self.ctx
        queue = ctx.status_queue(s.status, s.priority)
        if spec.body is None:
            ctx.store.copy(input_key(s.name), keys.input_key(job_id))
        envelope = Envelope(job=job_id, key=job_id, status=s.status, sent=now, meta=dict(s.meta),
                            body=spec.body, limit=s.time_limit, due=tick, once=True, priority=s.priority)
        delay = timers.delay_for(tick, ctx.max_delay_s, now)
        ctx.queues.send(queue, ctx.seal(encode(envelope)), delay_s=delay)
        records.write_queued(ctx.store, job_id, s.status, created, created, meta=s.meta, due=tick,
                             priority=s.priority, extra={"sent": True, "schedule": s.name})
        self._done[job_id] = tick
        return 1
