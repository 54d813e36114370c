"""A job as a handler or ``Queue.next()`` caller holds it: its input, its delivery, and the user
API to record its outcome. How an outcome is recorded (stage, claim, publish, notice, hand-on,
acknowledge) is ``lifecycle.py``'s; a :class:`Job` is the user's handle on one delivery.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from . import keys, lifecycle
from .backends.base import StoredObject
from .bodies import Entry, copy_to_file, parse_entry
from .errors import Cancelled, TimeLimitExceeded
from .lifecycle import Delivery
from .status import JobStatus

logger = logging.getLogger(__name__)


class JobView:
    """What a delivery of a job says about it, sync or async (``remotejob.Job``,
    ``remotejob.aio.Job``): its attributes, and whether its handler should stop.

    Attributes:
        id: the job id (also its input key); stable across deliveries and pipeline stages.
        key: the input key under ``in/``.
        metadata: the input's metadata, as stored.
        status: the status queue this delivery came from.
        message_id: the queue message's id.
        receipt: this delivery's receipt handle (a new one on every delivery).
        receive_count: how many times the message has been delivered, this time included.
        attempt_id: this delivery's attempt, as the final record names the winning one.
        state: for a completion notice (from the ``completed`` queue), ``completed``,
            ``failed`` or ``cancelled``; None for a job to run.
        error: for a notice of a failed job, its error.
    """

    def __init__(self, delivery: Delivery) -> None:
        envelope, message = delivery.envelope, delivery.message
        self.delivery = delivery
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
        self.attempt_id = delivery.attempt_id

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(id={self.id!r}, status={self.status!r}, receive_count={self.receive_count})"

    @property
    def started(self) -> float:
        """When this delivery's attempt started, seconds since the epoch."""
        return self.delivery.started

    @property
    def time_limit(self) -> float | None:
        """Seconds this job may run (its own limit from submit, else the worker's), or None."""
        return self.delivery.time_limit

    @property
    def cancelled(self) -> bool:
        """True once the handler should stop: the job was cancelled, or ran past its time limit
        (:attr:`stop_reason` says which). Check it in long loops, or call :meth:`check`."""
        return self.delivery.stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        """``"cancelled"``, ``"time-limit"``, or None while the job may go on."""
        return self.delivery.stop_reason

    def check(self) -> None:
        """Raise if the handler should stop; call it between steps of long work.

        Raises:
            Cancelled: the job was cancelled; let it propagate (the cancel's outcome stands and
                the job is not retried).
            TimeLimitExceeded: the job ran past its time limit; the attempt is recorded failed
                and retried like any failure.
        """
        reason = self.delivery.stop_reason
        if reason == "cancelled":
            raise Cancelled(f"job {self.id!r} was cancelled")
        if reason == "time-limit":
            raise TimeLimitExceeded(f"job {self.id!r} ran past its time limit of {self.time_limit:g} s")

    @property
    def input_key(self) -> str | None:
        """The store key of this stage's input: ``in/<key>``, or the previous stage's output;
        None when the input travels inline in the message."""
        return None if self.delivery.envelope.body is not None else self._store_key()

    def _store_key(self) -> str:
        return self.delivery.envelope.input or keys.input_key(self.key)

    @property
    def finished(self) -> bool:
        """True once this delivery's outcome was recorded (or found recorded by another)."""
        return self.delivery.finished


