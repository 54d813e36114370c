"""Control over jobs after they were submitted: cancel and retry, and the cancellation log that
tells workers which jobs were cancelled.

A cancel decides a job's outcome the way completion does: it creates the job's create-once
``final`` record as ``cancelled``. Whichever of the cancel and the job's winning attempt creates
it first stands; the other loses (an attempt that loses discards its staged outputs, so a
cancelled job publishes none). The cancel then appends an entry to the cancellation log,
``cancels/<stamp>-<run>-<job-id>``, an empty object whose key sorts by time. Workers read the log with
one LIST per check interval while they hold jobs (never a request per job): the first read
lists it all, later ones only the entries since the newest seen less :data:`LOOKBACK_S`, which
covers entries whose write landed late or whose writer's clock is behind. A worker checks a job
against what it read before the job starts (re-reading first if the read is older than the
interval) and on every check while it runs.

A retry sends a failed or cancelled job's message again under the same id. The message comes
from the job's final record, where the worker that let go of it kept it; the final record joins
the job's history and is removed, so the new run decides a new outcome.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from . import keys, records
from .backends.base import ObjectStore
from .envelope import decode, encode
from .errors import EnvelopeError, NotRetryable
from .status import JobStatus

if TYPE_CHECKING:
    from .context import Context

logger = logging.getLogger(__name__)

CHECK_S = 5.0
"""How often a worker holding jobs reads the cancellation log, by default."""
LOOKBACK_S = 900.0
"""How far before the newest entry seen a later read of the log starts."""
REASON_MAX = 16 * 1024
"""Characters of a cancel's reason kept in the record (a notice carries at most 4 KiB of it)."""
KEEP_S = 15 * 24 * 3600.0
"""Entries older than this are removed by a worker's first read: no queue keeps a message longer
(SQS at most 14 days), so no job they name can still be taken."""


class Cancellations:
    """The job ids a process knows to be cancelled, read from the cancellation log.

    Args:
        store: the job system's store.
        interval: the longest a check may rely on a read of the log, seconds.
    """

    def __init__(self, store: ObjectStore, interval: float = CHECK_S) -> None:
        self.store = store
        self.interval = interval
        self._ids: dict[tuple[str, int], float] = {}
        """Each cancelled (job id, run) and when its cancel was logged."""
        self._newest = ""
        self._read_at = -math.inf
        self._lock = threading.Lock()

    def read(self) -> set[tuple[str, int]]:
        """Read the log's new entries now (one LIST); return the ``(job id, run)`` newly seen.

        Raises:
            BackendUnavailable: the store cannot be listed.
        """
        with self._lock:
            return self._read()

    def _read(self) -> set[tuple[str, int]]:
        started = time.monotonic()
        first = not self._newest
        after = ""
        if not first:
            when = keys.parse_cancel_log(self._newest)
            after = keys.cancel_log_start((when[0] if when else 0.0) - LOOKBACK_S)
        fresh: set[tuple[str, int]] = set()
        old = time.time() - KEEP_S
        for info in self.store.list(keys.CANCELS, start_after=after):
            entry = keys.parse_cancel_log(info.key)
            if entry is None:
                continue
            if first and entry[0] < old:
                self.store.delete(info.key)
                continue
            if (entry[2], entry[1]) not in self._ids:
                fresh.add((entry[2], entry[1]))
                self._ids[entry[2], entry[1]] = entry[0]
            self._newest = max(self._newest, info.key)
        if len(self._ids) > 1000:  # a long-lived worker forgets what no queue can still hold
            self._ids = {k: when for k, when in self._ids.items() if when >= old}
        self._read_at = started
        return fresh

    def stale(self) -> bool:
        """The last read is older than the interval."""
        return time.monotonic() - self._read_at > self.interval

    def cancelled(self, job_id: str, run: int) -> bool:
        """Whether run ``run`` of job ``job_id`` was cancelled, as of a read of the log at most
        ``interval`` seconds old (read now if the last is older)."""
        if self.stale():
            with self._lock:
                if self.stale():  # another thread may have read it while this one waited
                    self._read()
        return (job_id, run) in self._ids

    def known(self, job_id: str, run: int) -> bool:
        """Whether run ``run`` of job ``job_id`` was cancelled, as of the last read (no read now)."""
        return (job_id, run) in self._ids


def cancel(ctx: Context, job_id: str, reason: str | None = None) -> JobStatus:
    """Cancel a job; see ``Queue.cancel``.

    Raises:
        NotFound: no job with this id was ever submitted.
    """
    if reason is not None and not isinstance(reason, str):
        raise TypeError(f"reason must be a str or None, got {type(reason).__name__}")
    if reason is not None:
        reason = reason.encode("utf-8", "backslashreplace").decode()[:REASON_MAX]
    store = ctx.store
    st = records.status(store, ctx.name, job_id)
    if st.state == "cancelled":  # again: make sure the workers hear of it (a crash may have cut
        _log(store, job_id, st.run)  # the first cancel short between its record and its log entry)
        return st
    if st.done:
        return st
    now = time.time()
    winner = records.claim_cancel(store, job_id, st.status, st.created, reason, now, st.run, st.meta)
    if winner is not None:  # it finished first (maybe still publishing its outputs)
        return records.outcome(job_id, winner)
    _log(store, job_id, st.run)
    logger.info("job %s cancelled%s", job_id, f": {reason}" if reason else "")
    return records.status(store, ctx.name, job_id)


def _log(store: ObjectStore, job_id: str, run: int) -> None:
    store.put(keys.cancel_log_key(job_id, run, time.time()), b"", content_type="application/octet-stream")


def retry(ctx: Context, job_id: str) -> JobStatus:
    """Send a failed or cancelled job again under the same id; see ``Queue.retry``.

    Raises:
        NotFound: no job with this id was ever submitted.
        NotRetryable: the job is not failed or cancelled, or its message cannot be sent again.
    """
    store = ctx.store
    final = records.read(store, keys.record_key(job_id, "final"))
    if final is None or final.get("state") not in ("failed", "cancelled"):
        st = records.status(store, ctx.name, job_id)  # NotFound for an unknown id
        raise NotRetryable(f"job {job_id!r} is {st.state}: only a failed or cancelled job can be retried")
    body = final.get("envelope")
    if not isinstance(body, str):
        raise NotRetryable(
            f"job {job_id!r} was {final['state']} before a worker took its message, which is still "
            "in its queue: retry it once a worker has let go of it (a worker drops a cancelled "
            "job's message as soon as it receives it)"
        )
    try:
        if ctx.signing is not None:  # never sign afresh what no configured key signed
            ctx.signing.verify(body, check_age=False)
        envelope = decode(body)
    except EnvelopeError as exc:
        raise NotRetryable(f"job {job_id!r} cannot be sent again: its kept message is refused: {exc}") \
            from exc
    run = envelope.retry + 1
    if not records.claim_retry(store, job_id, run):
        raise NotRetryable(f"job {job_id!r} was retried already (run {run} was sent by another retry)")
    records.add_history(store, job_id, final)
    records.reopen(store, job_id)
    records.forget_start(store, job_id, envelope.status)
    records.write_queued(store, job_id, envelope.status, envelope.sent, time.time(), retry=run,
                         meta=envelope.meta, priority=envelope.priority)
    again = replace(envelope, retry=run)
    ctx.queues.send(ctx.status_queue(envelope.status, envelope.priority), ctx.seal(encode(again)))
    logger.info("job %s sent again to %s (run %d)", job_id, envelope.status, run)
    return records.status(store, ctx.name, job_id)

