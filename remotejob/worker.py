"""The worker loop: take jobs from a status queue, run a handler, record the outcome.

A handler takes a :class:`~remotejob.Job` and returns its output assets (a list of mappings like
``Job.complete()``'s) or None. A handler that raises records the job as failed with the error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import AlreadyExists
from .job import Job
from .queue import Queue

logger = logging.getLogger(__name__)

Handler = Callable[[Job], Sequence[Mapping[str, Any]] | None]

BURST_WAIT_S = 1.0
"""How long a burst worker long-polls before it decides the queue is empty."""


def process(job: Job, handler: Handler) -> None:
    """Run ``handler`` on one job and complete the job with its assets or its error."""
    try:
        try:
            assets = handler(job)
        except Exception as exc:  # noqa: BLE001 - any handler failure is the job's outcome
            logger.warning("job %s failed: %s: %s", job.id, type(exc).__name__, exc)
            job.complete(error=exc)
            return
        job.complete(assets=assets or ())
    except AlreadyExists:
        logger.info("job %s was already finished by another attempt; dropping this delivery", job.id)
        job.acknowledge()


def work(
    queue: Queue,
    handler: Handler,
    status: str = "pending",
    burst: bool = False,
    max_jobs: int | None = None,
) -> int:
    """Process jobs from ``status`` one at a time; return how many were processed.

    Blocks until ``max_jobs`` jobs are done or, with ``burst=True``, the queue is empty.

    Raises:
        UnknownStatus: the status is not configured.
    """
    done = 0
    while max_jobs is None or done < max_jobs:
        job = queue.next(status, timeout=BURST_WAIT_S if burst else None)
        if job is None:
            break
        if job.state is not None:
            logger.warning("skipping a completion notice in %s; serve a job status", status)
            job.acknowledge()
            continue
        process(job, handler)
        done += 1
    return done
