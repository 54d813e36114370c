"""The async Queue: ``remotejob.Queue``'s API, awaited.

It wraps a ``remotejob.Queue`` and runs its steps in a pool of threads (:mod:`.offload`): the
same envelope, records and store layout, the same code, so an async submitter and a sync worker
(or the reverse) share one job system. What waits holds no thread: ``wait()`` sleeps on the
event loop between status reads, and ``next()`` long-polls through :mod:`.receive`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import lifecycle
from ..job import Job as SyncJob
from ..queue import Queue as SyncQueue
from ..status import JobStatus, Waiting
from .job import Job, Stream
from .offload import DEFAULT_THREADS, Offload
from .receive import Receiver

if TYPE_CHECKING:
    from ..backends.base import MessageQueue, ObjectStore
    from ..envelope import DeadLetter
    from ..schedules import Schedule
    from ..worker import Handler
    from .pool import AsyncHandler


class Queue:
    """A job system for coroutines: build one with ``await remotejob.aio.connect(...)``, or
    wrap a ``remotejob.Queue``. Use it as ``async with`` (or ``await q.close()``).

    Every method has the sync ``Queue``'s name, arguments, result and errors; see it for each.
    ``retrieve()`` and ``output()`` return a :class:`~remotejob.aio.Stream`, ``next()`` a
    :class:`~remotejob.aio.Job`.

    Args:
        queue: the sync queue whose connection and settings this one shares (``q.sync``).
        executor_threads: the pool the steps run in: at most this many requests at once.
    """

    def __init__(self, queue: SyncQueue, executor_threads: int = DEFAULT_THREADS) -> None:
        self.sync = queue
        self._offload = Offload(executor_threads)
        self._receiver = Receiver(queue.message_queue, self._offload)

    # -- settings and lifetime -------------------------------------------------------------

    @property
    def name(self) -> str:
        """The job system's name."""
        return self.sync.name

    @property
    def statuses(self) -> tuple[str, ...]:
        """The status queues, in pipeline order."""
        return self.sync.statuses

    @property
    def visibility_timeout(self) -> int:
        """Seconds a taken job stays invisible to other workers."""
        return self.sync.visibility_timeout

    @property
    def wait_time(self) -> int:
        """The long-poll wait of one receive, seconds."""
        return self.sync.wait_time

    @property
    def max_attempts(self) -> int:
        """Deliveries of a job before it is recorded failed."""
        return self.sync.max_attempts

    def queue_name(self, status: str) -> str:
        """The message queue's name for ``status``."""
        return self.sync.queue_name(status)

    def __repr__(self) -> str:
        return f"aio.{self.sync!r}"

    async def close(self) -> None:
        """Close the aiobotocore client, the pool (after the steps under way) and the queue."""
        await self._receiver.close()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._offload.close)
        await loop.run_in_executor(None, self.sync.close)  # it writes the journal's last entry

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def init(self) -> dict[str, Any]:
        """Create the bucket/folder and every queue now."""
        return await self._offload(self.sync.init)

    # -- objects ---------------------------------------------------------------------------

    async def store(self, direction: str, data: Mapping[str, Any]) -> str:
        """Store a body and its metadata in ``in`` or ``out``; return its key."""
        return await self._offload(self.sync.store, direction, data)

    def retrieve(self, direction: str, key: str, sha256: str | None = None) -> Stream:
        """A stored object as a :class:`Stream` (``async with`` it, or ``await`` it).

        NotFound is raised when it is opened."""
        return Stream(lambda: self.sync.retrieve(direction, key, sha256), self._offload)

    def output(self, job_id: str, asset: str, sha256: str | None = None) -> Stream:
        """One output of a job as a :class:`Stream`."""
        return Stream(lambda: self.sync.output(job_id, asset, sha256), self._offload)

    async def remove(self, direction: str, key: str) -> None:
        """Delete a stored object; removing a missing key is not an error."""
        await self._offload(self.sync.remove, direction, key)

    # -- jobs ------------------------------------------------------------------------------

    async def trigger(
        self, key: str, status: str = "pending", *, time_limit: float | None = None,
        delay: float | timedelta | None = None, at: datetime | None = None, priority: str | None = None,
    ) -> str:
        """Send the input stored under ``in/<key>`` to a status queue; return the job id."""
        return await self._offload(self.sync.trigger, key, status, time_limit=time_limit, delay=delay,
                                   at=at, priority=priority)

    async def submit(
        self, data: Mapping[str, Any], status: str = "pending", *, time_limit: float | None = None,
        delay: float | timedelta | None = None, at: datetime | None = None, priority: str | None = None,
        dedup_key: str | None = None,
    ) -> str:
        """Submit one job; return its id."""
        return await self._offload(self.sync.submit, data, status, time_limit=time_limit, delay=delay,
                                   at=at, priority=priority, dedup_key=dedup_key)

    async def submit_many(
        self, items: Iterable[Mapping[str, Any]], status: str = "pending", *,
        time_limit: float | None = None, delay: float | timedelta | None = None, at: datetime | None = None,
        priority: str | None = None,
    ) -> list[str]:
        """Submit many jobs, ten messages per request; return their ids in order."""
        return await self._offload(self.sync.submit_many, list(items), status, time_limit=time_limit,
                                   delay=delay, at=at, priority=priority)

    async def trigger_many(
        self, job_keys: Iterable[str], status: str = "pending", *, time_limit: float | None = None,
        delay: float | timedelta | None = None, at: datetime | None = None, priority: str | None = None,
    ) -> list[str]:
        """``trigger()`` for many stored inputs, ten per request; returns the job ids."""
        return await self._offload(self.sync.trigger_many, list(job_keys), status, time_limit=time_limit,
                                   delay=delay, at=at, priority=priority)

    async def cancel(self, job_id: str, reason: str | None = None) -> JobStatus:
        """Cancel a job (see ``remotejob.Queue.cancel``)."""
        return await self._offload(self.sync.cancel, job_id, reason)

    async def retry(self, job_id: str) -> JobStatus:
        """Run a failed or cancelled job again (see ``remotejob.Queue.retry``)."""
        return await self._offload(self.sync.retry, job_id)

    async def every(
        self, name: str, *, cron: str, data: Mapping[str, Any] | None = None, status: str = "pending",
        missed: str = "latest", time_limit: float | None = None, priority: str | None = None,
    ) -> Schedule:
        """Submit a job on every tick of ``cron`` (see ``remotejob.Queue.every``)."""
        return await self._offload(self.sync.every, name, cron=cron, data=data, status=status,
                                   missed=missed, time_limit=time_limit, priority=priority)

    async def schedules(self) -> list[Schedule]:
        """Every schedule of this job system, by name."""
        return await self._offload(self.sync.schedules)

    async def schedule(self, name: str) -> Schedule:
        """The schedule ``name``."""
        return await self._offload(self.sync.schedule, name)

    async def unschedule(self, name: str) -> bool:
        """Remove the schedule ``name``; return whether it existed."""
        return await self._offload(self.sync.unschedule, name)

    async def next(self, status: str = "pending", timeout: float | None = None) -> Job | None:
        """Take the next job from a status queue, long-polling until one arrives, or None once
        ``timeout`` seconds pass (see ``remotejob.Queue.next``)."""
        ctx = self.sync.context
        queue = await self._offload(ctx.status_queue, status)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            poll = float(ctx.wait_time or 1)
            remaining = poll if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(poll, remaining))
            for message in await self._receiver.receive(queue, 1, wait, ctx.visibility_timeout):
                delivery = await self._offload(lifecycle.take, ctx, queue, message)
                if delivery is not None:
                    return Job(SyncJob(delivery), self._offload)
            if deadline is not None and time.monotonic() >= deadline:
                return None

    async def status(self, job_id: str) -> JobStatus:
        """Where a job stands."""
        return await self._offload(self.sync.status, job_id)

    async def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> JobStatus:
        """Wait until a job is completed, failed or cancelled, without holding a thread: reads
        its status, quickly at first, then every ``poll`` seconds at most.

        Raises:
            JobFailed, JobCancelled, WaitTimeout, NotFound: as ``remotejob.Queue.wait``.
        """
        waiting = Waiting(job_id, timeout, poll)
        while True:
            pause = waiting.pause(await self.status(job_id))
            if isinstance(pause, JobStatus):
                return pause
            await asyncio.sleep(pause)

    # -- dead letters and workers ----------------------------------------------------------

    async def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """The messages in the dead-letter queue (they stay there)."""
        return await self._offload(self.sync.dead_letters, limit)

    async def redrive(self, limit: int | None = None, *, jobs: Collection[str] | None = None) -> int:
        """Send dead-lettered jobs back to their status queues; return how many."""
        return await self._offload(self.sync.redrive, limit, jobs=jobs)

    async def purge(self, status: str) -> None:
        """Delete every message waiting in a status queue (or ``"dead"``)."""
        await self._offload(self.sync.purge, status)

    async def _remove_job(self, status: str, receipt: str) -> None:
        """Delete a delivery by its receipt handle (the seed's hidden call)."""
        await self._offload(self.sync._remove_job, status, receipt)  # noqa: SLF001 - the seed's name

    async def work(
        self, handler: Handler | AsyncHandler, status: str = "pending", concurrency: int = 1,
        max_jobs: int | None = None, burst: bool = False, **options: Any,
    ) -> int:
        """Run a worker on ``status`` until stopped; its ``async def`` handler runs on this event
        loop (a plain function on threads). Returns the jobs it took. See
        :class:`remotejob.Worker` for the options; signals are left to the application."""
        from ..worker import Worker

        options.setdefault("handle_signals", False)
        worker = await self._offload(  # building it may create the status's queue
            Worker, self.sync, handler, status=status, concurrency=concurrency, max_jobs=max_jobs,
            burst=burst, **options)
        return await worker.run_async()


async def connect(name: str, store: str | ObjectStore | None = None, queues: str | MessageQueue | None = None,
                  *, executor_threads: int = DEFAULT_THREADS, **options: Any) -> Queue:
    """Connect to (and lazily create) the job system ``name``, for coroutines.

    The arguments are ``remotejob.connect``'s, plus ``executor_threads`` (the pool the steps
    run in). Nothing is sent until the first call.

    Raises:
        ConfigError: an invalid name, location or option.
    """
    from ..queue import connect as connect_sync

    sync = await asyncio.get_running_loop().run_in_executor(
        None, lambda: connect_sync(name, store, queues, **options))
    return Queue(sync, executor_threads)
