"""A job as a worker holds it, and the status records that say where a job stands.

Status records are small JSON objects under ``jobs/<job-id>/`` (see ``keys.py``):

- ``queued``: written by trigger(); the job exists and waits in a status queue;
- ``progress``: written when a worker takes the job (worker, attempt, started);
- ``final``: created once (a conditional write) when the job completes or fails, naming the
  attempt that finished it and each output with its SHA-256 and size.

``status()`` reads the final record first, so a finished job never looks unfinished.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import keys
from .bodies import Entry, copy_to_file, open_body, parse_entry
from .envelope import Envelope
from .errors import AlreadyExists, RemoteJobError

if TYPE_CHECKING:
    from .queue import Queue

STATES = ("pending", "inprogress", "completed", "failed")
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Output:
    """One output asset of a finished job, as its final record lists it."""

    name: str
    size: int
    sha256: str
    content_type: str


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, as ``Queue.status()`` reads it from the job's status records."""

    id: str
    state: str
    """One of ``pending``, ``inprogress``, ``completed``, ``failed``."""
    status: str
    """The status queue the job was last sent to."""
    created: float
    """When the job was triggered, seconds since the epoch."""
    updated: float
    """When its latest record was written."""
    error: str | None = None
    outputs: list[str] = field(default_factory=list)
    """Names of the output assets, e.g. ``["output", "stderr"]``."""
    assets: dict[str, Output] = field(default_factory=dict)
    worker: str | None = None
    attempt: int | None = None
    """The delivery count of the attempt that took (or finished) the job."""

    @property
    def done(self) -> bool:
        """True once the job is completed or failed."""
        return self.state in ("completed", "failed")


def encode_record(doc: Mapping[str, Any]) -> bytes:
    """Serialise a status record."""
    return json.dumps({"v": 1, **doc}, ensure_ascii=False, separators=(",", ":")).encode()


