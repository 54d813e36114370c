"""A worker's outbox: the last two steps of finished jobs, batched ten to a request.

When a job's outcome is recorded, what is left is its completion notice and the deletion of its
message. A worker hands both to its outbox, which sends the notices with ``SendMessageBatch`` and
deletes the messages with ``DeleteMessageBatch``: up to ten jobs per request, flushed when ten
are waiting or the oldest has waited ``linger_s``. A job's message is deleted only after its
notice was sent; if the process dies first, the message comes back and the next delivery finishes
the job from its record (``lifecycle.finish_if_done``), so nothing is lost, only repeated. The
sending thread survives any failure: what could not be sent is logged and comes back that way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .backends.base import MessageQueue, OutgoingMessage
from .errors import BatchPartlyFailed, InvalidReceipt, NotFound, RemoteJobError
from .limits import send_batches

logger = logging.getLogger(__name__)

BATCH = 10
LINGER_S = 0.2
"""How long a finished job waits for others to share its requests."""


@dataclass(frozen=True)
class Finished:
    """One finished job's remaining steps: its notice (if any), then deleting its delivery."""

    queue: str
    receipt: str
    notice_queue: str | None = None
    notice: str | None = None
    owner: object = None
    """Handed to the outbox's ``done`` callback once this job's steps were tried (the worker
    keeps the job's message invisible until then)."""


class Outbox:
    """Sends notices and deletes deliveries in batches, on a thread of its own.

    Args:
        queues: the message queues.
        linger_s: the longest a finished job waits before its batch is sent.
        done: called with each job's ``owner`` once its notice and deletion were tried, and
            whether its notice went (True also for a job without one).
    """

    def __init__(
        self, queues: MessageQueue, linger_s: float = LINGER_S,
        done: Callable[[object, bool], None] | None = None,
    ) -> None:
        self.queues = queues
        self.linger_s = linger_s
        self.done = done
        self.delete = True
        """False where someone else deletes finished jobs' messages (an event source such as
        AWS Lambda's, once it is told which of them are done with): only notices are sent."""
        self._waiting: list[Finished] = []
        self._oldest = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the sending thread (again, after :meth:`close`)."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="remotejob-outbox", daemon=True)
        self._thread.start()

    def put(self, finished: Finished) -> None:
        """Queue one finished job's notice and deletion."""
        with self._cond:
            if not self._waiting:
                self._oldest = time.monotonic()
            self._waiting.append(finished)
            if len(self._waiting) in (1, BATCH) or self._closed:  # start the linger, or send now
                self._cond.notify()
        if self._closed and (self._thread is None or not self._thread.is_alive()):
            self._flush(self._take())

    def close(self) -> None:
        """Send everything still waiting and end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=30)
        self._flush(self._take())

    def _take(self) -> list[Finished]:
        with self._cond:
            taken, self._waiting = self._waiting, []
            return taken

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    if len(self._waiting) >= BATCH:
                        break
                    if self._waiting:
                        left = self._oldest + self.linger_s - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    else:
                        self._cond.wait()
                if self._closed:
                    return
            self._flush(self._take())

    def _flush(self, jobs: list[Finished]) -> None:
        if not jobs:
            return
        unsent = {id(job) for job in jobs}
        try:
            unsent = self._steps(jobs)
        except Exception:  # noqa: BLE001 - the outbox must outlive any one batch's trouble
            logger.exception("could not finish %d jobs' notices and deletions (their messages come "
                             "back and are finished from their records)", len(jobs))
        finally:
            if self.done is not None:
                for job in jobs:
                    self.done(job.owner, id(job) not in unsent)

    def _steps(self, jobs: list[Finished]) -> set[int]:
        """Send the notices, then delete the deliveries whose notice went; return the ids of the
        jobs whose notice may not have gone."""
        unsent = self._send_notices(jobs)
        if not self.delete:
            return unsent
        deletable = [job for job in jobs if id(job) not in unsent]
        by_queue: dict[str, list[str]] = {}
        for job in deletable:
            by_queue.setdefault(job.queue, []).append(job.receipt)
        for queue, receipts in by_queue.items():
            for start in range(0, len(receipts), BATCH):
                try:
                    self.queues.delete_batch(queue, receipts[start:start + BATCH])
                except (InvalidReceipt, NotFound) as exc:
                    logger.info("some finished jobs' deliveries were already gone: %s", exc)
                except (RemoteJobError, ValueError) as exc:
                    logger.warning("could not delete finished jobs' messages (they come back and are "
                                   "finished from their records): %s", exc)
        return unsent

    def _send_notices(self, jobs: list[Finished]) -> set[int]:
        """Send the notices; return the ids of the jobs whose notice may not have gone."""
        by_queue: dict[str, list[Finished]] = {}
        for job in jobs:
            if job.notice_queue is not None and job.notice is not None:
                by_queue.setdefault(job.notice_queue, []).append(job)
        unsent: set[int] = set()
        for queue, noticed in by_queue.items():
            for indices in send_batches([str(job.notice) for job in noticed]):
                batch = [noticed[i] for i in indices]
                try:
                    self.queues.send_batch(queue, [OutgoingMessage(str(job.notice)) for job in batch])
                except BatchPartlyFailed as exc:
                    logger.warning("could not send %d of %d completion notices to %s (their jobs come "
                                   "back and are finished from their records): %s", len(exc.failed),
                                   len(batch), queue, exc)
                    unsent.update(id(batch[i]) for i in exc.failed)
                except (RemoteJobError, ValueError) as exc:
                    logger.warning("could not send %d completion notices to %s (their jobs come back "
                                   "and are finished from their records): %s", len(batch), queue, exc)
                    unsent.update(id(job) for job in batch)
        return unsent

