"""Submitting and triggering many jobs with batched sends: one SQS request per ten jobs
(or per 256 KiB of messages), instead of one per job."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from . import keys
from .backends.base import OutgoingMessage
from .bodies import Entry, parse_entry
from .envelope import Envelope, encode
from .errors import NotFound
from .limits import MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from .queue import Queue

logger = logging.getLogger(__name__)

BATCH = 10
"""SendMessageBatch's entry limit."""


def submit_many(queue: Queue, items: Iterable[Mapping[str, Any]], status: str) -> list[str]:
    """Store every item's input, then trigger them all in batches; see ``Queue.submit_many``."""
    name = queue._status_queue(status)
    entries: list[Entry] = [parse_entry(item) for item in items]
    jobs: list[tuple[str, dict[str, str], bool]] = []
    try:
        for entry in entries:
            jobs.append((queue._store_entry("in", entry), entry.metadata, entry.key is None))
    except BaseException:
        _undo(queue, jobs)
        raise
    return _send(queue, name, status, jobs)


def trigger_many(queue: Queue, job_keys: Iterable[str], status: str) -> list[str]:
    """Trigger stored inputs in batches; see ``Queue.trigger_many``."""
    name = queue._status_queue(status)
    jobs = []
    for key in job_keys:
        try:
            info = queue.object_store.head(keys.input_key(key))
        except NotFound:
            raise NotFound(f"no input stored at in/{key}: store() it before triggering it") from None
        jobs.append((key, info.metadata, False))
    return _send(queue, name, status, jobs)


def _send(queue: Queue, name: str, status: str, jobs: list[tuple[str, dict[str, str], bool]]) -> list[str]:
    now = time.time()
    bodies = [encode(Envelope(job=key, key=key, status=status, sent=now, meta=dict(meta)))
              for key, meta, _ in jobs]
    recorded = 0
    sent = 0
    try:
        for key, _, _ in jobs:
            queue._create_queued(key, status, now)
            recorded += 1
        while sent < len(jobs):
            batch: list[OutgoingMessage] = []
            size = 0
            for body in bodies[sent:sent + BATCH]:
                length = len(body.encode("utf-8"))
                if batch and size + length > MAX_MESSAGE_BYTES:
                    break
                batch.append(OutgoingMessage(body))
                size += length
            queue.message_queue.send_batch(name, batch)
            sent += len(batch)
    except BaseException:
        if sent:
            logger.warning("%d of %d jobs were submitted before the failure", sent, len(jobs))
        unsent = jobs[sent:]
        for key, _, _ in unsent[: recorded - sent]:
            queue.object_store.delete(keys.record_key(key, "queued"))
        _undo(queue, unsent)
        raise
    return [key for key, _, _ in jobs]


def _undo(queue: Queue, jobs: list[tuple[str, dict[str, str], bool]]) -> None:
    """Remove the inputs these jobs' submission generated."""
    for key, _, generated in jobs:
        if generated:
            queue.object_store.delete(keys.input_key(key))
