"""The life of one job delivery, in one place: begin -> stage -> claim -> publish -> consequences
(notice, hand-on, dead letter) -> acknowledge; finishing a crashed winner's work from its record;
retrying; settling a job the queue dead-lettered by itself.

Several attempts of one job can run at once (a worker that stalled past its visibility timeout, a
duplicate delivery); exactly one outcome may stand and no published output may be overwritten.
So an attempt:

1. **stages** its assets where no other attempt writes: small ones inside its record, larger ones
   under ``jobs/<id>/attempts/<status>/<attempt>/`` (per stage, so that finishing one stage never
   sweeps another stage's staging);
2. **claims** the outcome with a create-once write of its record (``final``, or
   ``handoff-<status>`` for a pipeline stage that hands the job on). The first claim wins; a claim
   whose reply was lost reads the record back and knows it by its attempt id;
3. **publishes**, if it won, its assets to ``out/<id>/<asset>`` and marks the record published
   (until then ``status()`` says ``inprogress``). A staged asset that vanished is never published
   as if it were there: the job is recorded failed, saying so;
4. delivers the **consequences**: the next stage's message (built from the record alone, so a
   repeat sends the same message, and each later stage runs once per job: see
   :func:`begin`), the completion notice, the dead letter;
5. **acknowledges**: deletes the delivery (through the worker's outbox, after the notice).

Whoever finds a record whose consequences may be undone (its message came back) finishes them from
the record (:func:`finish_if_done`), never by running the handler again.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import keys, records, signing, tracing
from .backends.base import Message
from .bodies import Entry, open_body
from .context import Context
from .envelope import Envelope, decode, encode, unwrap_dead, wrap_dead
from .errors import AlreadyExists, EnvelopeError, InvalidReceipt, NotFound
from .limits import MAX_MESSAGE_BYTES
from .outbox import Finished, Outbox
from .status import JobStatus, error_text, worker_id

if TYPE_CHECKING:
    from .metrics import Observer

logger = logging.getLogger(__name__)

INLINE_MAX = 64 * 1024
"""Total bytes of an attempt's assets that travel inside its record instead of being staged."""
ERROR_MAX = 16 * 1024
"""Characters of an error kept in a record; a notice carries at most :data:`NOTICE_ERROR_MAX`."""
NOTICE_ERROR_MAX = 4 * 1024
NOTICE_MAX = 64 * 1024
"""Bytes a completion notice may take; past it, it leaves its outputs to the record (``partial``)."""
TRACEBACK_MAX = 16 * 1024
"""Bytes of a failed attempt's traceback kept in its record (the last ones)."""
EARLY_WAIT_S = 1.0
"""A delivery seen at most this long before its job is due waits until then (message delays are
whole seconds, so a delayed job's message arrives up to a second early: a worker holds it off
its handler threads until then, ``Queue.next()`` waits); one seen earlier is given back until
then."""
EARLY_HOLD_MAX_S = 12 * 3600 - 120
"""The longest a delivery seen before its job is due is given back for (within the 12-hour cap)."""
MESSAGE_ROOM = MAX_MESSAGE_BYTES - 16 * 1024
"""Bytes a hand-on message may take: room is left to wrap it for the dead-letter queue."""


