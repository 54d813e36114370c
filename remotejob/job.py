"""A job as a worker holds it: its input, its delivery, and how its outcome is recorded.

Completing a job follows ``completion.py`` (stage, claim, publish), then delivers the outcome's
consequences (the completion notice, the next pipeline stage, the dead-letter queue) and only
then deletes the message, so a crash at any point leaves a message that a later delivery can
finish from the record, without running the handler again.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import completion, keys
from .backends.base import Message
from .bodies import Entry, copy_to_file, parse_entry, verified
from .envelope import Envelope, wrap_dead
from .errors import AlreadyExists, InvalidReceipt, NotFound
from .outbox import Finished, Outbox
from .status import JobStatus, decode_status, error_text, worker_id

if TYPE_CHECKING:
    from .queue import Queue

logger = logging.getLogger(__name__)


class Job:
    """One delivery of a job, as returned by ``Queue.next()`` or passed to a worker's handler.

    Attributes:
        id: the job id (also its input key); stable across deliveries and pipeline stages.
        key: the input key under ``in/``.
        metadata: the input's metadata, as stored.
        status: the status queue this delivery came from.
        message_id: the queue message's id.
        receipt: this delivery's receipt handle (a new one on every delivery).
        receive_count: how many times the message has been delivered, this time included.
        attempt_id: this delivery's attempt, as the final record names the winning one.
        state: for a completion notice (from the ``completed`` queue), ``completed`` or
            ``failed``; None for a job to run.
        error: for a notice of a failed job, its error.
    """

    def __init__(
        self, queue: Queue, envelope: Envelope, message: Message, outbox: Outbox | None = None
    ) -> None:
        self.queue = queue
        self.id = envelope.job
        self.key = envelope.key
        self.metadata = dict(envelope.meta)
        self.status = envelope.status
        self.created = envelope.sent
        self.message_id = message.message_id
        self.receipt = message.receipt
        self.receive_count = message.receive_count
        self.state = envelope.state
        self.error = envelope.error
        self.attempt_id = uuid.uuid4().hex
        self.started = time.time()
        self._envelope = envelope
        self._body = message.body
        self._acknowledged = False
        self._outbox = outbox
        self._finished = False
        self._lock = threading.Lock()
        self.progress_recorded = False
        self.running = False
        """Set when a worker's handler starts on it (it may first wait, prefetched)."""
        self.lease_lost = False
        """Set when a heartbeat found the delivery gone: another attempt may be running."""

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r}, receive_count={self.receive_count})"

    @property
    def input_key(self) -> str | None:
        """The store key of this stage's input: ``in/<key>``, or the previous stage's output;
        None when the input travels inline in the message."""
        if self._envelope.body is not None:
            return None
        return self._envelope.input or keys.input_key(self.key)

    @property
    def finished(self) -> bool:
        """True once this delivery's outcome was recorded (or found recorded by another)."""
        return self._finished

    def open(self) -> BinaryIO:
        """Open the job's input body as a binary stream (close it when done).

        Raises:
            NotFound: the input was removed.
        """
        inline = self._envelope.inline_body()
        if inline is not None:
            return io.BytesIO(inline)
        key = self._envelope.input or keys.input_key(self.key)
        return verified(self.queue.object_store.get(key).open(), self._input_sha256(), f"input {key!r}")

    def _input_sha256(self) -> str | None:
        """The SHA-256 recorded for this stage's stored input: by submit() in the message, or
        in the earlier stage's record for its output."""
        source = self._envelope.input
        if source is None:
            return self._envelope.sha256
        asset = source.removeprefix(keys.output_prefix(self.id))
        digest = self._envelope.outputs.get(asset, {}).get("sha256")
        return digest if isinstance(digest, str) else None

    def download(self, path: str | os.PathLike[str]) -> Path:
        """Stream the job's input body into ``path`` (written atomically) and return the path."""
        with self.open() as stream:
            copy_to_file(stream, path)
        return Path(path)

    def acknowledge(self) -> None:
        """Delete this delivery from its status queue now (the seed's at-most-once semantics).

        After this the job is never redelivered, even if this process dies before completing.
        """
        self.queue._remove_job(self.status, self.receipt)
        self._acknowledged = True

    def extend(self, seconds: int) -> None:
        """Keep this delivery invisible for ``seconds`` more from now (0 makes it visible).

        Raises:
            InvalidReceipt: the delivery is gone (deleted, or received again elsewhere).
        """
        self.queue.message_queue.change_visibility(
            keys.queue_name(self.queue.name, self.status), self.receipt, seconds
        )

    def complete(
        self,
        error: BaseException | str | None = None,
        assets: Sequence[Mapping[str, Any]] | None = None,
        next_status: str | None = None,
        next_input: str | None = None,
    ) -> JobStatus:
        """Record the job's outcome, publish its output assets and remove its message.

        Each asset is a mapping like ``store()``'s: ``{"key": "output", "filename": "cat.png",
        "body": png_bytes}``; ``key`` defaults to the file name, other entries are metadata.
        Assets land under ``out/<job-id>/<key>``. With ``error`` (an exception or a message)
        the job is recorded ``failed`` with that error. Then a notice goes to the ``completed``
        status queue, if configured, and the delivery is deleted.

        With ``next_status`` the job is handed on instead: this stage's assets are published,
        and the job (same id) goes to that status queue with the asset ``next_input`` (default:
        ``output``, or the only asset; with no assets, this stage's input) as its input.

        Effectively once: if another attempt already recorded this stage's outcome, that
        outcome stands, this attempt's assets are discarded and ``AlreadyExists`` is raised.

        Raises:
            ValueError: this is a completion notice, it was completed already, or the assets
                are malformed (nothing is written).
            UnknownStatus: ``next_status`` is not configured.
            AlreadyExists: another attempt already finished this stage (its record stands).
        """
        if self.state is not None:
            raise ValueError("this is a completion notice: call acknowledge() to consume it")
        if self._finished:
            raise ValueError(f"job {self.id!r} was already completed by this delivery")
        entries = _check_assets(self.id, assets or ())
        names = [str(e.key) for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"asset names must be unique, got {names}")
        if clash := sorted(set(names) & set(self._envelope.outputs)):
            raise ValueError(f"assets {clash} were published by an earlier stage: name them otherwise")
        handed: str | None = None
        if next_status is not None:
            if error is not None:
                raise ValueError("a failed job cannot be handed on: drop next_status or error")
            self.queue._status_queue(next_status)
            handed = _handed_asset(names, next_input)
        return self._finish(error, entries, next_status, handed)

    def _finish(
        self,
        error: BaseException | str | None,
        entries: Sequence[Entry],
        next_status: str | None = None,
        handed: str | None = None,
        dead_reason: str | None = None,
    ) -> JobStatus:
        store = self.queue.object_store
        outputs = completion.stage(store, self.id, self.attempt_id, entries)
        for doc in outputs.values():
            doc["stage"] = self.status
        now = time.time()
        record: dict[str, Any] = {
            "job": self.id,
            "state": "failed" if error is not None else "completed",
            "status": self.status,
            "created": self.created,
            "updated": now,
            "started": self.started,
            "error": None if error is None else error_text(error),
            "outputs": {**self._envelope.outputs, **outputs},
            "worker": worker_id(),
            "attempt": self.receive_count,
            "attempt_id": self.attempt_id,
        }
        if next_status is not None:
            record.update(state="handed", next=next_status, input=_next_input(self, handed))
        if dead_reason is not None:
            record["dead"] = dead_reason
        record["published"] = not outputs
        key = self._claim_key(next_status)
        winner = completion.claim(store, key, record)
        with self._lock:
            self._finished = True
        if winner is not None:
            completion.discard(store, self.id, self.attempt_id, outputs)
            wrote = completion.publish(store, self.id, key, winner, check=True)
            self._deliver(winner, notify=wrote, stale_ok=True)
            raise AlreadyExists(
                f"job {self.id!r} was already finished by another attempt "
                f"({winner.get('state')}); its record stands"
            )
        completion.publish(store, self.id, key, record, check=False, sweep=self.receive_count > 1)
        self._deliver(record, notify=True, stale_ok=False)
        if next_status is not None:
            return JobStatus(self.id, "pending", next_status, self.created, now)
        return decode_status(self.id, completion.encode_record({**record, "published": True}))

    def _claim_key(self, next_status: str | None) -> str:
        if next_status is not None:
            return keys.handoff_key(self.id, self.status)
        return keys.record_key(self.id, "final")

    def record_progress(self) -> None:
        """Write the job's ``inprogress`` record (once, and never after its outcome)."""
        with self._lock:
            if not self._finished and not self.progress_recorded:
                self.queue._record_progress(self)

    def finish_if_done(self) -> bool:
        """If this stage's outcome is recorded already, finish what its winner may have left
        undone (publishing, notice, next stage), drop this delivery and return True.
        """
        store = self.queue.object_store
        key = keys.record_key(self.id, "final")
        record = completion.read_record(store, key)
        if record is None:
            key = keys.handoff_key(self.id, self.status)
            record = completion.read_record(store, key)
        if record is None:
            return False
        self._finished = True
        if record.get("status") != self.status:  # a later stage finished the whole job
            self._drop(stale_ok=True)
            return True
        completion.publish(store, self.id, key, record, check=True, sweep=True)
        # The message came back, so the winner died before deleting it, maybe before notifying.
        self._deliver(record, notify=True, stale_ok=True)
        return True

    def _deliver(self, record: Mapping[str, Any], *, notify: bool, stale_ok: bool) -> None:
        queue = self.queue
        next_status = record.get("next")
        if next_status is not None:
            queue._hand_on(self._envelope, str(next_status), record)
            if self.progress_recorded:
                queue.object_store.delete(keys.record_key(self.id, "progress"))
        notice = None
        if next_status is None and notify:
            notice = queue._notice(self, str(record["state"]), record.get("error"), record.get("outputs"))
        if record.get("dead"):
            dead = keys.dead_letter_name(queue.name)
            queue.message_queue.send(dead, wrap_dead(self._body, self.status, str(record["dead"])))
        if self._outbox is not None and not self._acknowledged:
            # The worker's outbox sends the notice, then deletes the delivery, ten jobs a request.
            source = keys.queue_name(queue.name, self.status)
            self._outbox.put(Finished(source, self.receipt, *(notice or ())))
            self._acknowledged = True
            return
        if notice is not None:
            queue.message_queue.send(*notice)
        self._drop(stale_ok=stale_ok)

    def _drop(self, *, stale_ok: bool) -> None:
        if self._acknowledged:
            return
        try:
            self.acknowledge()
        except (InvalidReceipt, NotFound):
            if not stale_ok:
                raise
            logger.info("job %s: this delivery was already gone", self.id)

    def release(self, delay_s: int = 0) -> None:
        """Give the delivery back: visible again after ``delay_s`` seconds (0: at once).

        A worker retries a failed attempt this way, so the message's receive count goes on
        counting towards the dead-letter queue.
        """
        try:
            self.extend(delay_s)
        except (InvalidReceipt, NotFound):
            logger.info("job %s: the delivery was already gone when released", self.id)