class Job(JobView):
    """One delivery of a job, as returned by ``Queue.next()`` or passed to a worker's handler.

    Its attributes are :class:`JobView`'s.
    """

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(delivery)
        self.running = False
        """Set when a worker's handler starts on it (it may first wait, prefetched)."""
        self.lease_lost = False
        """Set when a heartbeat found the delivery gone: another attempt may be running."""

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the job has got, e.g. ``job.progress(40, 100, "resizing")``.

        Cheap to call often: writes are coalesced to one every few seconds per job, and the
        latest report is always recorded with the job's outcome. ``q.status(id).progress``
        reads it.

        Raises:
            ValueError: ``done`` or ``total`` is not a finite number >= 0.
        """
        for name, value in (("done", done), ("total", total)):
            if value is None and name == "total":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"progress {name} must be a finite number >= 0, got {value!r}")
        if message is not None and not isinstance(message, str):
            raise ValueError(f"progress message must be a str or None, got {type(message).__name__}")
        if self.state is not None:
            raise ValueError("this is a completion notice, not a running job")
        text = None if message is None else message.encode("utf-8", "backslashreplace").decode()[:1000]
        lifecycle.report_progress(self.delivery, done, total, text)

    def open(self) -> BinaryIO:
        """Open the job's input body as a binary stream (close it when done).

        With a recorded SHA-256 (inputs from ``submit()`` and earlier pipeline stages), reading
        to the end checks it: a damaged body raises ``IntegrityError`` on the read that reaches
        its end, before end-of-file is returned, so a handler never finishes on bad bytes.

        Raises:
            NotFound: the input was removed.
        """
        inline = self.delivery.envelope.inline_body()
        if inline is not None:
            self.delivery.input_size = len(inline)
            return io.BytesIO(inline)
        return self._stored_input().open()

    def _stored_input(self) -> StoredObject:
        """The input in the store, checked against its recorded SHA-256 however it is read."""
        key = self._store_key()
        stored = self.delivery.ctx.store.get(key).checked(self._input_sha256(), f"input {key!r}")
        self.delivery.input_size = stored.size  # the records say how big the input was
        return stored

    def _input_sha256(self) -> str | None:
        envelope = self.delivery.envelope
        source = envelope.input
        if source is None:
            return envelope.sha256
        asset = source.removeprefix(keys.output_prefix(self.id))
        digest = envelope.outputs.get(asset, {}).get("sha256")
        return digest if isinstance(digest, str) else None

    def download(self, path: str | os.PathLike[str]) -> Path:
        """Stream the job's input body into ``path`` (written atomically: nothing is left there
        if reading fails or the bytes do not match) and return the path."""
        inline = self.delivery.envelope.inline_body()
        if inline is None:
            self._stored_input().save(path)  # from S3 in parallel parts, checked
        else:
            copy_to_file(io.BytesIO(inline), path)
        return Path(path)

    def acknowledge(self) -> None:
        """Delete this delivery from its status queue now (the seed's at-most-once semantics).

        After this the job is never redelivered, even if this process dies before completing.
        """
        lifecycle.acknowledge(self.delivery)

    def extend(self, seconds: int) -> None:
        """Keep this delivery invisible for ``seconds`` more from now (0 makes it visible).

        Raises:
            InvalidReceipt: the delivery is gone (deleted, or received again elsewhere).
            VisibilityLimit: SQS keeps a delivery at most 12 hours from its receipt.
        """
        d = self.delivery
        d.ctx.queues.change_visibility(d.queue, d.message.receipt, seconds)

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
            Cancelled: the worker learnt that the job was cancelled (nothing is published,
                hand-ons included; the cancel's outcome stands).
            TimeLimitExceeded: the job ran past its time limit (record nothing; the worker
                records the attempt failed).
            ValueError: this is a completion notice, it was completed already, or the assets
                are malformed (nothing is written).
            UnknownStatus: ``next_status`` is not configured.
            AlreadyExists: another attempt already finished this stage (its record stands).
        """
        if self.state is not None:
            raise ValueError("this is a completion notice: call acknowledge() to consume it")
        reason = self.delivery.stop_reason
        if reason == "cancelled" or (reason == "time-limit" and error is None):
            self.check()  # a cancelled job publishes nothing; past its limit, no success is recorded
        if self.delivery.finished:
            raise ValueError(f"job {self.id!r} was already completed by this delivery")
        entries = _check_assets(self.id, assets or ())
        names = [str(e.key) for e in entries]
        if len(set(names)) != len(names):
            raise ValueError(f"asset names must be unique, got {names}")
        if clash := sorted(set(names) & set(self.delivery.envelope.outputs)):
            raise ValueError(f"assets {clash} were published by an earlier stage: name them otherwise")
        handed: str | None = None
        if next_status is not None:
            if error is not None:
                raise ValueError("a failed job cannot be handed on: drop next_status or error")
            self.delivery.ctx.status_queue(next_status)
            handed = _handed_asset(names, next_input)
        return lifecycle.finish(self.delivery, error, entries, next_status, handed)

    def release(self, delay_s: int = 0) -> None:
        """Give the delivery back: visible again after ``delay_s`` seconds (0: at once).

        A worker retries a failed attempt this way, so the message's receive count goes on
        counting towards the dead-letter queue.
        """
        lifecycle.release(self.delivery, delay_s)


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