@dataclass(eq=False)
class Delivery:
    """One delivery of a job's message, and how far its life has got."""

    ctx: Context
    envelope: Envelope
    message: Message
    outbox: Outbox | None = None
    owner: object = None
    """What the outbox hands back once it has deleted the delivery (the worker's job)."""
    attempt_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.time)
    received: float = field(default_factory=time.monotonic)
    worker: str = field(default_factory=worker_id)
    finished: bool = False
    acknowledged: bool = False
    """The delivery was deleted, or handed to the outbox to delete."""
    in_outbox: bool = False
    """It was handed to the outbox, which hands ``owner`` back once it deleted it."""
    released: bool = False
    """It was given back to its queue (a retry, a stop): its records are no longer its to write."""
    progress_recorded: bool = False
    progress: dict[str, Any] | None = None
    """The latest ``job.progress()``: done, total, message, updated."""
    progress_written: float = -math.inf
    """When (monotonic) the ``progress`` record was last written."""
    progress_dirty: bool = False
    """``progress`` changed since the record was written (coalesced: see :func:`report_progress`)."""
    stop_reason: str | None = None
    """Why the handler should stop: ``cancelled`` or ``time-limit`` (see :func:`request_stop`)."""
    stop_at: float = 0.0
    """When (monotonic) the stop was first requested."""
    default_limit: float | None = None
    """The worker's time limit for jobs submitted without one."""
    cap: float | None = None
    """The most this attempt may run, whatever its time limit: the time an event source (an AWS
    Lambda invocation) left it when it started."""
    observer: Observer | None = None
    """Who counts outcomes (the worker's metrics), if anyone."""
    input_size: int | None = None
    """Bytes of the job's input, once its handler opened it (or inline in the message)."""
    source: str | None = None
    """The queue the message was received from (a status's, or one of its priority levels');
    None: the queue its envelope names."""
    on_stop: Callable[[str], None] | None = None
    """Called (on the watch's thread) with the reason each time :func:`request_stop` sets one: an
    async handler's task is cancelled from here."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def id(self) -> str:
        return self.envelope.job

    @property
    def status(self) -> str:
        return self.envelope.status

    @property
    def receive_count(self) -> int:
        return self.message.receive_count

    @property
    def created(self) -> float:
        return self.envelope.sent

    @property
    def known_input_size(self) -> int | None:
        """Bytes of the job's input: as read, or as the message carries it; None if not known."""
        if self.input_size is None and self.envelope.body is not None:
            self.input_size = len(self.envelope.inline_body() or b"")
        return self.input_size

    @property
    def queue(self) -> str:
        """The queue this delivery came from: the status's, or its priority level's."""
        if self.source is not None:
            return self.source
        return keys.queue_name(self.ctx.name, self.status, self.envelope.priority)

    @property
    def last_allowed(self) -> bool:
        """This is the job's last delivery before the queue dead-letters it."""
        return self.receive_count >= self.ctx.max_attempts

    @property
    def time_limit(self) -> float | None:
        """The job's time limit in seconds: its own (given at submit), else the worker's, at most
        the :attr:`cap`; or None."""
        limit = self.envelope.limit if self.envelope.limit is not None else self.default_limit
        if self.cap is None:
            return limit
        return self.cap if limit is None else min(limit, self.cap)


# -- before the handler --------------------------------------------------------------------------


def begin(d: Delivery) -> bool:
    """Decide whether this delivery runs its handler: False when its stage is finished already
    (the leftovers are finished and the delivery dropped), when it is a second copy of a
    hand-on or of a parked job's message whose stage another message runs (dropped), or when
    it came before the job is due (given back until then)."""
    ctx = d.ctx
    early = 0.0 if d.envelope.due is None else d.envelope.due - time.time()
    if 0 < early <= EARLY_WAIT_S:  # message delays are whole seconds: wait out the fraction
        time.sleep(early)
    elif early > 0:  # a clock jump, or a queue that did not hold it long enough: back until due
        logger.info("job %s is due in %.1f s; gave it back until then", d.id, early)
        release(d, min(math.ceil(early), EARLY_HOLD_MAX_S))
        return False
    copies = d.envelope.after is not None or d.envelope.once
    if copies and not records.claim_start(
        ctx.store, d.id, d.status, d.message.message_id
    ):  # first: only the copy that owns the stage may finish its leftovers
        logger.info("job %s: stage %s runs from another copy of its message; dropped this one",
                    d.id, d.status)
        d.finished = True
        _acknowledge(d, notice=None)
        return False
    cancelled = False
    if (d.receive_count > 1 or ctx.signing is not None or d.envelope.once
            or (cancelled := ctx.cancellations.cancelled(d.id, d.envelope.retry))) and finish_if_done(d):
        if cancelled:
            logger.info("job %s was cancelled; dropped its delivery without running it", d.id)
            if d.observer is not None:
                d.observer.outcome(d.status, "cancelled")
            return False
        if d.receive_count == 1 and not d.envelope.once:  # a once job's copies are expected
            ctx.count_rejected("replayed")
        logger.info("job %s was already finished; dropped its redelivery", d.id)
        return False
    if d.last_allowed:  # so that a job that kills its worker can tell which worker it was
        record_progress(d)
    return True


