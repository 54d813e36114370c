"""remotejob: run jobs on remote machines, coordinated only through object storage and queues.

    import remotejob
    q = remotejob.connect("thumbnails")          # embedded; or store="s3://...", queues="sqs://"
    job_id = q.submit({"body": open("cat.jpg", "rb"), "filename": "cat.jpg"})
    job = q.next("pending")                      # on a worker
    job.complete(assets=[{"key": "output", "body": b"..."}])
    q.wait(job_id)
"""

from .backends.base import StoredObject
from .envelope import DeadLetter
from .errors import (
    AlreadyExists,
    BackendUnavailable,
    BatchPartlyFailed,
    Cancelled,
    ConfigError,
    EnvelopeError,
    IntegrityError,
    InvalidKey,
    InvalidReceipt,
    JobCancelled,
    JobFailed,
    MetadataError,
    NotFound,
    NotRetryable,
    PayloadTooLarge,
    RemoteJobError,
    TimeLimitExceeded,
    UncertainResult,
    UnknownStatus,
    VisibilityLimit,
    WaitTimeout,
)
from .job import Job
from .queue import Queue, connect
from .schedules import Schedule
from .status import Attempt, JobStatus, Output, Progress
from .worker import Handler, Worker

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Attempt",
    "BackendUnavailable",
    "BatchPartlyFailed",
    "Cancelled",
    "ConfigError",
    "DeadLetter",
    "EnvelopeError",
    "IntegrityError",
    "InvalidKey",
    "InvalidReceipt",
    "Handler",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobStatus",
    "MetadataError",
    "NotFound",
    "NotRetryable",
    "Output",
    "PayloadTooLarge",
    "Progress",
    "Queue",
    "RemoteJobError",
    "Schedule",
    "StoredObject",
    "TimeLimitExceeded",
    "UncertainResult",
    "UnknownStatus",
    "VisibilityLimit",
    "WaitTimeout",
    "Worker",
    "__version__",
    "connect",
]