def decode_status(job_id: str, raw: bytes) -> JobStatus:
    """Parse a status record into a :class:`JobStatus`.

    Raises:
        RemoteJobError: the record is not one of ours.
    """
    try:
        doc = json.loads(raw)
        assets = {
            name: Output(name, int(a["size"]), str(a["sha256"]), str(a["content_type"]))
            for name, a in doc.get("outputs", {}).items()
        }
        state = doc["state"]
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        return JobStatus(
            id=job_id,
            state=state,
            status=str(doc["status"]),
            created=float(doc["created"]),
            updated=float(doc["updated"]),
            error=doc.get("error"),
            outputs=list(assets),
            assets=assets,
            worker=doc.get("worker"),
            attempt=doc.get("attempt"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteJobError(f"status record of job {job_id!r} is corrupt: {exc}") from exc


def error_text(error: BaseException | str) -> str:
    """How an error is recorded: ``"ValueError: bad input"`` for an exception, else the text."""
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return str(error)


class Job:
    """One delivery of a job, as returned by ``Queue.next()``.

    Attributes:
        id: the job id (also its input key); stable across deliveries and stages.
        key: the input key under ``in/``.
        metadata: the input's metadata, as stored.
        status: the status queue this delivery came from.
        message_id: the queue message's id.
        receipt: this delivery's receipt handle (a new one on every delivery).
        receive_count: how many times the message has been delivered, this time included.
        state: for a completion notice (from the ``completed`` queue), ``completed`` or
            ``failed``; None for a job to run.
        error: for a notice of a failed job, its error.
    """

    def __init__(
        self,
        queue: Queue,
        envelope: Envelope,
        message_id: str,
        receipt: str,
        receive_count: int,
    ) -> None:
        self.queue = queue
        self.id = envelope.job
        self.key = envelope.key
        self.metadata = dict(envelope.meta)
        self.status = envelope.status
        self.created = envelope.sent
        self.message_id = message_id
        self.receipt = receipt
        self.receive_count = receive_count
        self.state = envelope.state
        self.error = envelope.error
        self.attempt_id = uuid.uuid4().hex
        self._acknowledged = False

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, status={self.status!r}, receive_count={self.receive_count})"

    def open(self) -> BinaryIO:
        """Open the job's input body as a binary stream (close it when done).

        Raises:
            NotFound: the input was removed.
        """
        return self.queue.retrieve("in", self.key).open()

    def download(self, path: str | os.PathLike[str]) -> Path:
        """Stream the job's input body into ``path`` (written atomically) and return the path."""
        with self.queue.retrieve("in", self.key) as obj:
            copy_to_file(obj.open(), path)
        return Path(path)

    def acknowledge(self) -> None:
        """Delete this delivery from its status queue now (the seed's at-most-once semantics).

        After this the job is never redelivered, even if this process dies before completing.
        """
        self.queue._remove_job(self.status, self.receipt)
        self._acknowledged = True

    def extend(self, seconds: int) -> None:
        """Keep this delivery invisible for ``seconds`` more from now (0 makes it visible)."""
        self.queue.message_queue.change_visibility(
            keys.queue_name(self.queue.name, self.status), self.receipt, seconds
        )

    def complete(
        self,
        error: BaseException | str | None = None,
        assets: Sequence[Mapping[str, Any]] | None = None,
    ) -> JobStatus:
        """Record the job's outcome, store its output assets and remove its message.

        Each asset is a mapping like ``store()``'s: ``{"key": "output", "filename": "cat.png",
        "body": png_bytes}``; ``key`` defaults to the file name, other entries are metadata.
        Assets land under ``out/<job-id>/<key>``. With ``error`` (an exception or a message)
        the job is recorded ``failed`` with that error; assets are stored either way. Then a
        notice goes to the ``completed`` status queue, if configured, and the delivery is
        deleted.

        Raises:
            ValueError: this is a completion notice, or assets are malformed (nothing is written).
            AlreadyExists: another attempt already finished this job (its record stands).
        """
        if self.state is not None:
            raise ValueError("this is a completion notice: call acknowledge() to consume it")
        prepared = [_check_asset(self.id, asset) for asset in assets or ()]
        names = [str(entry.key) for entry in prepared]
        if len(set(names)) != len(names):
            raise ValueError(f"asset names must be unique, got {names}")
        outputs: dict[str, dict[str, Any]] = {}
        for name, entry in zip(names, prepared, strict=True):
            with open_body(entry.body, f"asset {name!r}") as stream:
                self.queue.object_store.put(
                    keys.output_key(self.id, name), stream.body, entry.metadata, entry.content_type
                )
                outputs[name] = {
                    "size": stream.size,
                    "sha256": stream.sha256,
                    "content_type": entry.content_type,
                }
        now = time.time()
        state = "failed" if error is not None else "completed"
        error_message = None if error is None else error_text(error)
        record = {
            "job": self.id,
            "state": state,
            "status": self.status,
            "created": self.created,
            "updated": now,
            "error": error_message,
            "outputs": outputs,
            "worker": WORKER_ID,
            "attempt": self.receive_count,
            "attempt_id": self.attempt_id,
        }
        self._claim(record)
        self.queue._notify_done(self, state, error_message)
        if not self._acknowledged:
            self.acknowledge()
        return decode_status(self.id, encode_record(record))

    def _claim(self, record: Mapping[str, Any]) -> None:
        key = keys.record_key(self.id, "final")
        try:
            self.queue.object_store.put(
                key, encode_record(record), content_type="application/json", if_absent=True
            )
        except AlreadyExists:
            with self.queue.object_store.get(key) as existing:
                doc = json.loads(existing.read())
            if doc.get("attempt_id") != self.attempt_id:
                raise AlreadyExists(
                    f"job {self.id!r} was already finished by another attempt "
                    f"({doc.get('state')}); its record stands"
                ) from None


def _check_asset(job_id: str, asset: Mapping[str, Any]) -> Entry:
    if isinstance(asset, Mapping) and not asset.get("key") and asset.get("filename"):
        asset = {**asset, "key": os.path.basename(str(asset["filename"]))}
    entry = parse_entry(asset, "asset")
    if not entry.key:
        raise ValueError("an asset needs a 'key' (its name) or a 'filename'")
    keys.output_key(job_id, entry.key)
    return entry