def take(ctx: Context, queue: str, message: Message) -> Delivery | None:
    """A message received by a ``next()`` caller (no worker, so no heartbeat): the delivery to
    hand over, begun and its progress recorded; a completion notice (checked against the job's
    record when messages are signed); or None for a message to skip (refused, finished, not
    yet due)."""
    opened = ctx.open(queue, message)
    if opened is None:
        return None
    envelope, message = opened
    d = Delivery(ctx, envelope, message)
    if envelope.kind == "notice":
        return d if _notice_is_true(ctx, envelope, message) else None
    if not begin(d):
        return None
    record_progress(d)
    return d


def _notice_is_true(ctx: Context, notice: Envelope, message: Message) -> bool:
    """With signing keys, a completion notice must match the job's final record."""
    if ctx.signing is None:
        return True
    record = records.read(ctx.store, keys.record_key(notice.job, "final"))
    if record is not None and record.get("state") == notice.state:
        return True
    ctx.reject(keys.queue_name(ctx.name, notice.status), message, "notice-without-outcome",
               f"job {notice.job!r} has no {notice.state} outcome recorded")
    return False


def record_progress(d: Delivery) -> None:
    """Write the delivery's ``progress`` record if it has none yet or its handler reported
    progress since (never after its outcome, nor after it was given back)."""
    with d.lock:
        if not d.finished and not d.released and (not d.progress_recorded or d.progress_dirty):
            records.write_progress(d.ctx.store, d.id, d.status, d.created, d.started, d.worker,
                                   d.receive_count, d.progress, d.envelope.retry, d.envelope.meta,
                                   d.known_input_size)
            d.progress_recorded = True
            d.progress_dirty = False
            d.progress_written = time.monotonic()


PROGRESS_EVERY_S = 3.0
"""The least time between two writes of a job's progress record; reports in between are
coalesced (the worker writes the latest once due, and the outcome records the last)."""


def report_progress(d: Delivery, done: float, total: float | None, message: str | None) -> None:
    """Note how far the handler has got; write it now if the last write is old enough, else
    leave it to :func:`flush_progress` (the worker's watch) or the outcome."""
    with d.lock:
        d.progress = {"done": done, "total": total, "message": message, "updated": time.time()}
        d.progress_dirty = True
        due = time.monotonic() - d.progress_written >= PROGRESS_EVERY_S
    if due:
        record_progress(d)


def flush_progress(d: Delivery) -> float | None:
    """Write coalesced progress once it is due; return when (monotonic) the next write would
    be due, or None if nothing waits."""
    if not d.progress_dirty:
        return None
    due_at = d.progress_written + PROGRESS_EVERY_S
    if time.monotonic() < due_at:
        return due_at
    record_progress(d)
    return None


def request_stop(d: Delivery, reason: str) -> bool:
    """Ask the delivery's handler to stop (``cancelled`` or ``time-limit``); True the first time.
    A cancel overrides a time limit: the job's outcome is the cancel's."""
    with d.lock:
        first = d.stop_reason is None
        changed = first or (reason == "cancelled" and d.stop_reason != reason)
        if changed:
            d.stop_reason = reason
        if first:
            d.stop_at = time.monotonic()
    if changed and d.on_stop is not None:
        d.on_stop(reason)
    return first


# -- the outcome ---------------------------------------------------------------------------------


