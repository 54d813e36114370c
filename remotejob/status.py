"""Where a job stands: the status records under ``jobs/<job-id>/`` and what ``status()`` makes of them.

- ``queued``: written by trigger() (create-once: a job id runs once); the job waits in a queue;
- ``progress``: written when a running job first heartbeats (worker, attempt, started), so
  short jobs never pay for it; ``Queue.next()`` writes it at once, as nothing heartbeats there;
- ``final``: created once, by the attempt that won the claim (see ``completion.py``), naming
  that attempt and each output with its SHA-256 and size.

``status()`` reads the final record first, so a finished job never looks unfinished. A job
submitted in a batch has no ``queued`` record: its batch's manifest (``batches/<batch-id>``, see
``batch.py``) says it is pending.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field

from .errors import RemoteJobError

STATES = ("pending", "inprogress", "completed", "failed")


def worker_id() -> str:
    """This process as status records name it: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
    """The worker (``host:pid``) that runs or ran the job."""
    attempt: int | None = None
    """The delivery count of the attempt that runs (or finished) the job."""
    started: float | None = None
    """When the running attempt started, for an ``inprogress`` job."""

    @property
    def done(self) -> bool:
        """True once the job is completed or failed."""
        return self.state in ("completed", "failed")


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
        if doc.get("published") is False:
            state = "inprogress"  # the outcome is settled; its outputs are being published
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
            started=doc.get("started"),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteJobError(f"status record of job {job_id!r} is corrupt: {exc}") from exc


def error_text(error: BaseException | str) -> str:
    """How an error is recorded: ``"ValueError: bad input"`` for an exception, else the text."""
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return str(error)


def decode_manifest(job_id: str, index: int, raw: bytes) -> JobStatus | None:
    """The pending status of the ``index``-th job of a batch manifest; None if it has no such job.

    Raises:
        RemoteJobError: the manifest is not one of ours.
    """
    try:
        count = json.loads(raw)["jobs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteJobError(f"batch manifest of job {job_id!r} is corrupt: {exc}") from exc
    if not isinstance(count, int) or index >= count:
        return None
    return decode_status(job_id, raw)
