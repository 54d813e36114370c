"""The worker: take jobs from a status queue, run a handler on each, record the outcome.

A handler takes a :class:`~remotejob.Job` and returns its output assets (a list of mappings like
``Job.complete()``'s) or None, or completes the job itself (e.g. to hand it on to a pipeline's
next status). The worker deletes a job's message only once its outcome is recorded; while the
handler runs, a heartbeat keeps the message invisible. A handler that raises is retried with
exponential backoff by delaying the same message, up to the queue's ``max_attempts``; after the
last attempt the job is recorded failed and its message moves to the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from . import dead, journal, levels, lifecycle, records, tracing
from .backends.base import Message
from .batch import check_time_limit
from .clock import Clock
from .errors import AlreadyExists, Cancelled, ConfigError, RemoteJobError, TimeLimitExceeded
from .job import Job
from .lease import Heartbeat
from .lifecycle import Delivery
from .limits import MAX_VISIBILITY_S
from .outbox import Outbox
from .pool import HandlerPool
from .status import error_text
from .watch import Watch

if TYPE_CHECKING:
    from .aio.pool import AsyncHandler, LoopPool
    from .aio.queue import Queue as AsyncQueue
    from .metrics import WorkerMetrics
    from .queue import Queue

logger = logging.getLogger(__name__)

Handler = Callable[[Job], Sequence[Mapping[str, Any]] | None]

BURST_WAIT_S = 1
"""How long a burst worker long-polls before it decides the queue is empty."""
GATHER_S = 0.05
"""How long the receiver, with jobs still running, waits for room to take ten messages at once."""
_ERROR_PAUSE_S = 5.0
"""How long the worker waits after the queue could not be reached before it tries again."""
PRUNE_EVERY_S = 3600.0
"""How often a worker removes old journal entries (one LIST when there are none)."""
PRUNE_BATCH = 500
"""Journal entries one prune removes at most; with more left, the next prune comes in a minute."""


class Worker:
    """Runs ``handler`` on the jobs of one status queue, ``concurrency`` at a time.

    Example::

        def handler(job: remotejob.Job) -> list[dict[str, object]]:
            with job.open() as src:
                return [{"key": "output", "body": src.read().upper()}]

        worker = remotejob.Worker(q, handler, concurrency=8)
        worker.run()        # blocks; worker.stop() (or SIGTERM/SIGINT) ends it gracefully

    An ``async def`` handler gets a :class:`remotejob.aio.Job` and runs on one event loop,
    ``concurrency`` jobs at once with no thread per job (``concurrency=1000`` is fine): on a
    loop of the worker's own under :meth:`run`, on the caller's under ``await``
    :meth:`run_async`. A cancel or a time limit cancels its task (``asyncio.CancelledError``
    inside it); letting that propagate records what ``Cancelled`` or ``TimeLimitExceeded``
    would; after a stop's grace period the tasks still running are cancelled.

    Args:
        queue: the job system (a ``remotejob.Queue`` or a ``remotejob.aio.Queue``).
        handler: called with each job, on a thread of the worker's pool; or an ``async def``
            function, awaited on an event loop (see above).
        status: the status queue to serve.
        concurrency: handlers running at once.
        prefetch: messages the worker may hold beyond ``concurrency``, waiting for a free
            handler (their visibility is extended like running jobs'), so that one receive can
            take ten and the next is under way while handlers run; None (the default) holds as
            many as there are handlers, at least 2 and at most 10. 0 for long jobs spread over
            many workers, so none waits behind another.
        max_jobs: stop after taking this many jobs (None: no limit).
        burst: stop once the queue is empty and nothing runs or waits to be retried.
        grace_period: seconds running handlers get to finish after a stop; their messages are
            then made visible again at once.
        retry_delay: backoff of the first retry, in seconds; it doubles per attempt (with jitter).
        max_retry_delay: the longest backoff, in seconds.
        handle_signals: on the main thread, make SIGTERM/SIGINT stop gracefully (a second
            signal stops at once) while :meth:`run` runs.
        dead_letter_check: while idle, look into the dead-letter queue at most this often
            (seconds) for jobs the queue moved there by itself after they killed their worker
            on every attempt, and record them failed; None never looks.
        time_limit: seconds a job may run when it was submitted without a limit of its own
            (None: no limit). Past its limit a job is asked to stop (``job.cancelled``,
            ``job.check()``) and its attempt is recorded failed, then retried like any failure.
        cancel_grace: seconds a handler asked to stop (cancelled, or past its time limit) gets
            before the worker records the attempt's end without it and discards what it returns
            (``worker --exec`` sends SIGTERM, then SIGKILL after this grace).
        cancel_check: while holding jobs, read the store's cancellation log this often (seconds;
            one LIST each time), or once per heartbeat interval (a third of the visibility
            timeout, at least 1 s) if that is shorter: a cancel reaches running jobs within it.
        metrics_port: serve Prometheus metrics at ``http://METRICS_HOST:PORT/metrics`` (0: a
            free port, see ``worker.metrics.port``) from now until ``worker.metrics.close()``
            or the process ends; needs ``pip install 'remotejob[metrics]'``. The metrics are
            listed in ``remotejob.metrics``. None (the default): no metrics, no cost.
        metrics_host: the address to serve them on.
        schedule_check: every this many seconds (with 10% jitter), on a thread of its own,
            dispatch the jobs submitted with a delay longer than the queue's own (15 minutes)
            that are now due within it, and create the periodic jobs' ticks now due (see
            ``Queue.every``): one LIST of ``timers/`` and one of ``schedules/`` per check. Any
            number of workers may do this at once. None: this worker does neither (at least one
            worker of the job system should).

    Raises:
        UnknownStatus: the status is not configured.
        ConfigError: an invalid option.
    """

    def __init__(
        self,
        queue: Queue | AsyncQueue,
        handler: Handler | AsyncHandler,
        status: str = "pending",
        concurrency: int = 1,
        max_jobs: int | None = None,
        burst: bool = False,
        grace_period: float = 30.0,
        retry_delay: float = 1.0,
        max_retry_delay: float = 900.0,
        handle_signals: bool = True,
        prefetch: int | None = None,
        dead_letter_check: float | None = 60.0,
        time_limit: float | None = None,
        cancel_grace: float = 10.0,
        cancel_check: float = 5.0,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        schedule_check: float | None = 60.0,
    ) -> None:
        if not callable(handler):
            raise ConfigError(f"handler must be callable, got {type(handler).__name__}")
        queue = cast("Queue", getattr(queue, "sync", queue))  # a remotejob.aio.Queue's sync one
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be a positive integer, got {concurrency!r}")
        if prefetch is None:
            prefetch = min(10, max(2, concurrency))
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ConfigError(f"prefetch must be an integer >= 0 or None, got {prefetch!r}")
        if max_jobs is not None and (not isinstance(max_jobs, int) or max_jobs < 1):
            raise ConfigError(f"max_jobs must be a positive integer or None, got {max_jobs!r}")
        if dead_letter_check is not None and dead_letter_check < 0:
            raise ConfigError(f"dead_letter_check must be >= 0 seconds or None, got {dead_letter_check!r}")
        if queue.visibility_timeout < 1:
            raise ConfigError("a worker needs a visibility timeout of at least 1 s to hold its jobs")
        if not 0 <= retry_delay <= max_retry_delay <= MAX_VISIBILITY_S:
            raise ConfigError(f"need 0 <= retry_delay <= max_retry_delay <= {MAX_VISIBILITY_S} s")
        if grace_period < 0:
            raise ConfigError(f"grace_period must be >= 0, got {grace_period!r}")
        if cancel_grace < 0 or not cancel_check > 0:
            raise ConfigError(f"need cancel_grace >= 0 and cancel_check > 0 seconds, got {cancel_grace!r} "
                              f"and {cancel_check!r}")
        if schedule_check is not None and (isinstance(schedule_check, bool) or not schedule_check > 0):
            raise ConfigError(f"schedule_check must be > 0 seconds or None, got {schedule_check!r}")
        try:
            self.time_limit = check_time_limit(time_limit)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.queue = queue
        self.ctx = queue.context
        self.handler = handler
        self._async_handler = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
            type(handler).__call__)
        self._run_loop: asyncio.AbstractEventLoop | None = None
        self.status = status
        self.queue_name = self.ctx.status_queue(status)
        self.dead_letter_check = dead_letter_check
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.max_jobs = max_jobs
        self.burst = burst
        self.grace_period = grace_period
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.handle_signals = handle_signals
        self.taken = 0
        """Jobs taken so far (each delivery run counts once)."""
        self._running: dict[Job, float] = {}
        self._released: set[Job] = set()
        self._cond = threading.Condition()
        self._stop_level = 0
        self._stopping = threading.Event()  # cuts the receiver's long poll short where it can be
        self._receiving = False
        self._retry_until = 0.0
        self._swept = time.monotonic()
        self._prune_due = -math.inf
        self._heartbeat = Heartbeat(self.ctx, queue.visibility_timeout)
        self.cancel_grace = cancel_grace
        cancellations = self.ctx.cancellations  # at least once per heartbeat interval, too
        heartbeat_s = max(1.0, queue.visibility_timeout / 3)
        cancellations.interval = min(cancellations.interval, cancel_check, heartbeat_s)
        self._watch = Watch(self.ctx, cancel_grace, self._abandon)
        self._settling: set[Job] = set()
        self._deadline: float | None = None  # process(): when (epoch) the event source's time is up
        self._unsent: set[Job] = set()  # process(): finished jobs whose notice did not go
        self._pool: HandlerPool[Job] | LoopPool = HandlerPool(0, self._execute, "remotejob-handler")
        # A finished job stays held (invisible) until its outbox has sent its notice and deleted it.
        self._outbox = Outbox(self.ctx.queues, done=self._let_go_of)
        self._clock = None if schedule_check is None else Clock(self.ctx, schedule_check)
        self.metrics: WorkerMetrics | None = None
        """This worker's Prometheus metrics (``metrics_port``), else None."""
        if metrics_port is not None:
            from .metrics import WorkerMetrics

            if type(metrics_port) is not int or not 0 <= metrics_port < 65536:
                raise ConfigError(f"metrics_port must be a port number (0: a free one), got {metrics_port!r}")

            self.metrics = WorkerMetrics(self.ctx, (status,))
            self.metrics.serve(metrics_port, metrics_host)

    # -- control ---------------------------------------------------------------------------

    @property
    def interrupted(self) -> bool:
        """True if :meth:`run` returned with handlers still running (their jobs released).

        Their results will be discarded; a process should exit without waiting for them.
        """
        return any(job.running for job in self._released)

    def stop(self, now: bool = False) -> None:
        """Stop taking jobs; running handlers get the grace period (none with ``now``)."""
        with self._cond:
            self._stop_level = max(self._stop_level, 2 if now else 1)
            self._cond.notify_all()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_level += 1  # only a flag: the run loop notices within a fraction of a second

    def run(self) -> int:
        """Serve the queue until stopped, ``max_jobs`` taken, or (burst) it is empty.

        Returns:
            The number of jobs taken (by this call; :attr:`taken` counts every call's).
        """
        taken_before = self.taken
        with self._cond:
            self._stop_level = 0
            self._forget_released()
        self._stopping.clear()
        previous = self._install_signals()
        pool = self._pool = self._make_pool()
        self._heartbeat.start()
        self._watch.start()
        self._outbox.start()
        if self._clock is not None:
            self._clock.start()
        self._receiving = True
        receiver = threading.Thread(target=self._receive_loop, args=(pool,), name="remotejob-receiver",
                                    daemon=True)
        receiver.start()
        try:
            with self._cond:
                while self._stop_level == 0 and (self._receiving or self._running):
                    self._cond.wait(0.2)
            if self._stop_level:
                self._stopping.set()
                self._shut_down(receiver)
        finally:
            pool.shutdown(wait=self._stop_level == 0 and not self.interrupted)
            self._outbox.close()  # first: finished jobs stay held until their messages are deleted
            if self.ctx.journal is not None:  # what this run wrote is in the journal once it returns
                self.ctx.journal.flush()
            if self._clock is not None:
                self._clock.stop()
            self._watch.stop()
            self._heartbeat.stop()
            self._restore_signals(previous)
        return self.taken - taken_before

    async def run_async(self) -> int:
        """:meth:`run`, awaited: the worker's threads do the receiving and bookkeeping while an
        ``async def`` handler runs on the running event loop. Cancelling the awaiting task
        stops the worker gracefully (as :meth:`stop`) and waits for it. Signals are left to the
        application (``loop.add_signal_handler(signal.SIGTERM, worker.stop)``)."""
        loop = asyncio.get_running_loop()
        self._run_loop = loop
        running = loop.run_in_executor(None, self.run)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            self.stop()
            await running
            raise
        finally:
            self._run_loop = None

    def process(self, received: Sequence[tuple[str, Message]], deadline: float | None = None) -> list[bool]:
        """Run the jobs of messages that someone else received, ``(queue, message)`` pairs (an
        event source such as AWS Lambda's SQS poller: see :mod:`remotejob.aws_lambda`), with
        this worker's concurrency, retries and bookkeeping, and wait for them. Never deletes a
        message: that is left to the caller. One call at a time per worker.

        Args:
            received: the deliveries, from this worker's status queue (or its priority levels').
            deadline: when (seconds since the epoch) the caller's time is up: a job still
                running then is asked to stop (as past a time limit: its attempt failed, to be
                retried), and one not started by then goes back to its queue at once.

        Returns:
            For each delivery, in order: True if its message is done with and should be deleted
            (its outcome is recorded and its notice sent; it was a duplicate of a finished job;
            or it was not a job and went to the dead-letter queue), False if it must come back
            (a retry, visible again after the backoff this call set; a stop; an outcome or
            notice that could not be recorded).
        """
        with self._cond:
            self._stop_level = 0
            self._forget_released()
        self._deadline = deadline
        self._unsent.clear()
        self._outbox.delete = False
        pool = self._pool = self._make_pool()
        self._heartbeat.start()
        self._watch.start()
        self._outbox.start()
        dispatched: list[Job | bool] = []
        try:
            for queue, message in received:
                try:
                    dispatched.append(self._dispatch(message, pool, queue))
                except RemoteJobError as exc:  # it comes back when its visibility runs out
                    logger.error("could not hand a message from %s on: %s", queue, exc)
                    dispatched.append(False)
            with self._cond:
                while any(job in self._running for job in dispatched if isinstance(job, Job)):
                    self._cond.wait(0.2)
        finally:
            pool.shutdown(wait=not self.interrupted)
            self._outbox.close()  # sends the notices before the caller deletes the messages
            self._outbox.delete = True
            if self.ctx.journal is not None:
                self.ctx.journal.flush()
            self._watch.stop()
            self._heartbeat.stop()
            self._deadline = None
        return [job if isinstance(job, bool) else self._done_with(job) for job in dispatched]

    def _forget_released(self) -> None:
        """At a new run: forget the jobs let go of earlier, but for those whose handler still
        runs (abandoned, or cut off by a stop), so that what they return stays discarded."""
        self._released = {job for job in self._released if job.running}

    def _done_with(self, job: Job) -> bool:
        d = job.delivery
        return d.acknowledged and not d.released and job not in self._unsent

    def _make_pool(self) -> HandlerPool[Job] | LoopPool:
        if not self._async_handler:
            return HandlerPool(self.concurrency, self._execute, "remotejob-handler")
        from .aio.pool import LoopPool, Steps

        steps = Steps(self._open, self._conclude, self._trouble, self._close)
        handler = cast("AsyncHandler", self.handler)
        return LoopPool(steps, handler, self.concurrency, self.status, self.metrics, self._run_loop)

    def _shut_down(self, receiver: threading.Thread) -> None:
        with self._cond:  # prefetched jobs that no handler started go back at once
            waiting = [job for job in self._running if not job.running]
            for job in waiting:
                del self._running[job]
            self._released.update(waiting)
        self._let_go(waiting)
        logger.info("stopping: %d job(s) running, grace period %s s", len(self._running), self.grace_period)
        deadline = time.monotonic() + self.grace_period
        with self._cond:
            while self._running and self._stop_level < 2 and time.monotonic() < deadline:
                self._cond.wait(min(0.2, max(0.0, deadline - time.monotonic())))
            unfinished = list(self._running)
            self._released.update(unfinished)
        self._let_go(unfinished)
        for job in unfinished:
            if job.delivery.progress_recorded:  # it waits again: it should not look taken
                try:
                    records.clear_progress(self.ctx.store, job.id)
                except RemoteJobError as exc:
                    logger.warning("job %s: could not clear its progress record: %s", job.id, exc)
            logger.warning("job %s did not finish before the worker stopped; released it", job.id)
        if self._stop_level < 2:
            receiver.join(max(0.0, deadline - time.monotonic()))

    def _let_go(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._heartbeat.release(job)
        self._make_visible([(job.delivery.queue, job.receipt) for job in jobs])

    def _install_signals(self) -> dict[int, Any]:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signals(self, previous: dict[int, Any]) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    # -- receiving -------------------------------------------------------------------------

    def _room(self) -> int:
        """How many messages to receive next: wait until a handler would otherwise be idle, then
        (while others still run) up to ``GATHER_S`` for room to take ten in one request."""
        capacity = self.concurrency + self.prefetch
        with self._cond:
            while len(self._running) >= self.concurrency and not self._stop_level:
                self._cond.wait(0.2)
            deadline = time.monotonic() + GATHER_S
            while self._running and capacity - len(self._running) < min(10, capacity):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop_level:
                    break
                self._cond.wait(left)
            room = capacity - len(self._running)
        if self.max_jobs is not None:
            room = min(room, self.max_jobs - self.taken)
        return min(room, 10)

    def _receive_loop(self, pool: HandlerPool[Job]) -> None:
        poller = levels.Poller(self.ctx, self.status, self._stopping)  # the status's priority levels
        try:
            while not self._stop_level:
                self._prune_journal()
                free = self._room()
                if self._stop_level or free <= 0:
                    break
                wait = BURST_WAIT_S if self.burst else max(1, self.ctx.wait_time)
                try:
                    messages = poller.receive(free, wait)
                except RemoteJobError as exc:
                    logger.error("cannot receive from %s: %s; retrying in %s s", self.queue_name, exc,
                                 _ERROR_PAUSE_S)
                    with self._cond:
                        self._cond.wait(_ERROR_PAUSE_S)
                    continue
                if self._stop_level:
                    self._give_back(messages)
                    break
                if not messages:
                    self._sweep_dead_letters()
                quiet = poller.quiet_since  # every level long-polled empty since then
                if not messages and self.burst and quiet is not None and self._idle(quiet):
                    break
                for index, (queue, message) in enumerate(messages):
                    if self._stop_level:  # stopped while handing these out: the rest go back
                        self._give_back(messages[index:])
                        break
                    try:
                        self._dispatch(message, pool, queue)
                    except RemoteJobError as exc:  # it stays in the queue and comes back
                        logger.error("could not hand a message from %s on: %s", queue, exc)
                    except Exception:  # noqa: BLE001 - a bug with one message must not end the receiving
                        logger.exception("could not hand a message from %s on; it comes back after its "
                                         "visibility timeout", queue)
        finally:
            with self._cond:
                self._receiving = False
                self._cond.notify_all()

    def _sweep_dead_letters(self) -> None:
        """Now and then, while idle: settle jobs the queue dead-lettered by itself."""
        if self.dead_letter_check is None or time.monotonic() - self._swept < self.dead_letter_check:
            return
        self._swept = time.monotonic()
        try:
            dead.sweep(self.ctx)
        except Exception as exc:  # noqa: BLE001 - a look at the dead letters must not stop the worker
            logger.warning("could not look into the dead-letter queue: %s", exc)

    def _prune_journal(self) -> None:
        """At start, then at most once an hour: remove journal entries older than a day."""
        if time.monotonic() < self._prune_due:
            return
        self._prune_due = time.monotonic() + PRUNE_EVERY_S
        try:
            if journal.prune(self.ctx.object_store, limit=PRUNE_BATCH) >= PRUNE_BATCH:
                self._prune_due = time.monotonic() + 60
        except Exception as exc:  # noqa: BLE001 - housekeeping must not stop the worker
            logger.warning("could not prune the job journal: %s", exc)

    def _let_go_of(self, owner: object, sent: bool) -> None:
        if isinstance(owner, Job):
            self._heartbeat.release(owner)
            if not sent and not self._outbox.delete:  # in process(): its message must come back
                self._unsent.add(owner)

    def _idle(self, polled_at: float) -> bool:
        """Nothing runs, and the empty poll began after every retry this worker delayed was due."""
        with self._cond:
            return not self._running and polled_at >= self._retry_until

    def _give_back(self, messages: list[levels.Received]) -> None:
        self._make_visible([(queue, message.receipt) for queue, message in messages])

    def _make_visible(self, receipts: list[tuple[str, str]]) -> None:
        """Make deliveries, ``(queue, receipt)``, visible again at once (ten per request), e.g.
        while stopping."""
        by_queue: dict[str, list[str]] = {}
        for queue, receipt in receipts:
            by_queue.setdefault(queue, []).append(receipt)
        for queue, held in by_queue.items():
            for start in range(0, len(held), 10):
                try:
                    self.ctx.queues.change_visibility_batch(
                        queue, [(receipt, 0) for receipt in held[start:start + 10]]
                    )
                except RemoteJobError as exc:
                    logger.warning("could not give back messages while stopping: %s", exc)

    def _dispatch(self, message: Message, pool: HandlerPool[Job] | LoopPool, queue: str) -> Job | bool:
        """Hand a received message to the pool; return its job, or True for a message that was
        not a job (moved to the dead-letter queue, or dropped)."""
        opened = self.ctx.open(queue, message, delete=self._outbox.delete)
        if opened is None:
            if self.metrics is not None:
                self.metrics.outcome(self.status, "dead_lettered")  # refused: see Context.open
            return True
        envelope, message = opened
        delivery = Delivery(self.ctx, envelope, message, self._outbox, default_limit=self.time_limit,
                            observer=self.metrics, source=queue)
        job = Job(delivery)
        delivery.owner = job
        if envelope.kind != "job":
            logger.warning("a completion notice in %s is not a job; removing it", queue)
            if self._outbox.delete:
                job.acknowledge()
            return True
        with self._cond:
            self.taken += 1
            self._running[job] = time.monotonic()
        if self.metrics is not None:
            self.metrics.taken(self.status)
        self._heartbeat.hold(job)  # from now: it may wait for a handler (prefetch)
        self._watch.hold(job)
        early = 0.0 if envelope.due is None else envelope.due - time.time()
        if 0 < early <= lifecycle.EARLY_WAIT_S:  # a delayed job's message arrives up to a second
            timer = threading.Timer(early, pool.submit, (job,))  # early (delays are whole seconds):
            timer.daemon = True  # held, it waits for its time without taking a handler thread
            timer.start()
        else:
            pool.submit(job)
        return job

    # -- running ---------------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        """Run one job on a handler thread: open, call the handler, conclude, close. (An async
        handler's job goes through the same steps, from ``aio.pool``.)"""
        try:
            if not self._open(job):
                return
            with tracing.process(job.delivery):
                assets, exc = self._call(job)
                self._conclude(job, assets, exc)
        except Exception as exc:  # noqa: BLE001 - a worker outlives any one job's trouble
            self._trouble(job, exc)
        finally:
            self._close(job)

    def _open(self, job: Job) -> bool:
        """Begin ``job``'s attempt; False if it is not to run (let go of while it waited for a
        handler, finished already, not due yet)."""
        with self._cond:
            if job in self._released:  # it waited for a handler until the worker stopped
                return False
            job.delivery.started = time.time()
            job.running = True
        if self._deadline is not None:
            left = self._deadline - job.delivery.started
            if left <= 0:
                logger.info("job %s: no time left to run it; gave it back", job.id)
                lifecycle.release(job.delivery)
                return False
            job.delivery.cap = left
        if not lifecycle.begin(job.delivery):
            return False
        self._watch.started(job)
        return True

    def _call(self, job: Job) -> tuple[Sequence[Mapping[str, Any]] | None, Exception | None]:
        try:
            if self.metrics is None:
                return cast("Handler", self.handler)(job), None
            with self.metrics.handling(self.status):
                return cast("Handler", self.handler)(job), None
        except Exception as exc:  # noqa: BLE001 - a failing handler is the job's outcome
            return None, exc

    def _conclude(self, job: Job, assets: Sequence[Mapping[str, Any]] | None, exc: Exception | None) -> None:
        """Record the end of ``job``'s attempt from what its handler returned or raised."""
        if exc is None:
            try:
                if not self._settle(job):
                    logger.warning("job %s finished after it was let go of; its result is discarded", job.id)
                elif job.delivery.stop_reason is not None and not job.finished:
                    self._stopped(job, None)
                elif not job.finished:
                    job.complete(assets=assets or ())
                return
            except AlreadyExists:
                raise
            except Exception as later:  # noqa: BLE001 - e.g. a cancel seen as it completed
                exc = later
        if isinstance(exc, AlreadyExists):
            raise exc
        tracing.record_error(exc)
        if not self._settle(job):
            logger.warning("job %s: its handler ended (%s) after it was let go of; discarded", job.id,
                           error_text(exc))
            return
        if job.finished:
            raise exc
        if job.delivery.stop_reason is not None:
            self._stopped(job, exc)
        else:
            self._failed(job, exc)

    def _trouble(self, job: Job, exc: Exception) -> None:
        if isinstance(exc, AlreadyExists):
            logger.info("job %s was finished by another attempt; discarded this one's work", job.id)
        else:
            logger.error("job %s: could not record its outcome; it will be delivered again", job.id,
                         exc_info=exc)

    def _close(self, job: Job) -> None:
        self._watch.release(job)
        if not job.delivery.in_outbox:
            self._heartbeat.release(job)  # else the outbox lets go once it deleted the job
        with self._cond:
            job.running = False
            self._settling.discard(job)
            self._running.pop(job, None)
            self._cond.notify_all()

    def _settle(self, job: Job) -> bool:
        """Claim the right to record the end of ``job``'s attempt; False if it was let go of
        (at shutdown, or abandoned by the watch)."""
        with self._cond:
            if job in self._released:
                return False
            self._settling.add(job)
            return True

    def _stopped(self, job: Job, exc: Exception | None) -> None:
        """End the attempt of a job whose handler was asked to stop: drop a cancelled job (its
        cancel's outcome stands, and it is not retried), fail one past its time limit."""
        if job.delivery.stop_reason == "cancelled":
            if lifecycle.finish_if_done(job.delivery):
                logger.info("job %s stopped: it was cancelled", job.id)
                if self.metrics is not None:
                    self.metrics.outcome(self.status, "cancelled")
                return
            # its outcome record is gone (a retry reopened the job): this attempt goes back
            exc = Cancelled(f"job {job.id!r} was cancelled, then its outcome was removed (a retry)")
        elif not isinstance(exc, TimeLimitExceeded):
            detail = "" if exc is None or isinstance(exc, Cancelled) else f"; then: {error_text(exc)}"
            limit = job.time_limit or 0
            what = "its time limit" if job.delivery.cap != limit else "the time its invocation left it"
            exc = TimeLimitExceeded(f"job {job.id!r} ran past {what} of {limit:g} s{detail}")
        self._failed(job, exc)

    def _abandon(self, job: Job) -> None:
        """The watch's verdict on a handler that outlived its grace after being asked to stop."""
        with self._cond:
            if job in self._settling or job in self._released or job not in self._running:
                return
            self._released.add(job)
            del self._running[job]
            self._cond.notify_all()
        self._pool.abandon(job)  # another thread takes its place: the worker keeps its concurrency
        logger.warning("job %s: its handler did not stop within %g s of being asked (%s); the "
                       "worker goes on without it", job.id, self.cancel_grace, job.delivery.stop_reason)
        try:
            self._stopped(job, None)
        except Exception:  # noqa: BLE001 - the job comes back when its visibility runs out
            logger.exception("job %s: could not record the end of its abandoned attempt", job.id)

    def _failed(self, job: Job, exc: Exception) -> None:
        attempts = self.ctx.max_attempts
        if job.receive_count >= attempts:
            logger.warning("job %s failed its last attempt (%d of %d): %s", job.id, job.receive_count,
                           attempts, error_text(exc))
            reason = f"failed {job.receive_count} attempts; last error: {error_text(exc)}"
            lifecycle.finish(job.delivery, exc, (), dead_reason=reason[:1000])
            if self.metrics is not None:
                self.metrics.outcome(self.status, "dead_lettered")
            return
        delay = self._backoff(job.receive_count)
        logger.warning("job %s failed attempt %d of %d (%s); retrying in %d s", job.id, job.receive_count,
                       attempts, error_text(exc), delay)
        with self._cond:
            # Queues keep visibility in whole seconds: allow one more for their clock.
            self._retry_until = max(self._retry_until, time.time() + delay + (1 if delay else 0))
        self._heartbeat.release(job)  # first: a beat in flight must not undo the backoff
        job.release(delay)
        if self.metrics is not None:
            self.metrics.outcome(self.status, "retried")

    def _backoff(self, attempt: int) -> int:
        """Exponential backoff with jitter: half to all of ``retry_delay * 2**(attempt-1)``."""
        ceiling: float = min(self.max_retry_delay, self.retry_delay * 2.0 ** min(attempt - 1, 30))
        return math.ceil(ceiling * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not secrecy