@tracing.settles
def finish(
    d: Delivery,
    error: BaseException | str | None,
    entries: Sequence[Entry],
    next_status: str | None = None,
    next_input: str | None = None,
    dead_reason: str | None = None,
) -> JobStatus:
    """Stage, claim, publish, deliver the consequences and acknowledge; see the module docstring.

    Raises:
        AlreadyExists: another attempt's outcome stands (its leftovers were finished).
    """
    store = d.ctx.store
    outputs = _stage(d, entries)
    now = time.time()
    record: dict[str, Any] = {
        "job": d.id,
        "state": "failed" if error is not None else "completed",
        "status": d.status,
        "created": d.created,
        "updated": now,
        "started": d.started,
        "error": None if error is None else error_text(error)[:ERROR_MAX],
        "outputs": {**_earlier_outputs(d), **outputs},
        "worker": d.worker,
        "attempt": d.receive_count,
        "attempt_id": d.attempt_id,
        "published": not any(doc.get("staged") or "inline" in doc for doc in outputs.values()),
    }
    if d.progress is not None:
        record["progress"] = d.progress
    if d.envelope.retry:
        record["retry"] = d.envelope.retry
    if d.envelope.meta:
        record["meta"] = d.envelope.meta
    if d.envelope.legacy:  # a 2014 job: its outputs are published at the bucket's root too
        record["legacy"] = True
    if d.known_input_size is not None:
        record["input_size"] = d.input_size
    if error is not None:  # so that retry() can send it again
        record["envelope"] = d.message.body
    if isinstance(error, BaseException) and error.__traceback__ is not None:
        record["traceback"] = traceback_text(error)
    if next_status is not None:
        source = d.envelope.input if next_input is None else keys.output_key(d.id, next_input)
        record.update(state="handed", next=next_status, input=source)
    if dead_reason is not None:
        record["dead"] = dead_reason
    key = _outcome_key(d.id, d.status, next_status is not None)
    winner = records.claim(store, key, record)
    with d.lock:
        d.finished = True
    if winner is not None:
        _discard(d, outputs)
        _settle(d, key, winner, redelivered=False)
        raise AlreadyExists(
            f"job {d.id!r} was already finished by another attempt ({winner.get('state')}); its record stands"
        )
    record = _publish(d, key, record, sweep=d.receive_count > 1, check=False)
    _consequences(d, record)
    if d.observer is not None:
        d.observer.outcome(d.status, "failed" if record.get("state") == "failed" else "succeeded")
    if record.get("next") is not None:
        return JobStatus(d.id, "pending", str(record["next"]), d.created, now)
    return records.decode_status(d.id, records.encode(record))


def traceback_text(error: BaseException) -> str:
    """An exception's formatted traceback as a record keeps it: its last :data:`TRACEBACK_MAX`
    bytes (the innermost frames and the error), saying so when the start was cut."""
    text = "".join(traceback.format_exception(error)).encode("utf-8", "backslashreplace")
    if len(text) <= TRACEBACK_MAX:
        return text.decode("utf-8")
    cut = len(text) - TRACEBACK_MAX
    tail = text[cut:].decode("utf-8", "ignore")
    return f"[the first {cut} bytes of this traceback were cut]\n{tail}"


def finish_if_done(d: Delivery) -> bool:
    """If this delivery's stage has an outcome already, finish what its winner may have left
    undone (publishing, the next stage, the notice), drop this delivery and return True."""
    store = d.ctx.store
    key = keys.record_key(d.id, "final")
    record = records.read(store, key)
    if record is None:
        key = keys.handoff_key(d.id, d.status)
        record = records.read(store, key)
    if record is None:
        return False
    with d.lock:
        d.finished = True
    if record.get("status") != d.status:  # a later stage finished the whole job
        _acknowledge(d, notice=None)
        return True
    _settle(d, key, record, redelivered=True)
    return True


def _settle(d: Delivery, key: str, record: dict[str, Any], *, redelivered: bool) -> None:
    """Finish a recorded outcome's leftovers from its record, then drop this delivery.

    A redelivery means the winner died before deleting its message, maybe before its notice or
    hand-on: those are repeated (a notice may then come twice; a hand-on's copies run once). A
    losing duplicate of a living winner acts only if it had to finish publishing."""
    if record.get("state") == "cancelled":  # nobody has told of it yet: every dropper does
        records.keep_envelope(d.ctx.store, d.id, record, d.message.body, d.progress)
        _consequences(d, record)
        return
    was_published = record.get("published") is not False
    record = _publish(d, key, record, sweep=True, check=True)
    nxt = record.get("next")
    if not (redelivered or not was_published) or (
        nxt is not None and records.read(d.ctx.store, keys.start_key(d.id, str(nxt))) is not None
    ):
        _acknowledge(d, notice=None)
        return
    _consequences(d, record)


def _outcome_key(job_id: str, status: str, handed: bool) -> str:
    return keys.handoff_key(job_id, status) if handed else keys.record_key(job_id, "final")


def _earlier_outputs(d: Delivery) -> dict[str, Any]:
    """The outputs earlier pipeline stages published (from the handing stage's record when
    they did not fit in the message)."""
    envelope = d.envelope
    if envelope.partial and envelope.after is not None:
        handed = records.read(d.ctx.store, keys.handoff_key(d.id, envelope.after))
        if handed is not None:
            return public_outputs(handed.get("outputs") or {})
    return dict(envelope.outputs)


