"""The heartbeat that keeps running jobs' messages invisible while their handlers work.

One thread serves every job a worker holds. Every third of the visibility timeout it extends each
held job's visibility by the full timeout, ten jobs per request, so a job may run for any length
of time (up to SQS's 12 hours from its receipt) without being delivered again. The first
extension of a running job also writes its ``inprogress`` record, so jobs shorter than a third of
the timeout never pay for it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from . import keys
from .errors import RemoteJobError

if TYPE_CHECKING:
    from .job import Job
    from .queue import Queue

logger = logging.getLogger(__name__)


class Heartbeat:
    """Extends the visibility of the jobs it holds until they are released.

    Args:
        queue: the job system the jobs belong to.
        visibility_s: the visibility timeout each extension grants, in seconds (at least 1).
    """

    def __init__(self, queue: Queue, visibility_s: int) -> None:
        self.queue = queue
        self.visibility_s = visibility_s
        self.interval = visibility_s / 3
        self._due: dict[Job, float] = {}
        self._cond = threading.Condition()
        self._beating = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="remotejob-heartbeat", daemon=True)

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread.start()

    def hold(self, job: Job) -> None:
        """Keep ``job``'s message invisible from now on, until :meth:`release`."""
        with self._cond:
            self._due[job] = time.monotonic() + self.interval
            self._cond.notify()

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
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

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
                        by_queue.setdefault(keys.queue_name(self.queue.name, job.status), []).append(job)
                for name, jobs in by_queue.items():
                    for start in range(0, len(jobs), 10):
                        self._beat(name, jobs[start:start + 10])

    def _beat(self, queue_name: str, jobs: list[Job]) -> None:
        try:
            gone = set(self.queue.message_queue.change_visibility_batch(
                queue_name, [(job.receipt, self.visibility_s) for job in jobs]
            ))
        except Exception as exc:  # noqa: BLE001 - the heartbeat thread must outlive any one failure
            logger.warning("heartbeat of %d job(s) failed (%s); trying again soon", len(jobs), exc)
            with self._cond:
                for job in jobs:
                    if job in self._due:
                        self._due[job] = time.monotonic() + min(self.interval, 1.0)
            return
        for index, job in enumerate(jobs):
            if index in gone:
                logger.warning(
                    "job %s: its message was received elsewhere or deleted; another attempt may run it",
                    job.id,
                )
                job.lease_lost = True
                with self._cond:
                    self._due.pop(job, None)
                continue
            with self._cond:
                if job in self._due:
                    self._due[job] = time.monotonic() + self.interval
            if job.running and not job.progress_recorded:
                try:
                    job.record_progress()
                except RemoteJobError as exc:
                    logger.warning("job %s: could not record it in progress: %s", job.id, exc)
