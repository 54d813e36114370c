"""The dead-letter queue ``<name>-dead``: listing what is there and sending it back.

Messages get there three ways: a worker moves a job after its last failed attempt (the job is
recorded ``failed``), a worker moves a message it refuses (undecodable, unsigned...), and the
queue's redrive policy moves a message received ``max_attempts`` times without an outcome (a job
that keeps killing its worker). The first two are wrapped with their reason (see
``envelope.wrap_dead``); the third is settled by whoever sees it first — an idle worker, a
listing, a redrive — which records the job failed and wraps it the same way
(``lifecycle.settle_dead_letter``). In legacy mode a 2014 package's message moved there by the
redrive policy is read as its job's envelope first (:func:`_legacy_letter`), so that it is
settled, and redriven, like ours.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from . import keys, legacy, lifecycle, records
from .backends.base import Message
from .context import Context
from .envelope import DeadLetter, decode, unwrap_dead, wrap_dead
from .errors import EnvelopeError, NotFound, RemoteJobError
from .signing import REASONS

REFUSED = (*REASONS, "notice-without-outcome")
"""Reasons a message was refused on arrival; such dead letters are never redriven."""

logger = logging.getLogger(__name__)

HOLD_S = 60
"""How long listed dead letters stay invisible while a listing or redrive runs."""
POLL_S = 1
"""Long-poll wait per receive: a short poll may miss messages on SQS."""


def _drain(ctx: Context, limit: int | None, repeats: list[Message]) -> Iterator[Message]:
    """Receive every dead letter once, up to ``limit``: a snapshot by message id that ends when a
    receive brings nothing new. A letter seen again (a listing longer than HOLD_S sees its first
    letters come back) is added to ``repeats``, for the caller to release with the rest."""
    ctx.ensure_queues()
    seen: set[str] = set()
    while limit is None or len(seen) < limit:
        batch = min(10, limit - len(seen)) if limit is not None else 10
        messages = ctx.queues.receive(ctx.dead_letters, batch, POLL_S, HOLD_S)
        fresh = [m for m in messages if m.message_id not in seen]
        repeats.extend(m for m in messages if m.message_id in seen)
        if not fresh:
            return
        for message in fresh:
            seen.add(message.message_id)
            yield _legacy_letter(ctx, message)


def _legacy_letter(ctx: Context, message: Message) -> Message:
    """In legacy mode, a 2014 package's message that its queue moved here by itself (every
    attempt of its job stopped its worker) as its job's envelope: the job id is the message id,
    which SQS keeps when it moves a message; the status is the one its last attempt recorded."""
    if ctx.legacy_bucket is None or (doc := legacy.parse(message.body)) is None:
        return message
    status = (records.read_progress(ctx.store, message.message_id) or {}).get("status")
    try:
        return legacy.translate(doc, message, status if status in ctx.statuses else ctx.statuses[0],
                                ctx.legacy_bucket)
    except EnvelopeError:
        return message  # listed as it is: no job of ours


def _release(ctx: Context, messages: list[Message]) -> None:
    for start in range(0, len(messages), 10):
        try:
            ctx.queues.change_visibility_batch(
                ctx.dead_letters, [(m.receipt, 0) for m in messages[start:start + 10]]
            )
        except RemoteJobError as exc:
            logger.warning("could not make listed dead letters visible again: %s", exc)


def _settle(ctx: Context, message: Message) -> str | None:
    """Settle a job the queue moved here by itself and replace its message with one wrapped with
    the reason, as remotejob's own dead letters are; return the wrapped text (None: nothing to
    settle, the message stays as it is)."""
    settled = lifecycle.settle_dead_letter(ctx, message)
    if settled is None:
        return None
    wrapped = wrap_dead(message.body, *settled)
    ctx.queues.send(ctx.dead_letters, wrapped)
    ctx.queues.delete(ctx.dead_letters, message.receipt)
    return wrapped


def list_dead(ctx: Context, limit: int | None = None) -> list[DeadLetter]:
    """Every message in the dead-letter queue (up to ``limit``), left in place."""
    letters: list[DeadLetter] = []
    kept: list[Message] = []
    replaced: set[str] = set()
    for message in _drain(ctx, limit, kept):
        wrapped = _settle(ctx, message)
        if wrapped is None:
            kept.append(message)
            if message.body in replaced:
                continue  # the copy this listing put in place of a letter it listed already
        else:
            replaced.add(wrapped)
        letters.append(unwrap_dead(wrapped or message.body, message.message_id, message.receive_count))
    _release(ctx, kept)
    return letters


def sweep(ctx: Context) -> int:
    """One look at up to ten dead letters (no wait), settling jobs the queue moved there by
    itself; return how many were settled. Idle workers call this now and then."""
    ctx.ensure_queues()
    messages = [_legacy_letter(ctx, m) for m in ctx.queues.receive(ctx.dead_letters, 10, 0, HOLD_S)]
    kept = [message for message in messages if _settle(ctx, message) is None]
    _release(ctx, kept)
    return len(messages) - len(kept)


def redrive(ctx: Context, limit: int | None = None, jobs: frozenset[str] | None = None) -> int:
    """Send dead-lettered jobs back to the status queues they came from; return how many.

    A job recorded ``failed`` is reopened (its final and progress records are removed) so it can
    run again. Messages that are not jobs of a configured status and jobs already completed or
    cancelled stay; a second dead letter of a job this redrive sent back is removed. With
    ``jobs``, every other dead letter stays.
    """
    kept: list[Message] = []
    moved: set[str] = set()
    for message in _drain(ctx, limit, kept):
        settled = lifecycle.settle_dead_letter(ctx, message)  # recorded failed: reopened below
        letter = unwrap_dead(message.body if settled is None else wrap_dead(message.body, *settled))
        if letter.job is not None and letter.job in moved:
            ctx.queues.delete(ctx.dead_letters, message.receipt)  # a second copy of one sent back
            continue
        if _send_back_legacy(ctx, letter):
            ctx.queues.delete(ctx.dead_letters, message.receipt)
            moved.add(message.message_id)
            continue
        if letter.job is None or letter.status not in ctx.statuses:
            kept.append(message)
            continue
        if jobs is not None and letter.job not in jobs:
            kept.append(message)
            continue
        if letter.reason.partition(":")[0] in REFUSED:
            kept.append(message)  # refused on arrival: a redrive must not launder it
            continue
        if ctx.signing is not None:  # nor sign afresh what no configured key signed
            try:
                ctx.signing.verify(letter.body, check_age=False)
            except EnvelopeError as exc:
                logger.warning("not redriving job %s: %s", letter.job, exc)
                kept.append(message)
                continue
        if _superseded(ctx, letter.job, letter.body):
            logger.info("removing a dead letter of job %s: retry() ran the job again since", letter.job)
            ctx.queues.delete(ctx.dead_letters, message.receipt)
            continue
        record = records.read(ctx.store, keys.record_key(letter.job, "final"))
        if record is not None and record.get("state") in ("completed", "cancelled"):
            logger.info("not redriving job %s: it was %s", letter.job, record.get("state"))
            kept.append(message)
            continue
        lifecycle.reopen(ctx, letter.job, letter.status or "", letter.body)
        ctx.queues.delete(ctx.dead_letters, message.receipt)
        moved.add(letter.job)
    _release(ctx, kept)
    return len(moved)


def _send_back_legacy(ctx: Context, letter: DeadLetter) -> bool:
    """In legacy mode, send a 2014 package's message that a worker without legacy mode refused
    back to its queue as it was; return whether it was one."""
    if (ctx.legacy_bucket is None or letter.job is not None or letter.source is None
            or not letter.reason.startswith("legacy-message:") or legacy.parse(letter.body) is None
            or letter.source not in ctx.queue_names()):
        return False
    ctx.queues.send(letter.source, letter.body)
    return True


def _superseded(ctx: Context, job_id: str, body: str) -> bool:
    """The dead letter is of an earlier run of a job that ``retry()`` sent again."""
    try:
        run = decode(body).retry
        return records.status(ctx.store, ctx.name, job_id).run > run
    except (EnvelopeError, NotFound):
        return False
