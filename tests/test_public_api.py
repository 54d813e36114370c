"""The public surface: what ``import remotejob`` offers."""

from __future__ import annotations

import remotejob


def test_all_names() -> None:
    assert sorted(remotejob.__all__) == sorted(
        [
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
    )
    for name in remotejob.__all__:
        assert hasattr(remotejob, name)


def test_error_hierarchy() -> None:
    assert issubclass(remotejob.NotFound, LookupError)
    assert issubclass(remotejob.WaitTimeout, TimeoutError)
    for cls in (
        remotejob.InvalidKey,
        remotejob.MetadataError,
        remotejob.UnknownStatus,
        remotejob.PayloadTooLarge,
    ):
        assert issubclass(cls, ValueError)
    for name in remotejob.__all__:
        obj = getattr(remotejob, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, remotejob.RemoteJobError)
            assert obj.__doc__
