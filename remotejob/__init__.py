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
    ConfigError,
    EnvelopeError,
    IntegrityError,
    InvalidKey,
    InvalidReceipt,
    JobFailed,
    MetadataError,
    NotFound,
    PayloadTooLarge,
    RemoteJobError,
    UncertainResult,
    UnknownStatus,
    VisibilityLimit,
    WaitTimeout,
)
from .job import Job
from .queue import Queue, connect
from .status import JobStatus, Output
from .worker import Handler, Worker

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "BackendUnavailable",
    "BatchPartlyFailed",
    "ConfigError",
    "DeadLetter",
    "EnvelopeError",
    "IntegrityError",
    "InvalidKey",
    "InvalidReceipt",
    "Handler",
    "Job",
    "JobFailed",
    "JobStatus",
    "MetadataError",
    "NotFound",
    "Output",
    "PayloadTooLarge",
    "Queue",
    "RemoteJobError",
    "StoredObject",
    "UncertainResult",
    "UnknownStatus",
    "VisibilityLimit",
    "WaitTimeout",
    "Worker",
    "__version__",
    "connect",
]
