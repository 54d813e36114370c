"""Where a job stands, as callers see it: :class:`JobStatus` and :class:`Output` (``records.py``
reads and writes the records they are made from)."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from .errors import JobCancelled, JobFailed, WaitTimeout

STATES = ("scheduled", "pending", "inprogress", "completed", "failed", "cancelled")
DONE = ("completed", "failed", "cancelled")


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
class Progress:
    """How far a running job says it has got (``job.progress()``)."""

    done: float
    total: float | None = None
    message: str | None = None
    updated: float = 0.0
    """When the handler reported it, seconds since the epoch."""

    @property
    def fraction(self) -> float | None:
        """``done / total`` (0 to 1), or None without a total."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))


@dataclass(frozen=True)
class Attempt:
    """An earlier run of a job that was retried (``Queue.retry()``): how it ended."""

    state: str
    """``failed`` or ``cancelled``."""
    error: str | None
    worker: str | None
    attempt: int | None
    started: float | None
    updated: float
    """When that outcome was recorded."""


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands, as ``Queue.status()`` reads it from the job's status records."""

    id: str
    state: str
    """One of ``scheduled`` (submitted with a delay that has not passed: see ``due``),
    ``pending``, ``inprogress``, ``completed``, ``failed``, ``cancelled``."""
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
    progress: Progress | None = None
    """The latest progress its handler reported (kept in the final record too), or None."""
    history: list[Attempt] = field(default_factory=list)
    """Earlier runs of the job, oldest first, when it was retried with ``Queue.retry()``."""
    run: int = 0
    """How often ``Queue.retry()`` sent the job again (0: its first run)."""
    meta: dict[str, str] = field(default_factory=dict)
    """The job's metadata, as submitted (its input's, for a triggered job)."""
    traceback: str | None = None
    """For a job whose handler raised: the formatted traceback of its last attempt (the last
    16 KiB of it), or None."""
    input_size: int | None = None
    """Bytes of input the worker read (known once a worker opened it), or None."""
    due: float | None = None
    """For a job submitted with a delay: when it may start, seconds since the epoch."""
    priority: str | None = None
    """``"high"`` or ``"low"`` for a job submitted with that priority; None for normal."""

    @property
    def done(self) -> bool:
        """True once the job is completed, failed or cancelled."""
        return self.state in DONE


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


class Waiting:
    """How ``Queue.wait`` (sync and async) polls a job: ``pause(status)`` returns the status
    once the job completed, raises once it failed, was cancelled or the timeout passed, and
    otherwise returns the seconds to sleep before the next look (quickly at first, then every
    ``poll`` seconds at most)."""

    def __init__(self, job_id: str, timeout: float | None, poll: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        self.poll = poll
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.delay = 0.02

    def pause(self, st: JobStatus) -> JobStatus | float:
        if st.state == "cancelled":
            raise JobCancelled(self.job_id, st.error)
        if st.state == "failed":
            raise JobFailed(self.job_id, st.error or "unknown error")
        if st.state == "completed":
            return st
        delay = self.delay
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise WaitTimeout(f"job {self.job_id!r} is still {st.state} after {self.timeout} s")
            delay = min(delay, left)
        self.delay = min(self.delay * 1.5, self.poll)
        return delay
