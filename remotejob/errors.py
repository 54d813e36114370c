"""The exceptions remotejob raises.

Every error derives from :class:`RemoteJobError`; where a built-in base says what kind of
mistake it is, the error derives from that too, so ``except LookupError`` or ``except ValueError``
keep working::

    RemoteJobError
    ├── ConfigError                       bad connect() arguments or environment
    ├── UnknownStatus                     a status that is not configured (also ValueError)
    ├── InvalidKey                        a key S3 or the embedded store cannot hold (also ValueError)
    ├── MetadataError                     metadata that is not text or too large (also ValueError)
    ├── PayloadTooLarge                   a message or batch over the queue's limit (also ValueError)
    ├── InvalidReceipt                    a receipt handle that was never issued (also ValueError)
    ├── VisibilityLimit                   a delivery held past SQS's 12 h from receipt (also ValueError)
    ├── NotFound                          an object or job that does not exist (also LookupError)
    ├── AlreadyExists                     a create-once write lost to an earlier one
    ├── EnvelopeError                     a queue message that is not a remotejob job
    ├── JobFailed                         wait() on a job that ended in failure
    │   └── JobCancelled                  wait() on a job that was cancelled
    ├── Cancelled                         job.check() in a handler whose job was cancelled
    │   └── TimeLimitExceeded             ... or ran past its time limit
    ├── NotRetryable                      retry() of a job that is not failed or cancelled (also ValueError)
    ├── WaitTimeout                       wait() or next() ran out of time (also TimeoutError)
    └── BackendUnavailable                the store or queue cannot be reached or refuses us
        ├── UncertainResult               a request whose reply was lost: it may have been applied
        └── BatchPartlyFailed             some entries of a batch request failed, the others did not

Backends translate their own exceptions (botocore, sqlite3, OSError) into these in one place each,
chaining the cause with ``raise ... from exc``.
"""

from __future__ import annotations


class RemoteJobError(Exception):
    """Root of every error remotejob raises."""


class ConfigError(RemoteJobError):
    """Raised by connect() for an invalid name, URL or option; fix the configuration, do not retry."""


class UnknownStatus(RemoteJobError, ValueError):
    """Raised by trigger()/next() for a status the queue was not configured with; not retryable."""


class InvalidKey(RemoteJobError, ValueError):
    """Raised for an empty, absolute, over-long or ``..`` key, or one with NUL; not retryable."""


class MetadataError(RemoteJobError, ValueError):
    """Raised for metadata that is not a string or exceeds S3's 2 KB limit; names the field."""


class PayloadTooLarge(RemoteJobError, ValueError):
    """Raised when a message body or batch exceeds the queue's limit; not retryable as is."""


class InvalidReceipt(RemoteJobError, ValueError):
    """Raised for a receipt handle the queue never issued; not retryable."""


class VisibilityLimit(RemoteJobError, ValueError):
    """Raised when a delivery's visibility would end more than 12 hours after it was received
    (SQS's cap); it cannot be extended further, so let it finish or come back."""


class NotFound(RemoteJobError, LookupError):
    """Raised when an object, queue or job id does not exist; retry only after creating it."""


class AlreadyExists(RemoteJobError):
    """Raised by a create-once write (``if_absent=True``) when the key exists; never retry blindly."""


class EnvelopeError(RemoteJobError):
    """Raised when a queue message is not a valid remotejob envelope; the message is dead-lettered."""


class IntegrityError(RemoteJobError):
    """Raised when a stored body's bytes do not match the SHA-256 recorded when it was written
    (damaged or altered in the store); retrying reads the same bytes, so fix or resubmit."""


class BackendUnavailable(RemoteJobError):
    """Raised when the store or queue endpoint cannot be reached or rejects our credentials.

    The message names the endpoint and what to check. Retrying is safe once the cause is fixed.
    """


class JobFailed(RemoteJobError):
    """Raised by wait() when the job ended failed; ``.error`` holds the recorded error text."""

    def __init__(self, job_id: str, error: str) -> None:
        super().__init__(f"job {job_id!r} failed: {error}")
        self.job_id = job_id
        self.error = error


class JobCancelled(JobFailed):
    """Raised by wait() when the job was cancelled; ``.error`` holds the reason given, if any."""

    def __init__(self, job_id: str, reason: str | None) -> None:
        RemoteJobError.__init__(self, f"job {job_id!r} was cancelled" + (f": {reason}" if reason else ""))
        self.job_id = job_id
        self.error = reason or "cancelled"


class Cancelled(RemoteJobError):
    """Raised by ``job.check()`` in a handler whose job was cancelled: let it propagate (after
    cleaning up) and the worker records nothing more; the cancel's outcome stands."""


class TimeLimitExceeded(Cancelled):
    """Raised by ``job.check()`` (and ``job.complete()``) once a job ran past its time limit: the
    worker records the attempt failed with this error, and it is retried like any failure."""


class NotRetryable(RemoteJobError, ValueError):
    """Raised by ``retry()`` for a job that is not failed or cancelled, or whose message a worker
    has not yet let go of; the message says which."""


class WaitTimeout(RemoteJobError, TimeoutError):
    """Raised by wait() when the job did not finish in time; safe to wait again."""


class UncertainResult(BackendUnavailable):
    """Raised when a request's reply was lost (a read timeout, a dropped connection, a server
    error): it may or may not have been applied. Retry only what is idempotent."""


class BatchPartlyFailed(BackendUnavailable):
    """Raised by a batch call when some entries failed and the others were applied.

    ``failed`` maps the failed entries' indices to the service's error code; ``done`` maps the
    applied entries' indices to their result (a message id for sends, a job id for
    ``submit_many``, else ``""``); ``uncertain`` maps entries whose request's reply was lost (they
    may have been applied; ``submit_many`` leaves such jobs runnable) to their result. Retrying the
    failed entries alone is safe.
    """

    def __init__(
        self,
        message: str,
        failed: dict[int, str],
        done: dict[int, str] | None = None,
        uncertain: dict[int, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.failed = failed
        self.done = done or {}
        self.uncertain = uncertain or {}
