"""Submitting and triggering jobs with the fewest requests: batched sends (one SQS request per
ten jobs, or per 256 KiB of messages), small inputs inline in their messages, and one manifest
per submitted batch instead of a status record per job.

A submit generates its jobs' ids as ``<batch-id>-<n>`` and writes one manifest,
``batches/<batch-id>``, saying how many jobs it holds, so ``status()`` can tell a pending job
from an id that was never submitted without a record of its own. A job whose caller chose its
key (and every ``trigger()``) gets its own ``queued`` record instead, created once *before*
anything else is written, so a second submit of the same key is refused having written nothing.

A job due later (``delay``/``at``) is sent with the queue's own message delay when that reaches
(up to 15 minutes on SQS); a job due later still is parked in the store instead (``timers.py``),
its message marked ``once`` so that a duplicated dispatch never runs it twice. A priority other
than normal sends to that level's queue (``<name>-<status>-high``/``-low``).

When sending fails, only what is known not to have been sent is undone: entries a batch call
refused, and batches never sent. A batch whose reply was lost may have been sent; its jobs are
left runnable (their inputs, records and manifest entries stay) and the error says so.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from . import keys, records, timers, tracing
from .backends.base import OutgoingMessage
from .bodies import BodyLike, Entry, Prepared, open_body, parse_entry
from .context import Context, check_priority
from .envelope import Envelope, encode
from .errors import BatchPartlyFailed, NotFound, RemoteJobError, UncertainResult
from .limits import MAX_MESSAGE_BYTES, send_batches

logger = logging.getLogger(__name__)

SENDERS = 4
"""SendMessageBatch requests a large submission keeps in flight at once."""
INLINE_ENVELOPE_MAX = MAX_MESSAGE_BYTES - 16 * 1024
"""An input travels inline when its whole message is at most this size: the queues' maximum
message size less room to wrap the message for the dead-letter queue."""

_INLINE_BODY_MAX = INLINE_ENVELOPE_MAX * 3 // 4  # base64 makes 4 characters of every 3 bytes


@dataclass
class _Job:
    id: str
    message: str = ""
    stored: bool = False
    """This submit wrote the job's input under ``in/`` (removed again if it is not sent)."""
    recorded: bool = False
    """This submit created the job's ``queued`` record (removed again if it is not sent)."""
    index: int | None = None
    """The job's index among the batch's generated ids (the manifest stands for it)."""
    meta: Mapping[str, str] | None = None
    """The job's metadata (a generated id's goes into the manifest)."""


def store(ctx: Context, direction: str, entry: Entry) -> tuple[str, Prepared]:
    """Store an entry; return its key and the body as stored (its ``sha256`` costs a second read
    of a file, so only callers that record it ask for it)."""
    key = entry.key or keys.new_key()
    with open_body(entry.body) as prepared:
        ctx.store.put(keys.object_key(direction, key), prepared.body, entry.metadata, entry.content_type)
    return key, prepared


def check_time_limit(time_limit: float | None) -> float | None:
    """A job's time limit as the envelope carries it.

    Raises:
        ValueError: not a positive, finite number of seconds.
    """
    if time_limit is None:
        return None
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) \
            or not 0 < time_limit < math.inf:
        raise ValueError(f"time_limit must be a positive number of seconds or None, got {time_limit!r}")
    return float(time_limit)


@dataclass(frozen=True)
class _When:
    """When and where a submission's jobs go: the due time, the priority level, and whether
    their messages may be sent more than once (parked in the store, or a periodic job's tick)."""

    status: str
    queue: str
    due: float | None
    priority: str | None
    once: bool
    parked: bool
    """Due later than the queue can delay a message: parked in the store until then."""

    def envelope(self, job_id: str, now: float, meta: Mapping[str, str], limit: float | None) -> Envelope:
        return Envelope(job=job_id, key=job_id, status=self.status, sent=now, meta=dict(meta), limit=limit,
                        trace=tracing.carrier(), due=self.due, once=self.once, priority=self.priority)


