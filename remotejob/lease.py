"""The heartbeat that keeps running jobs' messages invisible while their handlers work.

One thread serves every job a worker holds, running or prefetched. Every third of the visibility
timeout it extends each held job's visibility by the full timeout, ten jobs per request, so a job
may run for any length of time without being delivered again — up to SQS's cap of 12 hours from
its receipt: the last extension ends there, with a warning, and the job's message comes back when
it runs out (another attempt may then run; the create-once claim keeps one outcome). The first
extension of a running job also writes its ``inprogress`` record, so jobs shorter than a third of
the timeout never pay for it. Each entry of a batch is handled on its own: a delivery that is gone
is dropped (``job.lease_lost``), one that failed is tried again within a second, the others go on.
A round of more than one batch sends them :data:`SENDERS` at a time: a thousand held jobs are a
hundred requests, which one after another would outlast a short visibility timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from . import lifecycle
from .backends.base import CAPPED, GONE
from .context import Context
from .errors import BatchPartlyFailed, RemoteJobError
from .limits import MAX_VISIBILITY_S

if TYPE_CHECKING:
    from .job import Job

logger = logging.getLogger(__name__)

SENDERS = 8
"""Batches of one heartbeat round in flight at once."""

CAP_MARGIN_S = 60
"""How far before SQS's 12-hour cap the last extension ends, for clocks and request latency."""


class Heartbeat:
    """Extends the visibility of the jobs it holds until they are released.

    Args:
        ctx: the job system the jobs belong to.
        visibility_s: the visibility timeout each extension grants, in seconds (at least 1).
    """

    def __init__(self, ctx: Context, visibility_s: int) -> None:
        self.ctx = ctx
        self.visibility_s = visibility_s
        self.interval = visibility_s / 3
        self._due: dict[Job, float] = {}
        self._cond = threading.Condition()
        self._beating = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._senders: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the heartbeat thread (again, after :meth:`stop`)."""
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="remotejob-heartbeat", daemon=True)
        self._thread.start()

    def hold(self, job: Job) -> None:
        """Keep ``job``'s message invisible from now on, until :meth:`release`."""
        with self._cond:
            if not self._due:  # else the thread already wakes for an earlier job
                self._cond.notify()
            self._due[job] = time.monotonic() + self.interval

    def release(self, job: Job) -> None:
        """Stop extending ``job``'s message; returns once no extension of it is under way."""
        with self._beating, self._cond:
            self._due.pop(job, None)

    def stop(self) -> None:
        """Release every job and end the thread."""
        with self._cond:
            self._stopped = True
            self._due.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=5)
        senders, self._senders = self._senders, None
        if senders is not None:
            senders.shutdown(wait=False)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    due = [job for job, at in self._due.items() if at <= now]
                    if due:
                        break
                    wait = min(self._due.values(), default=now + 3600) - now
                    self._cond.wait(wait)
                if self._stopped:
                    return
            with self._beating:
                by_queue: dict[str, list[Job]] = {}
                for job in due:
                    if job in self._due:
                        by_queue.setdefault(job.delivery.queue, []).append(job)
                batches = [(name, jobs[start:start + 10]) for name, jobs in by_queue.items()
                           for start in range(0, len(jobs), 10)]
                if len(batches) == 1:
                    self._beat(*batches[0])
                elif batches:
                    if self._senders is None:
                        self._senders = ThreadPoolExecutor(SENDERS, thread_name_prefix="remotejob-heartbeat")
                    list(self._senders.map(lambda batch: self._beat(*batch), batches))

    def _grant(self, job: Job) -> int:
        """Seconds to extend by: the timeout, or what is left of the 12 hours since receipt."""
        held = time.monotonic() - job.delivery.received
        return int(min(self.visibility_s, MAX_VISIBILITY_S - held - CAP_MARGIN_S))

    def _beat(self, queue_name: str, jobs: list[Job]) -> None:
        entries: list[tuple[Job, int]] = []
        for job in jobs:
            grant = self._grant(job)
            if grant < 1:
                self._capped(job)
            else:
                entries.append((job, grant))
        if not entries:
            return
        failed: dict[int, str] = {}
        try:
            failed = {i: GONE for i in self.ctx.queues.change_visibility_batch(
                queue_name, [(job.receipt, grant) for job, grant in entries]
            )}
        except BatchPartlyFailed as exc:
            failed = exc.failed
        except Exception as exc:  # noqa: BLE001 - the heartbeat thread must outlive any one failure
            logger.warning("heartbeat of %d job(s) failed (%s); trying again soon", len(entries), exc)
            failed = {i: "error" for i in range(len(entries))}
        for index, (job, _) in enumerate(entries):
            code = failed.get(index)
            if code == GONE and job.delivery.acknowledged:  # deleted as this beat went out: done
                self._drop(job)
            elif code == GONE:
                logger.warning(
                    "job %s: its message was received elsewhere or deleted; another attempt may run it",
                    job.id,
                )
                job.lease_lost = True
                self._drop(job)
            elif code == CAPPED:
                self._capped(job)
            else:
                with self._cond:
                    if job in self._due:
                        self._due[job] = time.monotonic() + (self.interval if code is None
                                                             else min(self.interval, 1.0))
                if code is None and job.running:
                    try:
                        lifecycle.record_progress(job.delivery)
                    except RemoteJobError as exc:
                        logger.warning("job %s: could not record it in progress: %s", job.id, exc)

    def _capped(self, job: Job) -> None:
        logger.warning(
            "job %s has been held for 12 hours since its message was received, SQS's limit: its "
            "message will be delivered again when this visibility runs out (the first outcome "
            "recorded stands)", job.id,
        )
        self._drop(job)

    def _drop(self, job: Job) -> None:
        with self._cond:
            self._due.pop(job, None)
