"""Where a job stands, as callers see it: :class:`JobStatus` and :class:`Output` (``records.py``
reads and writes the records they are made from)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

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


def error_text(error: BaseException | str) -> str:
    """How an error is recorded: ``"ValueError: bad input"`` for an exception, else the text.

    Text that is not valid Unicode (lone surrogates, e.g. from undecodable file names) is kept
    as ``\\udc80`` escapes, so it can be logged, stored and sent anywhere."""
    if isinstance(error, BaseException):
        text = str(error)
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    else:
        text = str(error)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