def _when(
    ctx: Context, status: str, now: float, due: float | None, priority: str | None, once: bool
) -> _When:
    queue = ctx.status_queue(status, priority)
    parked = due is not None and due - now > ctx.max_delay_s
    return _When(status, queue, due, check_priority(priority), once or parked, parked)


@tracing.sends
def submit_many(
    ctx: Context, items: Iterable[Mapping[str, Any]], status: str, time_limit: float | None = None, *,
    due: float | None = None, priority: str | None = None, once: bool = False,
) -> list[str]:
    """Store (or inline) every item's input, then send them all; see ``Queue.submit_many``.
    ``due``: when the jobs may start (None: now); ``once``: their messages may be sent more than
    once (a periodic job's tick)."""
    limit = check_time_limit(time_limit)
    entries = [parse_entry(item) for item in items]
    now = time.time()
    when = _when(ctx, status, now, due, priority, once)
    batch_id = keys.new_key()
    jobs: list[_Job] = []
    generated = 0
    try:
        for entry in entries:
            job = _Job(entry.key or keys.batch_job_id(batch_id, generated))
            jobs.append(job)
            if entry.key is None:
                job.index = generated
                generated += 1
            _prepare(ctx, entry, job, when, now, limit)
    except BaseException:
        _undo(ctx, jobs)
        raise
    return _send(ctx, when, now, jobs, batch_id)


@tracing.sends
def trigger_many(
    ctx: Context, job_keys: Iterable[str], status: str, time_limit: float | None = None, *,
    due: float | None = None, priority: str | None = None, once: bool = False,
) -> list[str]:
    """Trigger stored inputs in batches; see ``Queue.trigger_many``."""
    limit = check_time_limit(time_limit)
    now = time.time()
    when = _when(ctx, status, now, due, priority, once)
    jobs: list[_Job] = []
    try:
        for key in job_keys:
            try:
                info = ctx.store.head(keys.input_key(key))
            except NotFound:
                raise NotFound(f"no input stored at in/{key}: store() it before triggering it") from None
            records.create_queued(ctx.store, key, status, now, info.metadata, due=when.due,
                                  priority=when.priority)
            envelope = when.envelope(key, now, info.metadata, limit)
            jobs.append(_Job(key, ctx.seal(encode(envelope)), recorded=True))
    except BaseException:
        _undo(ctx, jobs)
        raise
    return _send(ctx, when, now, jobs, None)


def _prepare(ctx: Context, entry: Entry, job: _Job, when: _When, now: float, limit: float | None) -> None:
    envelope = when.envelope(job.id, now, entry.metadata, limit)
    job.meta = entry.metadata
    if job.index is None:  # the caller named it: refused before anything is written if taken
        records.create_queued(ctx.store, job.id, when.status, now, entry.metadata, due=when.due,
                              priority=when.priority)
        job.recorded = True
    else:
        data = _small_body(entry.body)
        if data is not None:
            message = ctx.seal(encode(replace(envelope, body=base64.b64encode(data).decode("ascii"))))
            if len(message.encode("utf-8")) <= INLINE_ENVELOPE_MAX:
                job.message = message
                return
    _, stored = store(ctx, "in", replace(entry, key=job.id))
    job.stored = True
    job.message = ctx.seal(encode(replace(envelope, sha256=stored.sha256)))


def _small_body(body: BodyLike) -> bytes | None:
    """The body's bytes if it may fit in a message; None for large files and streams."""
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, os.PathLike) and os.path.getsize(body) <= _INLINE_BODY_MAX:
        with open(body, "rb") as handle:
            return handle.read(_INLINE_BODY_MAX + 1)
    return None