def _stage(d: Delivery, entries: Sequence[Entry]) -> dict[str, Any]:
    """Put the attempt's assets where only it writes; return the record's ``outputs``."""
    outputs: dict[str, Any] = {}
    budget = INLINE_MAX
    for entry in entries:
        name = str(entry.key)
        with open_body(entry.body, f"asset {name!r}") as prepared:
            doc: dict[str, Any] = {"content_type": entry.content_type, "meta": entry.metadata,
                                   "stage": d.status}
            if isinstance(prepared.body, bytes) and len(prepared.body) <= budget:
                budget -= len(prepared.body)
                doc["inline"] = base64.b64encode(prepared.body).decode("ascii")
            else:
                d.ctx.store.put(keys.staging_key(d.id, d.status, d.attempt_id, name), prepared.body,
                                entry.metadata, entry.content_type)
                doc["staged"] = True
            doc["size"], doc["sha256"] = prepared.size, prepared.sha256
        outputs[name] = doc
    return outputs


def _discard(d: Delivery, outputs: Mapping[str, Any]) -> None:
    for name, doc in outputs.items():
        if doc.get("staged"):
            d.ctx.store.delete(keys.staging_key(d.id, d.status, d.attempt_id, name))


def _publish(d: Delivery, key: str, record: dict[str, Any], *, sweep: bool, check: bool) -> dict[str, Any]:
    """Write the record's own outputs to ``out/<id>/`` (a 2014 job's also to the bucket's root,
    ``<id>-<asset>``), remove the stage's staging, and mark the
    record published; return the record as it now stands. With ``check`` (finishing another
    attempt's record) outputs already published are left alone.

    A staged output that is gone and not published fails the job instead (never a completed job
    whose outputs cannot be read)."""
    store, status = d.ctx.store, str(record.get("status"))
    attempt = str(record.get("attempt_id", ""))
    if record.get("published") is not False:
        if sweep:
            _sweep(d, keys.staging_prefix(d.id, status))
        return record
    lost: list[str] = []
    for name, doc in dict(record.get("outputs") or {}).items():
        if doc.get("stage") not in (None, status):
            continue  # an earlier stage's output, published by that stage
        targets = [keys.output_key(d.id, name)]
        if record.get("legacy"):
            targets.append(keys.legacy_output_key(d.id, name))
        for target in targets:
            if check and _exists(store, target):
                continue
            if "inline" in doc:
                store.put(target, base64.b64decode(doc["inline"]), doc.get("meta") or {}, doc["content_type"])
                continue
            try:
                store.copy(keys.staging_key(d.id, status, attempt, name), target)
            except NotFound:
                if not _exists(store, target):  # else another finisher published it meanwhile
                    lost.append(name)
                    break
    if sweep:  # a redelivery: what killed attempts of this stage left too
        _sweep(d, keys.staging_prefix(d.id, status))
    else:  # the winner's own (earlier stages' outputs carry no "staged")
        _discard(d, record.get("outputs") or {})
    if lost:
        return _fail_lost(d, key, record, lost)
    return records.mark_published(store, key, record)


def _sweep(d: Delivery, prefix: str) -> None:
    for left in d.ctx.store.list(prefix):
        d.ctx.store.delete(left.key)


def _fail_lost(d: Delivery, key: str, record: dict[str, Any], lost: list[str]) -> dict[str, Any]:
    logger.error("job %s: staged outputs %s are gone; the job is recorded failed", d.id, lost)
    error = (f"outputs {', '.join(map(repr, lost))} of the winning attempt were removed from the "
             "store before they were published; run the job again (redrive or resubmit)")
    kept = {n: o for n, o in (record.get("outputs") or {}).items() if n not in lost}
    failed = {**record, "state": "failed", "error": error, "outputs": kept, "published": True,
              "next": None, "updated": time.time(), "envelope": d.message.body}
    store = d.ctx.store
    final = keys.record_key(d.id, "final")
    if key == final:
        records.rewrite(store, final, failed)
        return failed
    winner = records.claim(store, final, failed)
    records.rewrite(store, key, {**record, "published": True, "lost": lost})
    return failed if winner is None else winner


def _exists(store: Any, key: str) -> bool:
    try:
        store.head(key)
    except NotFound:
        return False
    return True


