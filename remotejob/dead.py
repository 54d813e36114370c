"""The dead-letter queue ``<name>-dead``: listing what is there and sending it back.

Messages get there three ways: a worker moves a job after its last failed attempt (the job is
recorded ``failed``), a worker moves a message it cannot decode, and the queue's redrive policy
moves a message received ``max_attempts`` times without an outcome (a job that keeps killing
its worker). The first two are wrapped with their reason (see ``envelope.wrap_dead``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from . import completion, keys
from .backends.base import Message
from .envelope import DeadLetter, unwrap_dead
from .errors import EnvelopeError
from .signing import REASONS

REFUSED = (*REASONS, "notice-without-outcome")
"""Reasons a message was refused on arrival; such dead letters are never redriven."""

if TYPE_CHECKING:
    from .queue import Queue

logger = logging.getLogger(__name__)

HOLD_S = 60
"""How long listed dead letters stay invisible while a listing or redrive runs."""
POLL_S = 1
"""Long-poll wait per receive: a short poll may miss messages on SQS."""


def _drain(queue: Queue, limit: int | None) -> Iterator[Message]:
    """Receive every dead letter once (each stays invisible for HOLD_S), up to ``limit``."""
    queue._ensure_queues()
    name = keys.dead_letter_name(queue.name)
    taken = 0
    while limit is None or taken < limit:
        batch = min(10, limit - taken) if limit is not None else 10
        messages = queue.message_queue.receive(name, batch, POLL_S, HOLD_S)
        if not messages:
            return
        for message in messages:
            taken += 1
            yield message


def _release(queue: Queue, messages: list[Message]) -> None:
    name = keys.dead_letter_name(queue.name)
    for message in messages:
        queue.message_queue.change_visibility(name, message.receipt, 0)


def list_dead(queue: Queue, limit: int | None = None) -> list[DeadLetter]:
    """Every message in the dead-letter queue (up to ``limit``), left in place."""
    messages = list(_drain(queue, limit))
    _release(queue, messages)
    return [unwrap_dead(m.body, m.message_id, m.receive_count) for m in messages]


def redrive(queue: Queue, limit: int | None = None) -> int:
    """Send dead-lettered jobs back to the status queues they came from; return how many.

    A job recorded ``failed`` is reopened (its final record is removed) so it can run again.
    Messages that are not jobs of a configured status, and jobs already completed, stay.
    """
    kept: list[Message] = []
    moved = 0
    dead_name = keys.dead_letter_name(queue.name)
    for message in _drain(queue, limit):
        letter = unwrap_dead(message.body)
        if letter.job is None or letter.status not in queue.statuses:
            kept.append(message)
            continue
        if letter.reason.partition(":")[0] in REFUSED:
            kept.append(message)  # refused on arrival: a redrive must not launder it
            continue
        if queue.signing is not None:  # nor sign afresh what no configured key signed
            try:
                queue.signing.verify(letter.body, check_age=False)
            except EnvelopeError as exc:
                logger.warning("not redriving job %s: %s", letter.job, exc)
                kept.append(message)
                continue
        final = keys.record_key(letter.job, "final")
        record = completion.read_record(queue.object_store, final)
        if record is not None and record.get("state") == "completed":
            logger.info("not redriving job %s: it completed", letter.job)
            kept.append(message)
            continue
        if record is not None:
            queue.object_store.delete(final)
        queue._requeue(letter.job, letter.status or "", letter.body)
        queue.message_queue.delete(dead_name, message.receipt)
        moved += 1
    _release(queue, kept)
    return moved
