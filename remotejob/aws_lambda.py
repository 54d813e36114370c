"""Run a worker's handler in AWS Lambda, fed by an SQS event source mapping on a status queue.

Example (``app.py``, the function's handler ``app.lambda_handler``)::

    import remotejob.aws_lambda

    def make_thumbnail(job: remotejob.Job) -> list[dict[str, object]]:
        with job.open() as src:
            return [{"key": "thumb", "body": shrink(src.read())}]

    lambda_handler = remotejob.aws_lambda.handler(make_thumbnail, name="thumbnails")

Each record of an event goes through the same life as in a :class:`remotejob.Worker`: claim,
publish, notice, hand-on, retries with backoff, the dead letter, cancels and time limits. The
handler returns ``{"batchItemFailures": [...]}`` naming only the records whose messages must
come back (set the mapping's ``FunctionResponseTypes`` to ``ReportBatchItemFailures``); Lambda
deletes the others, and nothing here deletes a record's message itself.

A record is done with (Lambda deletes it) when its outcome is recorded (completed; failed on its
last attempt and moved to ``<name>-dead``; cancelled), when it repeats a finished job, or when it
is not a job (moved to ``<name>-dead`` with the reason). It is named for retry when its attempt
failed (its message becomes visible again after the backoff, set here), when it ran into the
invocation's last ``reserve`` seconds (asked to stop, like a time limit), when it was not started
before them (visible again at once), or when its outcome or notice could not be recorded.

:func:`clock_handler` is a second function's handler, for an EventBridge Scheduler rule: the
clock that workers otherwise run (delays over 15 minutes, periodic jobs, jobs the queue
dead-lettered by itself).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from . import dead, keys, levels
from .backends.base import Message, MessageQueue, ObjectStore
from .clock import Clock
from .errors import ConfigError
from .queue import Queue, connect
from .worker import Handler, Worker

logger = logging.getLogger(__name__)

DEFAULT_CANCEL_GRACE_S = 5.0
"""Seconds a handler asked to stop gets in Lambda (a worker's default is 10 s)."""


class LambdaContext(Protocol):
    """The part of Lambda's context object used here."""

    def get_remaining_time_in_millis(self) -> int: ...


Response = dict[str, list[dict[str, str]]]


class SqsEventHandler:
    """A Lambda handler for SQS events on a job system's status queues: see the module docstring
    and :func:`handler`."""

    def __init__(self, job_handler: Handler | Callable[..., Any], queue: Queue, concurrency: int,
                 reserve: float, worker_options: Mapping[str, Any]) -> None:
        options = {"cancel_grace": DEFAULT_CANCEL_GRACE_S, **worker_options}
        if not reserve >= 0 or not reserve > float(options["cancel_grace"]):
            raise ConfigError(
                f"reserve ({reserve!r} s) must be more than cancel_grace ({options['cancel_grace']!r} s): a "
                "job asked to stop needs its grace and the recording of its outcome before the "
                "invocation ends")
        for fixed in ("status", "concurrency", "handle_signals", "burst", "max_jobs", "grace_period"):
            if fixed in options:
                raise ConfigError(f"worker_options may not set {fixed!r}: the event source mapping and "
                                  "handler()'s own arguments decide it")
        for housekeeping in ("schedule_check", "dead_letter_check", "metrics_port", "metrics_host"):
            if housekeeping in options:
                raise ConfigError(f"worker_options may not set {housekeeping!r}: a function lives only "
                                  "while invoked; run remotejob.aws_lambda.clock_handler() on a schedule "
                                  "for the clock and the dead letters")
        self.queue = queue
        self.job_handler = job_handler
        self.concurrency = concurrency
        self.reserve = reserve
        self.options = options
        self._statuses = {  # not `completed`: its messages are notices for requesters (wait())
            keys.queue_name(queue.name, status, level): status
            for status in queue.statuses if status != "completed" for level in levels.LEVELS
        }
        self._workers: dict[str, Worker] = {}
        self._lock = threading.Lock()
        self.worker(queue.statuses[0])  # the options are checked now, not at the first event

    def worker(self, status: str) -> Worker:
        """The worker that runs ``status``'s records (made once per execution environment)."""
        with self._lock:
            if status not in self._workers:
                self._workers[status] = Worker(
                    self.queue, self.job_handler, status=status, concurrency=self.concurrency,
                    handle_signals=False, dead_letter_check=None, schedule_check=None, **self.options)
            return self._workers[status]

    def __call__(self, event: Mapping[str, Any], context: LambdaContext | None = None) -> Response:
        """Run the event's records; return the records to retry, as Lambda's partial batch
        response. Raises (failing the whole batch) only for an event that is not an SQS event
        from this job system's status queues."""
        started = time.time()
        deadline = None
        if context is not None:
            deadline = started + context.get_remaining_time_in_millis() / 1000 - self.reserve
        records = event.get("Records") if isinstance(event, Mapping) else None
        if not isinstance(records, list):
            raise ConfigError("not an SQS event (no 'Records' list): remotejob.aws_lambda.handler serves "
                              "an SQS event source mapping on a status queue")
        by_status: dict[str, list[tuple[str, Message]]] = {}
        seen: set[str] = set()  # a message id twice in one event runs once
        for index, record in enumerate(records):
            queue, message = self._message(index, record)
            if message.message_id in seen:
                continue
            seen.add(message.message_id)
            by_status.setdefault(self._status(queue), []).append((queue, message))
        failed: list[str] = []
        for status, received in by_status.items():
            done = self.worker(status).process(received, deadline)
            failed.extend(m.message_id for (_, m), ok in zip(received, done, strict=True) if not ok)
        if failed:
            logger.info("%d of %d records go back to their queue", len(failed), len(records))
        return {"batchItemFailures": [{"itemIdentifier": message_id} for message_id in failed]}

    def _status(self, queue: str) -> str:
        status = self._statuses.get(queue)
        if status is None:
            names = ", ".join(sorted(self._statuses))
            raise ConfigError(f"records from queue {queue!r}, which is not a status queue of job system "
                              f"{self.queue.name!r} that workers serve ({names}): map the function to one "
                              "of those, or give handler() the job system's name")
        return status

    @staticmethod
    def _message(index: int, record: Any) -> tuple[str, Message]:
        """A record as a received message, and the name of its queue."""
        source = record.get("eventSource") if isinstance(record, Mapping) else None
        if source != "aws:sqs":
            raise ConfigError(f"record {index} comes from {source!r}, not SQS (eventSource 'aws:sqs'): "
                              "remotejob.aws_lambda.handler serves SQS event source mappings")
        try:
            attributes = record["attributes"]
            queue = str(record["eventSourceARN"]).split(":")[5]
            return queue, Message(
                body=str(record["body"]), message_id=str(record["messageId"]),
                receipt=str(record["receiptHandle"]),
                receive_count=int(attributes["ApproximateReceiveCount"]),
                sent_at=int(attributes.get("SentTimestamp", "0")) / 1000,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise ConfigError(f"record {index} is not an SQS record as Lambda delivers it ({exc!r}): it "
                              "needs messageId, receiptHandle, body, attributes.ApproximateReceiveCount "
                              "and eventSourceARN") from None


def handler(
    job_handler: Handler | Callable[..., Any],
    name: str | None = None,
    store: str | ObjectStore | None = None,
    queues: str | MessageQueue | None = None,
    *,
    concurrency: int = 10,
    reserve: float = 10.0,
    worker_options: Mapping[str, Any] | None = None,
    **connect_options: Any,
) -> SqsEventHandler:
    """A Lambda handler for an SQS event source mapping on a status queue of job system ``name``.

    Call it once, at module level (Lambda's init phase): it connects then, and each execution
    environment keeps its connection and worker between invocations.

    Args:
        job_handler: the job handler, as a :class:`remotejob.Worker` takes it (a function of a
            ``Job``, or an ``async def`` one).
        name: the job system (None: ``$REMOTEJOB_NAME``, else ``jobs``).
        store, queues: as :func:`remotejob.connect` (None: ``$REMOTEJOB_STORE`` /
            ``$REMOTEJOB_QUEUES``).
        concurrency: records of one event run at once (the mapping's batch size is the most
            there can be).
        reserve: seconds of each invocation kept for recording outcomes: a job still running
            when only these are left is asked to stop and its attempt recorded failed (it is
            retried), and a record not started by then goes back at once. More than
            ``cancel_grace`` (5 s here), so that a handler asked to stop can be waited for.
        worker_options: more :class:`remotejob.Worker` keyword arguments (``retry_delay``,
            ``max_retry_delay``, ``time_limit``, ``cancel_grace``, ``cancel_check``...).
        connect_options: more :func:`remotejob.connect` keyword arguments (``max_attempts``,
            ``visibility_timeout``...).

    Returns:
        The handler: ``lambda_handler(event, context) -> {"batchItemFailures": [...]}``.

    Raises:
        ConfigError: an invalid option.
    """
    q = _connect(name, store, queues, connect_options)
    return SqsEventHandler(job_handler, q, concurrency, reserve, dict(worker_options or {}))


def clock_handler(
    name: str | None = None,
    store: str | ObjectStore | None = None,
    queues: str | MessageQueue | None = None,
    *,
    every: float = 60.0,
    **connect_options: Any,
) -> Callable[[Mapping[str, Any], Any], dict[str, int]]:
    """A Lambda handler for an EventBridge Scheduler rule ``rate(1 minute)``: one check of the
    clock a long-running worker keeps (``Worker(schedule_check=...)``): parked jobs now due
    (delays over 15 minutes) are dispatched, periodic jobs' ticks created; then one look into
    the dead-letter queue settles jobs the queue moved there by itself. Needed when no
    long-running worker serves the job system; any number may run at once.

    Args:
        name, store, queues, connect_options: as :func:`handler`.
        every: the rule's rate, in seconds (it sizes the window of ticks each check creates).

    Returns:
        ``clock(event, context) -> {"dead_letters_settled": n}``.
    """
    if not every > 0:
        raise ConfigError(f"every must be > 0 seconds, got {every!r}")
    q = _connect(name, store, queues, connect_options)
    clock = Clock(q.context, every)

    def clock_check(event: Mapping[str, Any], context: Any = None) -> dict[str, int]:
        clock.check()
        return {"dead_letters_settled": dead.sweep(q.context)}

    return clock_check


def _connect(name: str | None, store: str | ObjectStore | None, queues: str | MessageQueue | None,
             options: Mapping[str, Any]) -> Queue:
    """Connect as the command line does: the name given, else ``$REMOTEJOB_NAME``, else ``jobs``."""
    return connect(name or os.environ.get("REMOTEJOB_NAME") or "jobs", store, queues, **options)