def public_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs as readers (and the next pipeline stage) see them."""
    return {
        name: {k: doc[k] for k in ("size", "sha256", "content_type", "stage") if k in doc}
        for name, doc in outputs.items()
    }


# -- consequences ---------------------------------------------------------------------------------


def _consequences(d: Delivery, record: Mapping[str, Any]) -> None:
    """Hand on or notify, dead-letter a failed job's message, then acknowledge the delivery."""
    ctx = d.ctx
    nxt = record.get("next")
    notice = None
    if nxt is not None:
        hand_on(ctx, d.envelope, str(nxt), record)
    else:
        notice = notice_for(ctx, d.envelope, record)
    if record.get("dead"):
        ctx.queues.send(ctx.dead_letters, wrap_dead(d.message.body, d.queue, str(record["dead"])))
    _acknowledge(d, notice)


def hand_on(ctx: Context, envelope: Envelope, status: str, record: Mapping[str, Any]) -> None:
    """Send the job on to the stage ``status``: the same record always makes the same message."""
    records.write_queued(ctx.store, envelope.job, status, float(record["created"]), float(record["updated"]),
                         meta=envelope.meta, priority=envelope.priority)
    queue = ctx.status_queue(status, envelope.priority)  # the job keeps its priority
    with tracing.send(ctx, queue, envelope.job):  # the next stage's process span is its child
        ctx.queues.send(queue, ctx.seal(encode(next_stage(envelope, status, record, tracing.carrier()))))


def next_stage(
    envelope: Envelope, status: str, record: Mapping[str, Any], trace: dict[str, str] | None = None
) -> Envelope:
    """The envelope that hands a job on to ``status`` after the stage that wrote ``record``
    (``trace``: the trace context of the span that sends it)."""
    source = record.get("input")
    outputs = public_outputs(record.get("outputs") or {})
    handed = Envelope(
        job=envelope.job, key=envelope.key, status=status, sent=float(record["created"]),
        meta=envelope.meta, input=None if source is None else str(source), outputs=outputs,
        body=envelope.body if source is None else None, after=str(record["status"]),
        limit=envelope.limit, retry=envelope.retry, trace=trace, priority=envelope.priority,
        legacy=envelope.legacy,
    )
    if len(encode(handed).encode("utf-8")) <= MESSAGE_ROOM:
        return handed
    asset = None if source is None else str(source).removeprefix(keys.output_prefix(envelope.job))
    kept = {asset: outputs[asset]} if asset in outputs else {}
    return replace(handed, outputs=kept, partial=True)


def notice_for(ctx: Context, envelope: Envelope, record: Mapping[str, Any]) -> tuple[str, str] | None:
    """The completion notice of a finished job, ``(queue, body)``; None without a ``completed``
    status (or for a job that ran in it)."""
    if "completed" not in ctx.statuses or envelope.status == "completed":
        return None
    error = record.get("error")
    notice = Envelope(
        job=envelope.job, key=envelope.key, status="completed", sent=time.time(), meta=envelope.meta,
        kind="notice", state=str(record["state"]),
        error=None if error is None else str(error)[:NOTICE_ERROR_MAX],
        outputs=public_outputs(record.get("outputs") or {}),
    )
    text = encode(notice)
    if len(text.encode("utf-8")) > NOTICE_MAX:  # the record lists them all
        text = encode(replace(notice, outputs={}, partial=True))
    return ctx.status_queue("completed"), ctx.seal(text)


def _acknowledge(d: Delivery, notice: tuple[str, str] | None) -> None:
    """Send the notice, then delete the delivery (both through the worker's outbox if any)."""
    if d.acknowledged:
        return
    d.acknowledged = True
    if d.outbox is not None:
        to, body = notice if notice is not None else (None, None)
        d.in_outbox = True
        d.outbox.put(Finished(d.queue, d.message.receipt, to, body, owner=d.owner))
        return
    if notice is not None:
        d.ctx.queues.send(*notice)
    try:
        d.ctx.queues.delete(d.queue, d.message.receipt)
    except (InvalidReceipt, NotFound):
        logger.info("job %s: this delivery was already gone", d.id)


def acknowledge(d: Delivery) -> None:
    """Delete the delivery now (the seed's at-most-once ``Job.acknowledge()``)."""
    d.ctx.queues.delete(d.queue, d.message.receipt)
    d.acknowledged = True


