"""remotejob: run jobs on remote machines, coordinated only through object storage and queues.

    import remotejob
    q = remotejob.connect("thumbnails")          # embedded; or store="s3://...", queues="sqs://"
    job_id = q.submit({"body": open("cat.jpg", "rb"), "filename": "cat.jpg"})
    job = q.next("pending")                      # on a worker
    job.complete(assets=[{"key": "output", "body": b"..."}])
    q.wait(job_id)
"""

from .backends.base import StoredObject
from .errors import (
    AlreadyExists,
    BackendUnavailable,
    ConfigError,
    EnvelopeError,
    InvalidKey,
    InvalidReceipt,
    JobFailed,
    MetadataError,
    NotFound,
    PayloadTooLarge,
    RemoteJobError,
    UnknownStatus,
    WaitTimeout,
)
from .job import Job, JobStatus, Output
from .queue import Queue, connect

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "BackendUnavailable",
    "ConfigError",
    "EnvelopeError",
    "InvalidKey",
    "InvalidReceipt",
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
    "UnknownStatus",
    "WaitTimeout",
    "__version__",
    "connect",
]
