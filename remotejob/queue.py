"""Queue: one named job system, its object store and its status queues.

The requester's side (``store``, ``retrieve``, ``remove``, ``trigger``, ``submit``, ``status``,
``wait``) and the worker's way in (``next``). Speaks only to the two backend protocols.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import batch, config, control, dead, dedup, keys, legacy, lifecycle, records, schedules, timers
from .backends.base import MessageQueue, ObjectStore, StoredObject
from .bodies import parse_entry
from .context import DEFAULT_STATUSES, Context
from .envelope import DeadLetter
from .job import Job
from .limits import validate_key, validate_queue_name
from .signing import Keyring
from .status import JobStatus, Waiting

if TYPE_CHECKING:
    from .schedules import Schedule
    from .worker import Handler

logger = logging.getLogger(__name__)


class Queue:
    """A job system: inputs and outputs in an object store, one message queue per status.

    Build one with :func:`remotejob.connect`. Safe to share between threads. A thin façade: the
    life of a job is ``lifecycle.py``'s, its records ``records.py``'s.
    """

    def __init__(
        self,
        name: str,
        object_store: ObjectStore,
        message_queue: MessageQueue,
        statuses: Sequence[str] = DEFAULT_STATUSES,
        visibility_timeout: int = 30,
        wait_time: int = 20,
        max_attempts: int = 5,
        signing: Keyring | None = None,
        journal: bool | float = True,
        legacy: bool = False,
    ) -> None:
        self.context = Context(
            name, object_store, message_queue, statuses, visibility_timeout, wait_time, max_attempts,
            signing if signing is not None else Keyring.from_environment(), journal=journal,
            legacy_mode=legacy,
        )
        """The job system's settings and connections, as the worker and the lifecycle use them."""

    @property
    def name(self) -> str:
        """The job system's name."""
        return self.context.name

    @property
    def statuses(self) -> tuple[str, ...]:
        """The status queues, in pipeline order."""
        return self.context.statuses

    @property
    def visibility_timeout(self) -> int:
        """Seconds a taken job stays invisible to other workers (extended while it runs)."""
        return self.context.visibility_timeout

    @property
    def wait_time(self) -> int:
        """The long-poll wait of one receive, seconds."""
        return self.context.wait_time

    @property
    def max_attempts(self) -> int:
        """Deliveries of a job before it is recorded failed and dead-lettered."""
        return self.context.max_attempts

    @property
    def object_store(self) -> ObjectStore:
        """Where inputs, outputs and records live (as given: writes through it are not journaled)."""
        return self.context.object_store

    @property
    def message_queue(self) -> MessageQueue:
        """The status and dead-letter queues."""
        return self.context.queues

    @property
    def signing(self) -> Keyring | None:
        """The keys that sign and verify messages (``$REMOTEJOB_SIGNING_KEY``), or None."""
        return self.context.signing

    @property
    def legacy(self) -> bool:
        """Legacy mode is on: this job system talks the 2014 Node.js package's wire format too
        (see ``connect(legacy=)``)."""
        return self.context.legacy_bucket is not None

    @property
    def rejected(self) -> Counter[str]:
        """Messages this process refused before any handler saw them, by reason (``unsigned``,
        ``bad-signature``, ``unknown-key``, ``stale``, ``from-the-future``, ``undecodable``,
        ``replayed``, ...)."""
        return self.context.rejected

    def close(self) -> None:
        """Write this process's pending journal entry now (see ``connect(journal=)``); the queue
        stays usable. Also on leaving a ``with`` block, and at interpreter exit."""
        self.context.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def queue_name(self, status: str) -> str:
        """The message queue of a configured status, ``<name>-<status>`` (created on first use).

        Raises:
            UnknownStatus: the status is not configured.
        """
        return self.context.status_queue(status)

    def __repr__(self) -> str:
        return (
            f"Queue({self.name!r}, store={self.object_store.location!r}, "
            f"queues={self.message_queue.location!r})"
        )

    # -- setup -----------------------------------------------------------------------------

    def init(self) -> dict[str, Any]:
        """Create the bucket/folder and every status and dead-letter queue now.

        Other calls create what they need on first use; call this to set up ahead of time.
        Returns what exists: ``{"store": location, "queues": [names]}``.
        """
        self.object_store.ensure()
        self.context.ensure_queues()
        return {"store": self.object_store.location, "queues": self.context.queue_names()}

    # -- objects ---------------------------------------------------------------------------

    def store(self, direction: str, data: Mapping[str, Any]) -> str:
        """Store a body and its metadata in ``in`` or ``out``; return its key.

        ``data`` is ``{"body": ..., "key": ..., "filename": ..., <metadata>...}``: ``body`` is
        bytes, str (UTF-8), a path or a binary file object (streamed); ``key`` is generated
        when absent; ``filename`` sets the content type; other entries are string metadata.

        In legacy mode, ``in`` is the bucket's root, where the 2014 package keeps inputs (a
        generated key is then a UUID, as there).

        Raises:
            ValueError: unknown direction or no body. InvalidKey, MetadataError: rejected input
                (nothing is written).
        """
        if self.legacy and keys.direction(direction) == "in":
            return legacy.store(self.context, data)
        return batch.store(self.context, keys.direction(direction), parse_entry(data))[0]

    def retrieve(self, direction: str, key: str, sha256: str | None = None) -> StoredObject:
        """Open a stored object for streaming: ``.read()``, ``.open()``, ``.metadata``.

        With ``sha256`` (e.g. ``q.status(job_id).assets["output"].sha256``, recorded when the
        output was written), reading the body to its end checks it.

        Raises:
            NotFound: no such key. ValueError: unknown direction. InvalidKey: a malformed key.
            IntegrityError: (while reading) the bytes do not match ``sha256``.
        """
        full_key = self._object_key(direction, key)
        return self.object_store.get(full_key).checked(sha256, f"object {full_key!r}")

    def output(self, job_id: str, asset: str, sha256: str | None = None) -> StoredObject:
        """Open one output of a job: ``out/<job-id>/<asset>`` (``retrieve("out", ...)`` of
        ``"<job-id>/<asset>"``, with ``/`` and ``%`` in the job id written ``%2F`` and ``%25``).

        With ``sha256`` (``q.status(job_id).assets[asset].sha256``) the bytes are checked.

        In legacy mode, an output not found there is read from where a 2014 worker puts it: the
        bucket's root, ``<job-id>-<asset>``.

        Raises:
            NotFound: no such output. IntegrityError: (while reading) the bytes do not match.
        """
        if self.legacy:
            return legacy.output(self.context, job_id, asset, sha256)
        return self.retrieve("out", keys.output_key(job_id, asset).removeprefix("out/"), sha256)

    def remove(self, direction: str, key: str) -> None:
        """Delete a stored object; removing a missing key is not an error. In legacy mode,
        ``in`` is the bucket's root (as for :meth:`store`)."""
        self.object_store.delete(self._object_key(direction, key))

    def _object_key(self, direction: str, key: str) -> str:
        if self.legacy and keys.direction(direction) == "in":
            return legacy.input_key(key)
        return keys.object_key(direction, key)

    # -- jobs ------------------------------------------------------------------------------

    def trigger(
        self, key: str, status: str = "pending", *, time_limit: float | None = None,
        delay: float | timedelta | None = None, at: datetime | None = None, priority: str | None = None,
    ) -> str:
        """Send the input stored under ``in/<key>`` to a status queue; return the job id.

        The job id is the key: stable across deliveries and stages. ``time_limit``, ``delay``,
        ``at`` and ``priority`` are as for :meth:`submit`. In legacy mode the input is at the
        bucket's root and the job id is the message's id (see :meth:`submit`).

        Raises:
            UnknownStatus: the status is not configured. NotFound: nothing is stored at the key.
        """
        if self.legacy:
            _legacy_options(time_limit=time_limit, delay=delay, at=at, priority=priority)
            return legacy.trigger(self.context, key, status)
        return self.trigger_many([key], status, time_limit=time_limit, delay=delay, at=at,
                                 priority=priority)[0]

    def submit(
        self, data: Mapping[str, Any], status: str = "pending", *, time_limit: float | None = None,
        delay: float | timedelta | None = None, at: datetime | None = None, priority: str | None = None,
        dedup_key: str | None = None,
    ) -> str:
        """Submit one job: its input and metadata, then its message; return the job id.

        ``data`` is like ``store()``'s. Without a ``key``, the job id is generated and a small
        body (one that fits in the message, about 180 KiB) travels inline in the message
        instead of being stored under ``in/``; with a ``key``, the body is stored as
        ``in/<key>`` and the key is the job id. Either way the worker reads it with
        ``job.open()``.

        ``time_limit``: seconds the job may run (each attempt, from its handler's start); past
        it the worker asks the handler to stop and records the attempt failed with a
        :class:`~remotejob.TimeLimitExceeded` error, retried like any failure. None: the
        worker's own limit, if any.

        ``delay`` (seconds or a ``timedelta``) or ``at`` (a datetime with a timezone): the job
        starts no earlier than then; ``status()`` says ``scheduled`` (with ``.due``) until then,
        and ``cancel()`` works until it starts. Any delay: up to 15 minutes the queue holds the
        message itself; beyond, it waits in the store and a worker sends it when it is due
        within 15 minutes (see ``Worker(schedule_check=)``).

        ``priority``: ``"high"``, ``"normal"`` (the default) or ``"low"``; workers take higher
        priorities first, without starving lower ones (see the README's "Priorities").

        ``dedup_key``: while a job submitted with the same key is scheduled, pending or running,
        return that job's id instead of submitting another; once it has finished, the key makes
        a new job (see the README's "Dedup keys"). The job's id is then generated (``data``
        may not have a ``key``).

        In legacy mode (``connect(legacy=True)``) the job is one a worker of the 2014 Node.js
        package can take: its input at the bucket's root (under ``key``, else a UUID), the
        package's flat message; the job id is that message's id. ``time_limit``, ``delay``,
        ``at``, ``priority`` and ``dedup_key`` are refused: a 2014 worker cannot honour them.

        Raises:
            Everything store() and trigger() raise; nothing is left stored if triggering fails.
            ValueError: ``time_limit`` is not a positive number; a negative delay, a naive
                ``at``, both ``delay`` and ``at``, an unknown priority; any of them in legacy mode.
        """
        if self.legacy:
            _legacy_options(time_limit=time_limit, delay=delay, at=at, priority=priority,
                            dedup_key=dedup_key)
            return legacy.submit(self.context, data, status)
        if dedup_key is not None:
            due = timers.due_time(delay, at, time.time())
            return dedup.submit(self.context, data, status, dedup_key, time_limit=time_limit, due=due,
                                priority=priority)
        return self.submit_many([data], status, time_limit=time_limit, delay=delay, at=at,
                                priority=priority)[0]

    def submit_many(
        self, items: Iterable[Mapping[str, Any]], status: str = "pending", *,
        time_limit: float | None = None, delay: float | timedelta | None = None, at: datetime | None = None,
        priority: str | None = None,
    ) -> list[str]:
        """Submit many jobs, sending their messages in batches (up to 10 per SQS request).

        Each item is a mapping like ``submit()``'s; returns the job ids in order. All items are
        checked before anything is stored. The generated ids share one manifest object, so a
        batch of small jobs costs one S3 request in all. If sending fails, the jobs not yet sent are removed
        again (their generated inputs and records) and the error is raised; jobs sent before
        stay submitted (a warning says how many). ``time_limit``, ``delay``, ``at`` and
        ``priority`` (as for :meth:`submit`) apply to every job. In legacy mode each job is
        :meth:`submit`-ted in turn (the 2014 format has no batches).
        """
        if self.legacy:
            _legacy_options(time_limit=time_limit, delay=delay, at=at, priority=priority)
            return [legacy.submit(self.context, data, status) for data in items]
        due = timers.due_time(delay, at, time.time())
        return batch.submit_many(self.context, items, status, time_limit, due=due, priority=priority)

    def trigger_many(
        self, job_keys: Iterable[str], status: str = "pending", *, time_limit: float | None = None,
        delay: float | timedelta | None = None, at: datetime | None = None, priority: str | None = None,
    ) -> list[str]:
        """``trigger()`` for many stored inputs, sending in batches; returns the job ids."""
        if self.legacy:
            _legacy_options(time_limit=time_limit, delay=delay, at=at, priority=priority)
            return [legacy.trigger(self.context, key, status) for key in job_keys]
        due = timers.due_time(delay, at, time.time())
        return batch.trigger_many(self.context, job_keys, status, time_limit, due=due, priority=priority)

    def cancel(self, job_id: str, reason: str | None = None) -> JobStatus:
        """Cancel a job: a queued job never runs, a running one is asked to stop.

        The cancel and the job's completion race on the job's create-once outcome record:
        exactly one wins. If the cancel wins, the job's outcome is ``cancelled`` (with
        ``reason`` as its ``error``), it publishes no outputs and it is never retried or
        redriven; workers learn of it within their check interval (``Worker(cancel_check=)``,
        5 s): one that takes the job drops it without running it, and a running handler sees
        ``job.cancelled`` (``job.check()`` raises :class:`~remotejob.Cancelled`; ``worker
        --exec`` commands get SIGTERM, then SIGKILL). If the job finished first, its outcome
        stands and is returned: check ``.state``. Cancelling a cancelled job again is harmless.

        Raises:
            NotFound: no job with this id was ever submitted. InvalidKey: a malformed id.
        """
        validate_key(job_id)
        return control.cancel(self.context, job_id, reason)

    def retry(self, job_id: str) -> JobStatus:
        """Run a failed or cancelled job again, under the same id; return its new status.

        Its earlier outcome joins ``status(job_id).history`` and the job goes back to the status
        queue it failed (or was cancelled) in, with its original input and metadata.

        Raises:
            NotFound: no job with this id was ever submitted.
            NotRetryable: the job is pending, running or completed; or it was cancelled while
                queued and no worker has let go of its message yet; or another retry sent it.
        """
        validate_key(job_id)
        return control.retry(self.context, job_id)

    def every(
        self, name: str, *, cron: str, data: Mapping[str, Any] | None = None, status: str = "pending",
        missed: str = "latest", time_limit: float | None = None, priority: str | None = None,
    ) -> Schedule:
        """Submit a job on every tick of ``cron`` (UTC), with no scheduler process: the
        schedule lives in the store as ``schedules/<name>`` and every worker serves it
        (``Worker(schedule_check=)``); each tick makes exactly one job, whose id is
        ``<name>@<YYYYMMDDTHHMMSSZ>`` (so job ids ``<name>@...`` are the schedule's).

        ``cron``: 5 fields (``minute hour day-of-month month day-of-week``, e.g. ``"0 2 * * *"``),
        or 6 with seconds first. ``data`` is like ``submit()``'s (no ``key``); None: an empty
        input. ``missed``: what runs of the ticks missed while no worker ran: ``"latest"`` (the
        latest one, once), ``"all"`` (each, the 100 latest at most) or ``"skip"``; a tick at
        most 5 minutes late runs anyway. An existing schedule of that name is replaced (no tick
        before the change runs); an identical one is left as it is. Returns the schedule.

        Raises:
            ValueError: an invalid name, cron expression, ``missed``, ``time_limit`` or
                ``priority``. UnknownStatus: the status is not configured.
        """
        return schedules.add(self.context, name, cron, data, status, missed, time_limit, priority)

    def schedules(self) -> list[Schedule]:
        """Every schedule of this job system, by name."""
        return schedules.list_all(self.context)

    def schedule(self, name: str) -> Schedule:
        """The schedule ``name`` (``.next_ticks()`` says when it runs next).

        Raises:
            NotFound: there is none. ValueError: an invalid name.
        """
        return schedules.get(self.context, name)

    def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; return whether it existed. Its ticks already sent
        (those due within a few minutes) still run: cancel them by id if need be."""
        return schedules.remove(self.context, name)

    def next(self, status: str = "pending", timeout: float | None = None) -> Job | None:
        """Take the next job from a status queue, long-polling until one arrives.

        Returns None once ``timeout`` seconds pass (None waits forever). The job stays
        invisible to other workers for the visibility timeout; ``job.complete()`` or
        ``job.acknowledge()`` removes it, otherwise it is delivered again. A message that is
        not a remotejob envelope is moved to the dead-letter queue and skipped.

        Raises:
            UnknownStatus: the status is not configured.
        """
        ctx = self.context
        queue = ctx.status_queue(status)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # A blocking next() never short-polls in a loop, even with wait_time=0.
            poll = float(ctx.wait_time or 1)
            remaining = poll if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(poll, remaining))
            for message in ctx.queues.receive(queue, 1, wait, ctx.visibility_timeout):
                delivery = lifecycle.take(ctx, queue, message)
                if delivery is not None:
                    return Job(delivery)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    # -- dead letters and workers ----------------------------------------------------------

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """List the messages in the dead-letter queue ``<name>-dead`` (they stay there).

        Each :class:`~remotejob.DeadLetter` has the original ``body``, the ``reason`` it was
        moved, and its ``job`` id and ``status`` when it is a job.
        """
        return dead.list_dead(self.context, limit)

    def redrive(self, limit: int | None = None, *, jobs: Collection[str] | None = None) -> int:
        """Send dead-lettered jobs back to their status queues; return how many were sent.

        A job recorded ``failed`` is reopened so a (fixed) worker can run it again; messages
        that are not jobs of a configured status stay in the dead-letter queue. With ``jobs``,
        only the dead letters of those job ids are sent back.
        """
        return dead.redrive(self.context, limit, None if jobs is None else frozenset(jobs))

    def purge(self, status: str) -> None:
        """Delete every message waiting in a status queue, or in the dead-letter queue
        (``"dead"``). Jobs keep their status records; their messages are gone, so a pending
        job of a purged queue never runs (``retry()`` can send a failed or cancelled one again).

        Raises:
            UnknownStatus: no such status queue.
        """
        if status == keys.DEAD:
            self.context.ensure_queues()
            queue = self.context.dead_letters
        else:
            queue = self.context.status_queue(status)
        self.context.queues.purge(queue)

    def work(
        self,
        handler: Handler,
        status: str = "pending",
        concurrency: int = 1,
        max_jobs: int | None = None,
        burst: bool = False,
        **options: Any,
    ) -> int:
        """Run a worker on ``status`` in this thread until stopped; return the jobs it ran.

        See :class:`remotejob.Worker` for the options (``grace_period``, ``retry_delay``...).
        """
        from .worker import Worker

        worker = Worker(
            self, handler, status=status, concurrency=concurrency, max_jobs=max_jobs, burst=burst, **options
        )
        return worker.run()

    def _remove_job(self, status: str, receipt: str) -> None:
        """Delete a delivery from a status queue by its receipt handle (the seed's hidden call)."""
        self.message_queue.delete(self.context.status_queue(status), receipt)

    # -- status ----------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        """Where a job stands: pending, inprogress, completed or failed.

        Raises:
            NotFound: no job with this id was ever submitted. InvalidKey: a malformed id.
        """
        validate_key(job_id)
        return records.status(self.object_store, self.name, job_id)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> JobStatus:
        """Wait until a job is completed, failed or cancelled and return its status.

        Polls ``status()``, quickly at first, then every ``poll`` seconds at most.

        Raises:
            JobFailed: the job failed (``.error`` carries its error). JobCancelled (a JobFailed):
                it was cancelled. WaitTimeout: ``timeout`` seconds passed. NotFound: the job was
                never submitted.
        """
        waiting = Waiting(job_id, timeout, poll)
        while True:
            pause = waiting.pause(self.status(job_id))
            if isinstance(pause, JobStatus):
                return pause
            time.sleep(pause)


def connect(
    name: str,
    store: str | ObjectStore | None = None,
    queues: str | MessageQueue | None = None,
    *,
    statuses: Sequence[str] = DEFAULT_STATUSES,
    visibility_timeout: int = 30,
    wait_time: int = 20,
    max_attempts: int = 5,
    home: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
    sse: str | None = None,
    kms_key_id: str | None = None,
    journal: bool | float = True,
    legacy: bool = False,
) -> Queue:
    """Connect to (and lazily create) the job system ``name``.

    Args:
        name: the job system's name; queues are ``<name>-<status>`` and ``<name>-dead``.
        store: ``s3://bucket/prefix``, ``s3://`` (bucket ``remotejobs-<name>``), a folder, or an
            ObjectStore; default ``$REMOTEJOB_STORE`` or the embedded folder.
        queues: ``sqs://``, a SQLite file, or a MessageQueue; default ``$REMOTEJOB_QUEUES`` or
            the embedded SQLite file.
        statuses: the status queues, in pipeline order.
        visibility_timeout: seconds a taken job stays invisible to other workers.
        wait_time: the long-poll wait of one receive, 0-20 seconds.
        max_attempts: deliveries of a job before it is recorded failed and dead-lettered (the
            queues' redrive policy, set when they are created).
        home: the embedded backend's folder (default ``$REMOTEJOB_HOME`` or ``./.remotejob``).
        endpoint_url: an S3/SQS-compatible endpoint for both services (else the AWS chain's).
        sse: server-side encryption on AWS, ``"AES256"`` (S3-managed keys) or ``"aws:kms"``;
            default ``$REMOTEJOB_SSE``. Objects are written with it and a bucket remotejob
            creates gets it as its default; queues are created with SSE-SQS, or with KMS under
            ``"aws:kms"``. Ignored by the embedded backend and by store/queue objects.
        kms_key_id: the KMS key for ``"aws:kms"`` (id, ARN or ``alias/NAME``); default
            ``$REMOTEJOB_KMS_KEY_ID``, else the AWS-managed keys.
        journal: append which jobs this process wrote records of to the store's journal
            (``journal/``), at most one small object per second while it writes any, so that a
            dashboard (``remotejob ui``) finds changed jobs without listing them all; a number
            is the least seconds between two entries instead of 1. False writes none (a
            dashboard then rescans the records).
        legacy: talk the 2014 Node.js package's wire format too, so either side of a job
            system can move first (see the README's "Migrating from the Node.js package"):
            workers also take its flat messages, requesters write jobs its workers can take.
            Needs the store at the root of the bucket ``remotejobs-<name>`` and no signing keys.

    Raises:
        ConfigError: an invalid name, location or option.
    """
    validate_queue_name(name)
    home_dir = config.home(home)
    sse, kms_key_id = config.encryption(sse, kms_key_id)
    return Queue(
        name,
        config.make_store(name, store, home_dir, endpoint_url, sse, kms_key_id),
        config.make_queues(queues, home_dir, endpoint_url, sse, kms_key_id),
        statuses=statuses,
        visibility_timeout=visibility_timeout,
        wait_time=wait_time,
        max_attempts=max_attempts,
        journal=journal,
        legacy=legacy,
    )


def _legacy_options(**options: object) -> None:
    """Refuse what a worker of the 2014 package cannot honour."""
    given = [name for name, value in options.items() if value is not None]
    if given:
        raise ValueError(f"{', '.join(given)} cannot travel in the 2014 package's messages (legacy mode): "
                         "submit without it, or connect without legacy=True once every worker is remotejob's")