def _send(ctx: Context, when: _When, now: float, jobs: list[_Job], batch_id: str | None) -> list[str]:
    status = when.status
    generated = [job.index for job in jobs if job.index is not None]
    if generated and batch_id is not None:
        try:
            records.write_manifest(ctx.store, batch_id, len(generated), status, now, if_absent=True,
                                   meta=_generated_meta(jobs), due=when.due, priority=when.priority)
        except BaseException:
            _undo(ctx, jobs)
            raise
    sent: dict[int, str] = {}
    failed: dict[int, str] = {}
    uncertain: dict[int, str] = {}
    error: BaseException | None = None
    lock = threading.Lock()

    def send(batch: list[int]) -> None:
        nonlocal error
        with lock:
            if error is not None:  # after a failure nothing more is sent
                failed.update({i: "not sent" for i in batch})
                return
        try:
            if when.parked and when.due is not None:
                timers.park(ctx, when.status, when.priority, when.due, [jobs[i].message for i in batch])
            else:
                delay = 0 if when.due is None else timers.delay_for(when.due, ctx.max_delay_s)
                ctx.queues.send_batch(when.queue, [OutgoingMessage(jobs[i].message, delay) for i in batch])
            with lock:
                sent.update({i: jobs[i].id for i in batch})
        except BatchPartlyFailed as exc:
            with lock:
                error = error or exc
                for n, i in enumerate(batch):
                    if n in exc.failed:
                        failed[i] = exc.failed[n]
                    else:
                        sent[i] = jobs[i].id
        except UncertainResult as exc:
            with lock:
                error = error or exc
                uncertain.update({i: jobs[i].id for i in batch})
        except BaseException as exc:  # noqa: BLE001 - refused or unreachable: nothing of it was sent
            with lock:
                error = error or exc
                failed.update({i: type(exc).__name__ for i in batch})

    messages = [job.message for job in jobs]
    batches = timers.park_batches(messages) if when.parked else send_batches(messages)
    if len(batches) == 1:
        send(batches[0])
    else:  # a few requests in flight at once: under network latency, ~SENDERS times sooner
        with ThreadPoolExecutor(min(SENDERS, len(batches)), thread_name_prefix="remotejob-send") as pool:
            try:  # a Ctrl-C while handing the batches out, too, lets those in flight finish
                futures = []
                for batch in batches:
                    futures.append(pool.submit(send, batch))
                for future in futures:
                    future.result()
            except BaseException as exc:  # noqa: BLE001 - e.g. Ctrl-C while waiting: send no more
                with lock:
                    error = error or exc
        if error is not None:  # every send handed out has ended: the others were never tried
            tried = sent.keys() | failed.keys() | uncertain.keys()
            failed.update({i: "not sent" for i in range(len(jobs)) if i not in tried})
    if error is None:
        return [job.id for job in jobs]
    _forget(ctx, jobs, failed, batch_id, status, now)
    if not sent and not uncertain:
        raise error
    raise BatchPartlyFailed(
        f"{len(sent)} of {len(jobs)} jobs were submitted, {len(failed)} were not (and were removed "
        f"again), {len(uncertain)} may have been (their reply was lost: they stay runnable; check "
        f"them with status()): {error}",
        failed=failed, done=sent, uncertain=uncertain,
    ) from error


def _forget(
    ctx: Context, jobs: list[_Job], failed: Mapping[int, str], batch_id: str | None, status: str, now: float
) -> None:
    """Make the jobs known not to be sent look never submitted (best effort)."""
    unsent = [jobs[i] for i in sorted(failed)]
    try:
        missing = [job.index for job in unsent if job.index is not None]
        count = sum(job.index is not None for job in jobs)
        if batch_id is not None and missing:
            if len(missing) == count:
                records.delete_manifest(ctx.store, batch_id)
            else:
                records.write_manifest(ctx.store, batch_id, count, status, now, if_absent=False,
                                       missing=missing, meta=_generated_meta(jobs))
    except RemoteJobError as exc:
        logger.warning("could not update the manifest of the jobs that were not sent: %s", exc)
    _undo(ctx, unsent)


def _generated_meta(jobs: list[_Job]) -> list[Mapping[str, str]]:
    """The metadata of the generated jobs, in the order of their ids."""
    return [job.meta or {} for job in jobs if job.index is not None]


def _undo(ctx: Context, jobs: list[_Job]) -> None:
    """Remove the inputs and records these jobs' submission wrote."""
    for job in jobs:
        try:
            if job.stored:
                ctx.store.delete(keys.input_key(job.id))
            if job.recorded:
                records.forget_queued(ctx.store, job.id)
        except RemoteJobError as exc:
            logger.warning("could not remove what job %s's submission wrote: %s", job.id, exc)
