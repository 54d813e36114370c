"""Where a job system lives: turning connect()'s arguments and the environment into backends.

Read at connect() time, never at import. Precedence: an argument, then ``REMOTEJOB_STORE`` /
``REMOTEJOB_QUEUES``, then the embedded default under ``$REMOTEJOB_HOME`` (``./.remotejob``).

Store locations:  ``s3://bucket/prefix``, ``s3://`` (bucket ``remotejobs-<name>``),
``file:///abs/folder`` or a plain folder path.
Queue locations:  ``sqs://`` (region and endpoint from the AWS chain), ``sqs://REGION``,
``sqlite:///abs/file.db`` or a plain ``.db`` path.
AWS credentials, region and endpoints come only from the standard chain (``AWS_PROFILE``,
``AWS_REGION``, ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL_SQS``) or ``endpoint_url=``.

Encryption at rest on AWS: ``sse=`` / ``REMOTEJOB_SSE`` (``AES256`` or ``aws:kms``) and
``kms_key_id=`` / ``REMOTEJOB_KMS_KEY_ID``. Objects are written with that encryption and a bucket
remotejob creates gets it as its default; queues are created with SSE-SQS, or with the KMS key
under ``aws:kms``. The embedded backend ignores them.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

from .backends.base import MessageQueue, ObjectStore
from .errors import ConfigError
from .limits import validate_sse

DEFAULT_HOME = ".remotejob"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The embedded backend's folder: ``explicit``, ``$REMOTEJOB_HOME`` or ``./.remotejob``."""
    return Path(explicit or os.environ.get("REMOTEJOB_HOME") or DEFAULT_HOME)


def encryption(
    sse: str | None = None, kms_key_id: str | None = None
) -> tuple[str | None, str | None]:
    """Server-side encryption for AWS: ``(sse, kms_key_id)`` from the arguments, else from
    ``REMOTEJOB_SSE`` and ``REMOTEJOB_KMS_KEY_ID``.

    Raises:
        ConfigError: an unknown mode, or a KMS key without ``aws:kms``.
    """
    if sse is None:
        sse = os.environ.get("REMOTEJOB_SSE") or None
    if kms_key_id is None:
        kms_key_id = os.environ.get("REMOTEJOB_KMS_KEY_ID") or None
    return validate_sse(sse, kms_key_id)


def default_bucket(name: str) -> str:
    """The bucket used for ``s3://`` without a bucket: ``remotejobs-<name>``.

    Raises:
        ConfigError: the name cannot be part of a bucket name.
    """
    bucket = f"remotejobs-{name}"
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ConfigError(
            f"{bucket!r} is not a valid S3 bucket name (lower-case letters, digits, '-'): "
            "choose a lower-case job system name, or give the bucket: store='s3://BUCKET/prefix'"
        )
    return bucket


def make_store(
    name: str,
    store: str | ObjectStore | None,
    home_dir: Path,
    endpoint_url: str | None = None,
    sse: str | None = None,
    kms_key_id: str | None = None,
) -> ObjectStore:
    """Build the ObjectStore that ``store`` names (see the module docstring); an S3 store
    writes with the server-side encryption given (see :func:`encryption`).

    Raises:
        ConfigError: an unknown scheme, invalid bucket or encryption option.
    """
    if store is not None and not isinstance(store, str):
        return store
    location = store or os.environ.get("REMOTEJOB_STORE") or ""
    if not location:
        from .backends.local import LocalStore

        return LocalStore(home_dir / "store" / name)
    parts = urlsplit(location)
    if parts.scheme == "s3":
        bucket = parts.netloc or default_bucket(name)
        if not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"{bucket!r} in {location!r} is not a valid S3 bucket name")
        from .backends.aws import S3Store

        return S3Store(
            bucket, parts.path.strip("/"), endpoint_url=endpoint_url, sse=sse, kms_key_id=kms_key_id
        )
    if parts.scheme == "file":
        from .backends.local import LocalStore

        return LocalStore(Path(parts.path))
    if not parts.scheme:
        from .backends.local import LocalStore

        return LocalStore(Path(location))
    raise ConfigError(
        f"unknown store location {location!r}: use s3://bucket/prefix, file:///folder or a path"
    )


def make_queues(
    queues: str | MessageQueue | None,
    home_dir: Path,
    endpoint_url: str | None = None,
    sse: str | None = None,
    kms_key_id: str | None = None,
) -> MessageQueue:
    """Build the MessageQueue that ``queues`` names (see the module docstring); SQS queues
    are created encrypted at rest as :func:`encryption` says.

    Raises:
        ConfigError: an unknown scheme or encryption option.
    """
    if queues is not None and not isinstance(queues, str):
        return queues
    location = queues or os.environ.get("REMOTEJOB_QUEUES") or ""
    if not location:
        from .backends.local import SqliteQueues

        return SqliteQueues(home_dir / "queues.db")
    parts = urlsplit(location)
    if parts.scheme == "sqs":
        from .backends.aws import SqsQueues

        return SqsQueues(
            endpoint_url=endpoint_url, region=parts.netloc or None, sse=sse, kms_key_id=kms_key_id
        )
    if parts.scheme == "sqlite":
        from .backends.local import SqliteQueues

        return SqliteQueues(Path(parts.path))
    if not parts.scheme:
        from .backends.local import SqliteQueues

        return SqliteQueues(Path(location))
    raise ConfigError(
        f"unknown queues location {location!r}: use sqs://, sqlite:///file.db or a path"
    )
