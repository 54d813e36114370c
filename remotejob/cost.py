"""What jobs cost on AWS: requests per job by operation, priced at list prices.

:func:`probe` measures it: it runs a few no-op jobs through a scratch job system beside a real
one (same store, same queue service, queues ``<name>-probe-*``) and counts every HTTP request of
their whole life (submit, take, heartbeat, complete, the requester's status read) with the
botocore hook behind :func:`remotejob.backends.aws.request_counts`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import keys

if TYPE_CHECKING:
    from .queue import Queue

PRICES_TAKEN = "2026-11-29"
"""When the prices below were taken from AWS's public S3 and SQS pricing pages."""

SQS_PER_MILLION = 0.40
"""USD per million SQS Standard requests, us-east-1, beyond the free tier (each 64 KiB of a
message's payload counts as one request; remotejob's small messages are one)."""
S3_WRITE_PER_MILLION = 5.00
"""USD per million S3 Standard PUT, COPY, POST and LIST requests, us-east-1."""
S3_READ_PER_MILLION = 0.40
"""USD per million S3 Standard GET, HEAD and other requests, us-east-1; DELETE is free."""

_S3_WRITES = frozenset({
    "PutObject", "CopyObject", "CreateMultipartUpload", "UploadPart", "UploadPartCopy",
    "CompleteMultipartUpload", "ListObjectsV2", "ListObjects", "CreateBucket",
})
_S3_FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload"})


def price_per_million(operation: str) -> float:
    """USD per million requests of ``SERVICE.Operation``, e.g. ``S3.PutObject``."""
    service, _, name = operation.partition(".")
    if service == "SQS":
        return SQS_PER_MILLION
    if name in _S3_FREE:
        return 0.0
    return S3_WRITE_PER_MILLION if name in _S3_WRITES else S3_READ_PER_MILLION


@dataclass(frozen=True)
class Cost:
    """Requests per job by operation and what a million such jobs cost at list prices."""

    jobs: int
    per_job: dict[str, float] = field(default_factory=dict)

    @property
    def sqs(self) -> float:
        """SQS requests per job."""
        return sum(n for op, n in self.per_job.items() if op.startswith("SQS."))

    @property
    def s3(self) -> float:
        """S3 requests per job."""
        return sum(n for op, n in self.per_job.items() if op.startswith("S3."))

    @property
    def usd_per_million_jobs(self) -> float:
        """Request charges of a million such jobs, in USD (storage and transfer not included)."""
        return sum(n * price_per_million(op) for op, n in self.per_job.items())


def per_job(before: dict[str, int], after: dict[str, int], jobs: int) -> Cost:
    """The :class:`Cost` of ``jobs`` jobs from two snapshots of ``request_counts()``."""
    made = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
    return Cost(jobs, {op: n / jobs for op, n in sorted(made.items())})


def probe(queue: Queue, jobs: int = 50, concurrency: int = 8) -> Cost:
    """Run ``jobs`` small no-op jobs beside ``queue`` and count their requests per job.

    They are submitted in one batch to ``<name>-probe-pending``, run by an in-process worker
    (``concurrency`` handlers), and each is read once with ``status()``; queue creation is not
    counted. The probe's records are removed after; its queues stay, empty, for the next probe.
    It writes no journal entries (see ``journal.py``: they cost per busy process and second, not
    per job, and would name the probe's jobs in the real system's journal).
    """
    from .backends.aws import request_counts
    from .queue import Queue
    from .worker import Worker

    scratch = Queue(
        f"{queue.name}-probe", queue.object_store, queue.message_queue,
        statuses=("pending", "completed"), visibility_timeout=max(queue.visibility_timeout, 30),
        wait_time=1, max_attempts=queue.max_attempts, journal=False,
    )
    scratch.init()
    before = request_counts()
    ids = scratch.submit_many({"body": f"probe {i} {time.time()}"} for i in range(jobs))
    Worker(scratch, lambda job: None, concurrency=concurrency, burst=True, handle_signals=False).run()
    for job_id in ids:
        scratch.status(job_id)
    cost = per_job(before, request_counts(), jobs)
    _drain(scratch, keys.queue_name(scratch.name, "completed"))
    store = scratch.object_store
    store.delete(keys.batch_key(ids[0].rpartition("-")[0]))
    for job_id in ids:
        store.delete(keys.record_key(job_id, "final"))
    return cost


def _drain(queue: Queue, name: str) -> None:
    """Remove the probe's completion notices (SQS allows one purge a minute, so receive them)."""
    while messages := queue.message_queue.receive(name, 10, 0):
        queue.message_queue.delete_batch(name, [m.receipt for m in messages])
