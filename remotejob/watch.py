"""The watch over the jobs a worker holds: cancellations, time limits and coalesced progress.

One thread per worker. While the worker holds jobs, it reads the cancellation log once per check
interval (one LIST, see ``control.py``) and asks the handler of every cancelled job to stop; it
asks a handler to stop once its job has run past its time limit; and it writes the progress that
handlers report faster than records are written. Handlers stop cooperatively (``job.cancelled``,
``job.check()``; ``worker --exec`` signals its command). A handler still running ``grace``
seconds after it was asked to stop is abandoned: the worker records the attempt's end without it
(``on_abandon``) and discards whatever it returns later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import lifecycle
from .context import Context
from .errors import RemoteJobError

if TYPE_CHECKING:
    from .job import Job

logger = logging.getLogger(__name__)


class Watch:
    """Watches the jobs it holds until they are released.

    Args:
        ctx: the job system (its ``cancellations`` are read here).
        grace: seconds a handler asked to stop gets before it is abandoned.
        on_abandon: called (on the watch's thread) with a job whose handler outlived the grace.
    """

    def __init__(self, ctx: Context, grace: float, on_abandon: Callable[[Job], None]) -> None:
        self.ctx = ctx
        self.grace = grace
        self.on_abandon = on_abandon
        self._held: set[Job] = set()
        self._abandoned: set[Job] = set()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the watch's thread (again, after :meth:`stop`)."""
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="remotejob-watch", daemon=True)
        self._thread.start()

    def hold(self, job: Job) -> None:
        """Watch ``job`` from now on, until :meth:`release`."""
        with self._cond:
            if not self._held:  # else the thread already wakes every few seconds
                self._cond.notify()
            self._held.add(job)

    def started(self, job: Job) -> None:
        """``job``'s handler started: its time limit, if any, runs from now."""
        if job.delivery.time_limit is not None:
            with self._cond:
                self._cond.notify()

    def release(self, job: Job) -> None:
        """Stop watching ``job``."""
        with self._cond:
            self._held.discard(job)
            self._abandoned.discard(job)

    def stop(self) -> None:
        """End the thread."""
        with self._cond:
            self._stopped = True
            self._held.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=5)

    def _run(self) -> None:
        wait = 0.0
        while True:
            with self._cond:
                if not self._stopped:
                    self._cond.wait(wait if self._held else None)
                if self._stopped:
                    return
                jobs = list(self._held)
            try:
                wait = self._look(jobs)
            except Exception as exc:  # noqa: BLE001 - the watch must outlive any one failure
                logger.warning("could not look after the running jobs: %s; trying again soon", exc)
                wait = 1.0

    def _look(self, jobs: list[Job]) -> float:
        """Act on every held job; return how long to wait before looking again."""
        cancellations = self.ctx.cancellations
        if jobs and cancellations.stale():
            try:
                cancellations.read()
            except RemoteJobError as exc:
                logger.warning("could not read the cancellation log: %s", exc)
        now, wall = time.monotonic(), time.time()
        wake = now + min(cancellations.interval, lifecycle.PROGRESS_EVERY_S)
        for job in jobs:
            d = job.delivery
            if cancellations.known(job.id, d.envelope.retry):
                if lifecycle.request_stop(d, "cancelled"):
                    logger.info("job %s was cancelled: asking its handler to stop", job.id)
            elif job.running and d.time_limit is not None:
                over = wall - d.started - d.time_limit
                if over >= 0:
                    if lifecycle.request_stop(d, "time-limit"):
                        logger.warning("job %s ran past its time limit of %g s: asking its handler to stop",
                                       job.id, d.time_limit)
                else:
                    wake = min(wake, now - over)
            if d.stop_reason is not None and job.running:
                abandon_at = d.stop_at + self.grace
                if now >= abandon_at:
                    self._abandon(job)
                else:
                    wake = min(wake, abandon_at)
            try:
                due = lifecycle.flush_progress(d)
            except RemoteJobError as exc:
                logger.warning("job %s: could not record its progress: %s", job.id, exc)
                due = now + 1.0
            if due is not None:
                wake = min(wake, due)
        return max(0.01, wake - time.monotonic())

    def _abandon(self, job: Job) -> None:
        with self._cond:
            if job in self._abandoned or job not in self._held:
                return
            self._abandoned.add(job)
        self.on_abandon(job)