def _check_assets(job_id: str, assets: Sequence[Mapping[str, Any]]) -> list[Entry]:
    entries = []
    for asset in assets:
        if isinstance(asset, Mapping) and not asset.get("key") and asset.get("filename"):
            asset = {**asset, "key": os.path.basename(str(asset["filename"]))}
        entry = parse_entry(asset, "asset")
        if not entry.key:
            raise ValueError("an asset needs a 'key' (its name) or a 'filename'")
        keys.output_key(job_id, entry.key)
        entries.append(entry)
    return entries


def _handed_asset(names: Sequence[str], next_input: str | None) -> str | None:
    if next_input is not None:
        if next_input not in names:
            raise ValueError(f"next_input {next_input!r} is not one of the assets {list(names)}")
        return next_input
    if not names:
        return None
    if "output" in names:
        return "output"
    if len(names) == 1:
        return names[0]
    raise ValueError(f"several assets {list(names)}: name the one to hand on with next_input=")


def _next_input(job: Job, handed: str | None) -> str | None:
    """The next stage's input key; None: this stage's own input (inline or ``in/<key>``)."""
    return job._envelope.input if handed is None else keys.output_key(job.id, handed)


def progress_record(job: Job) -> bytes:
    """The ``progress`` record of a running job."""
    return completion.encode_record({
        "job": job.id,
        "state": "inprogress",
        "status": job.status,
        "created": job.created,
        "updated": time.time(),
        "started": job.started,
        "worker": worker_id(),
        "attempt": job.receive_count,
    })


def next_stage(envelope: Envelope, status: str, record: Mapping[str, Any]) -> Envelope:
    """The envelope that hands a job on to ``status`` after the stage that wrote ``record``."""
    source = record.get("input")
    return Envelope(
        job=envelope.job,
        key=envelope.key,
        status=status,
        sent=float(record["created"]),
        meta=envelope.meta,
        input=None if source is None else str(source),
        outputs=completion.public_outputs(record.get("outputs") or {}),
        body=envelope.body if source is None else None,
    )