# -- retries and releases ------------------------------------------------------------------------


def release(d: Delivery, delay_s: int = 0) -> None:
    """Give the delivery back, visible again after ``delay_s`` seconds: a retry, or a worker
    letting go. Its ``progress`` record goes, so the job does not look taken while it waits."""
    with d.lock:
        d.released = True
    if d.progress_recorded:
        try:
            records.clear_progress(d.ctx.store, d.id)
            d.progress_recorded = False
        except Exception as exc:  # noqa: BLE001 - the release matters more than the record
            logger.warning("job %s: could not clear its progress record: %s", d.id, exc)
    try:
        d.ctx.queues.change_visibility(d.queue, d.message.receipt, delay_s)
    except (InvalidReceipt, NotFound):
        logger.info("job %s: the delivery was already gone when released", d.id)


def reopen(ctx: Context, job_id: str, status: str, body: str) -> None:
    """Send a dead-lettered job back to ``status`` (its priority level's queue) to run again (a
    redrive): its outcome and progress are removed and its stage may be started by the new message."""
    records.reopen(ctx.store, job_id)
    records.forget_start(ctx.store, job_id, status)
    sent = decode(body)
    records.write_queued(ctx.store, job_id, status, sent.sent, time.time(), meta=sent.meta,
                         priority=sent.priority)
    ctx.queues.send(ctx.status_queue(status, sent.priority), ctx.seal(signing.strip(body)))


# -- jobs the queue dead-lettered by itself --------------------------------------------------------


def settle_dead_letter(ctx: Context, message: Message) -> tuple[str, str] | None:
    """Record the outcome of a job its queue moved to the dead-letter queue by itself (it was
    delivered ``max_attempts`` times and no attempt recorded an outcome: the worker stopped
    during every one): failed, with a notice like any failed job.

    Returns ``(source queue, reason)`` for such a message (the caller wraps it with the reason,
    as remotejob's own dead letters are, or redrives it), None for any other dead letter."""
    letter = unwrap_dead(message.body, message.message_id, message.receive_count)
    if letter.source is not None or letter.job is None or letter.status not in ctx.statuses:
        return None  # wrapped by remotejob already (settled, refused or failed), or not a job
    try:
        if ctx.signing is not None:
            ctx.signing.verify(letter.body, check_age=False)
        envelope = decode(letter.body)
    except EnvelopeError:
        return None
    if envelope.kind != "job":
        return None
    source = keys.queue_name(ctx.name, envelope.status, envelope.priority)
    store = ctx.store
    final = records.read(store, keys.record_key(envelope.job, "final"))
    if final is not None:  # recorded already (by another who saw it, or the job finished)
        if final.get("state") == "cancelled":  # so that it can be retried
            records.keep_envelope(store, envelope.job, final, letter.body)
        return source, str(final.get("dead") or final.get("error") or "dead-lettered by its queue")
    progress = records.read_progress(store, envelope.job) or {}
    last = ""
    if progress.get("worker"):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(progress.get("started") or 0)))
        last = f"; last worker {progress['worker']}, started at {when}"
    reason = (f"dead-lettered after {ctx.max_attempts} deliveries: the worker stopped during every "
              f"attempt (it crashed, was killed, or ran past its visibility timeout){last}")
    record = {"job": envelope.job, "state": "failed", "status": envelope.status, "created": envelope.sent,
              "updated": time.time(), "started": progress.get("started"), "error": reason,
              "outputs": dict(envelope.outputs), "worker": progress.get("worker"),
              "attempt": ctx.max_attempts, "attempt_id": f"dead-{message.message_id}",
              "published": True, "dead": reason, "envelope": letter.body}
    if envelope.retry:
        record["retry"] = envelope.retry
    if envelope.meta:
        record["meta"] = envelope.meta
    winner = records.claim(store, keys.record_key(envelope.job, "final"), record)
    if winner is not None:
        return source, str(winner.get("dead") or winner.get("error") or reason)
    records.clear_progress(store, envelope.job)
    notice = notice_for(ctx, envelope, record)
    if notice is not None:
        ctx.queues.send(*notice)
    logger.warning("job %s: %s", envelope.job, reason)
    return source, reason
