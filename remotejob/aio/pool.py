"""Async handlers for :class:`remotejob.Worker`: many jobs on one event loop.

The worker stays the sync one (its receiver, heartbeat, watch and outbox threads); only the
handler threads are replaced. Each job is a task on the loop that runs the worker's own steps,
``_open`` and ``_conclude`` (begin the attempt; record its outcome), in a small pool of threads
and awaits the handler in between. So ``concurrency`` handlers run at once on one thread, with
the same lifecycle, and the loop never waits on a backend.

A cancel or a time limit cancels the handler's task (``asyncio.CancelledError`` inside it); the
worker then records what a sync handler's ``Cancelled`` or ``TimeLimitExceeded`` would. At a
stop, handlers still running after the grace period are cancelled and their jobs given back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import tracing
from ..errors import Cancelled, TimeLimitExceeded
from ..job import Job as SyncJob
from .job import Job
from .offload import Offload

if TYPE_CHECKING:
    from ..metrics import WorkerMetrics

logger = logging.getLogger(__name__)

AsyncHandler = Callable[[Job], Awaitable[Sequence[Mapping[str, Any]] | None]]

Outcome = tuple[Sequence[Mapping[str, Any]] | None, Exception | None]


class Steps(NamedTuple):
    """The worker's steps of one job that run around its handler (``Worker._execute``'s)."""

    open: Callable[[SyncJob], bool]
    """Begin the attempt; False if the job is not to run."""
    conclude: Callable[[SyncJob, Sequence[Mapping[str, Any]] | None, Exception | None], None]
    """Record the outcome from what the handler returned or raised."""
    trouble: Callable[[SyncJob, Exception], None]
    """Log a step's failure (the job comes back)."""
    close: Callable[[SyncJob], None]
    """Let go of the job (heartbeat, watch, the worker's count)."""


STEP_THREADS = 32
"""Threads that run the jobs' steps (begin, record the outcome) at most: each holds one only
while it makes its requests."""


class LoopPool:
    """The worker's handler pool for an ``async def`` handler (same interface as
    ``pool.HandlerPool``: ``submit``, ``abandon``, ``shutdown``).

    Args:
        steps: the worker's steps each job runs.
        handler: the coroutine function.
        size: handlers running at once.
        status: the status served (for the metrics).
        metrics: the worker's metrics, if any.
        loop: the event loop to run them on (``Worker.run_async``'s); None: a loop of its own,
            on a thread of its own, for the sync ``Worker.run``.
    """

    def __init__(self, steps: Steps, handler: AsyncHandler, size: int, status: str,
                 metrics: WorkerMetrics | None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._worker = steps
        self._status = status
        self._metrics = metrics
        self._handler = handler
        self._steps = Offload(max(2, min(size, STEP_THREADS)), "remotejob-step")
        self._thread: threading.Thread | None = None
        if loop is None:
            loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=loop.run_forever, name="remotejob-loop", daemon=True)
            self._thread.start()
        self._loop = loop
        self._size = size
        self._slots: asyncio.Semaphore | None = None
        self._tasks: dict[SyncJob, asyncio.Task[None]] = {}
        self._handlers: dict[SyncJob, asyncio.Future[Any]] = {}

    def submit(self, job: SyncJob) -> None:
        """Run ``job`` on the loop once one of ``size`` slots is free (thread-safe)."""
        self._loop.call_soon_threadsafe(self._start, job)

    def _start(self, job: SyncJob) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        self._tasks[job] = self._loop.create_task(self._run(job, self._slots), name=f"remotejob job {job.id}")
        job.delivery.on_stop = lambda reason: self.abandon(job)

    def _stop_handler(self, job: SyncJob) -> None:
        handler = self._handlers.get(job)
        if handler is not None:
            handler.cancel()

    def abandon(self, job: SyncJob) -> None:
        """Cancel ``job``'s handler (thread-safe): it was asked to stop, or the watch gave up
        on it."""
        try:
            self._loop.call_soon_threadsafe(self._stop_handler, job)
        except RuntimeError:  # the loop is closed: nothing runs on it any more
            pass

    async def _run(self, job: SyncJob, slots: asyncio.Semaphore) -> None:
        worker = self._worker
        try:
            async with slots:
                if not await self._steps(worker.open, job):
                    return
                with tracing.process(job.delivery):
                    assets, exc = await self._call(job)
                    await self._steps(worker.conclude, job, assets, exc)
        except Exception as exc:  # noqa: BLE001 - a worker outlives any one job's trouble
            worker.trouble(job, exc)
        finally:
            self._tasks.pop(job, None)
            await self._steps(worker.close, job)

    async def _call(self, job: SyncJob) -> Outcome:
        metrics = self._metrics
        handler = asyncio.ensure_future(self._handle(Job(job, self._steps)))
        self._handlers[job] = handler
        if job.delivery.stop_reason is not None:  # asked to stop before its handler started
            handler.cancel()
        try:
            if metrics is None:
                return await handler, None
            with metrics.handling(self._status):
                return await handler, None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task itself is cancelled: the loop closes
                raise
            reason = job.delivery.stop_reason
            if reason == "time-limit":
                return None, TimeLimitExceeded(
                    f"job {job.id!r} ran past its time limit of {job.time_limit or 0:g} s")
            return None, Cancelled(f"job {job.id!r} was {'cancelled' if reason else 'stopped'}")
        except Exception as exc:  # noqa: BLE001 - a failing handler is the job's outcome
            return None, exc
        finally:
            self._handlers.pop(job, None)

    async def _handle(self, job: Job) -> Sequence[Mapping[str, Any]] | None:
        return await self._handler(job)

    async def _drain(self, cancel: bool) -> None:
        if cancel:
            for handler in list(self._handlers.values()):
                handler.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def shutdown(self, wait: bool, drop_pending: bool = True) -> None:
        """Wait for the jobs' tasks to end; without ``wait``, cancel their handlers first (their
        jobs were given back). Then stop the step threads, and the loop if it is this pool's."""
        del drop_pending  # a task not yet begun finds its job let go of and ends at once
        asyncio.run_coroutine_threadsafe(self._drain(cancel=not wait), self._loop).result()
        self._steps.close()
        if self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()
