"""Submitting and triggering jobs with the fewest requests: batched sends (one SQS request per
ten jobs, or per 256 KiB of messages), small inputs inline in their messages, and one manifest
per submitted batch instead of a status record per job.

A submit generates its jobs' ids as ``<batch-id>-<n>`` and writes one manifest,
``batches/<batch-id>``, saying how many jobs it holds, so ``status()`` can tell a pending job
from an id that was never submitted without a record of its own. A job whose caller chose its
key (and every ``trigger()``) gets its own ``queued`` record instead, created once, so a job id
runs once either way.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import keys
from .backends.base import OutgoingMessage
from .bodies import BodyLike, Entry, parse_entry
from .envelope import Envelope, encode
from .errors import NotFound, RemoteJobError
from .limits import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .queue import Queue

logger = logging.getLogger(__name__)

BATCH = 10
"""SendMessageBatch's entry limit."""

INLINE_ENVELOPE_MAX = MAX_MESSAGE_BYTES - 16 * 1024
"""An input travels inline when its whole message is at most this size: the queues' maximum
message size less room to wrap the message for the dead-letter queue."""

_INLINE_BODY_MAX = INLINE_ENVELOPE_MAX * 3 // 4  # base64 makes 4 characters of every 3 bytes


@dataclass
class _Job:
    id: str
    message: str
    stored: bool = False
    """This submit wrote the job's input under ``in/`` (removed again if sending fails)."""
    batched: bool = False
    """The id is one of the batch's generated ids: the manifest, not a record, stands for it."""


def submit_many(queue: Queue, items: Iterable[Mapping[str, Any]], status: str) -> list[str]:
    """Store (or inline) every item's input, then trigger them all; see ``Queue.submit_many``."""
    name = queue._status_queue(status)
    entries = [parse_entry(item) for item in items]
    now = time.time()
    batch_id = keys.new_key()
    jobs: list[_Job] = []
    try:
        for entry in entries:
            jobs.append(_prepare(queue, entry, status, now, batch_id, sum(j.batched for j in jobs)))
    except BaseException:
        _undo(queue, jobs)
        raise
    return _send(queue, name, status, now, jobs, batch_id)


def trigger_many(queue: Queue, job_keys: Iterable[str], status: str) -> list[str]:
    """Trigger stored inputs in batches; see ``Queue.trigger_many``."""
    name = queue._status_queue(status)
    now = time.time()
    jobs = []
    for key in job_keys:
        try:
            info = queue.object_store.head(keys.input_key(key))
        except NotFound:
            raise NotFound(f"no input stored at in/{key}: store() it before triggering it") from None
        envelope = Envelope(job=key, key=key, status=status, sent=now, meta=info.metadata)
        jobs.append(_Job(key, queue._seal(encode(envelope))))
    return _send(queue, name, status, now, jobs, None)


def _prepare(queue: Queue, entry: Entry, status: str, now: float, batch_id: str, index: int) -> _Job:
    if entry.key is not None:  # the caller named it: stored under that key, with its own record
        key, stored = queue._store("in", entry)
        envelope = Envelope(job=key, key=key, status=status, sent=now, meta=entry.metadata,
                            sha256=stored.sha256)
        return _Job(key, queue._seal(encode(envelope)))
    job_id = keys.batch_job_id(batch_id, index)
    envelope = Envelope(job=job_id, key=job_id, status=status, sent=now, meta=entry.metadata)
    data = _small_body(entry.body)
    if data is not None:
        message = queue._seal(encode(replace(envelope, body=base64.b64encode(data).decode("ascii"))))
        if len(message.encode("utf-8")) <= INLINE_ENVELOPE_MAX:
            return _Job(job_id, message, batched=True)
    _, stored = queue._store("in", replace(entry, key=job_id))
    return _Job(job_id, queue._seal(encode(replace(envelope, sha256=stored.sha256))), stored=True,
                batched=True)


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


def _send(
    queue: Queue, name: str, status: str, now: float, jobs: list[_Job], batch_id: str | None
) -> list[str]:
    generated = sum(job.batched for job in jobs)
    recorded: list[tuple[str, str]] = []
    sent = 0
    try:
        if generated and batch_id is not None:
            _write_manifest(queue, batch_id, generated, status, now, if_absent=True)
        for job in jobs:
            if not job.batched:
                recorded.append((job.id, queue._create_queued(job.id, status, now)))
        while sent < len(jobs):
            batch: list[OutgoingMessage] = []
            size = 0
            for job in jobs[sent:sent + BATCH]:
                length = len(job.message.encode("utf-8"))
                if batch and size + length > MAX_MESSAGE_BYTES:
                    break
                batch.append(OutgoingMessage(job.message))
                size += length
            queue.message_queue.send_batch(name, batch)
            sent += len(batch)
    except BaseException:
        if sent:
            logger.warning("%d of %d jobs were submitted before the failure", sent, len(jobs))
        _forget(queue, jobs, sent, recorded, batch_id, status, now)
        raise
    return [job.id for job in jobs]


def _forget(
    queue: Queue, jobs: list[_Job], sent: int, recorded: list[tuple[str, str]], batch_id: str | None,
    status: str,
    now: float,
) -> None:
    """After a failed send, make the jobs not sent look never submitted (best effort)."""
    unsent = jobs[sent:]
    try:
        done = {job.id for job in jobs[:sent]}
        for job_id, record_key in recorded:
            if job_id not in done:
                queue.object_store.delete(record_key)
        if batch_id is not None and any(job.batched for job in unsent):
            kept = sum(job.batched for job in jobs[:sent])
            if kept:
                _write_manifest(queue, batch_id, kept, status, now, if_absent=False)
            else:
                queue.object_store.delete(keys.batch_key(batch_id))
    except RemoteJobError as exc:
        logger.warning("could not clear the records of the jobs that were not sent: %s", exc)
    _undo(queue, unsent)


def _write_manifest(
    queue: Queue, batch_id: str, count: int, status: str, now: float, *, if_absent: bool
) -> None:
    doc = {"v": 1, "batch": batch_id, "jobs": count, "state": "pending", "status": status,
           "created": now, "updated": now}
    queue.object_store.put(
        keys.batch_key(batch_id), json.dumps(doc, separators=(",", ":")).encode(),
        content_type="application/json", if_absent=if_absent,
    )


def _undo(queue: Queue, jobs: list[_Job]) -> None:
    """Remove the inputs these jobs' submission stored."""
    for job in jobs:
        if job.stored:
            queue.object_store.delete(keys.input_key(job.id))
