"""Plumbing shared by the S3 and SQS backends: the boto3 client, and the one place where
botocore failures become remotejob errors.

Messages are built from the endpoint, the service, the action, its subject (bucket, key or
queue) and the AWS error code only, so no credential, signature or presigned URL can leak into
them.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Collection
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ReadTimeoutError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from ..errors import (
    AlreadyExists,
    BackendUnavailable,
    ConfigError,
    InvalidKey,
    InvalidReceipt,
    MetadataError,
    NotFound,
    PayloadTooLarge,
    RemoteJobError,
    UncertainResult,
)

logger = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
TRANSFER = TransferConfig(
    multipart_threshold=CHUNK,
    multipart_chunksize=CHUNK,
    max_concurrency=4,
    preferred_transfer_client="classic",
)
TRANSFER.max_in_memory_upload_chunks = 3  # a stream's parts read ahead of the 4 uploading ones
"""Bounded streaming: a stream's upload holds about seven 8 MiB parts, whatever its size; a
file's parts are read from disk by the uploading threads (``S3Store._upload_file``)."""

DOWNLOAD_PART = 8 * 1024 * 1024
DOWNLOAD_CONCURRENCY = 8
"""A body saved to a file (``StoredObject.save``, ``job.download``) that is larger than one part
is fetched in parts of at least this size (s3transfer's; up to 4 times more for a body of over
4 parts per thread) by this many parallel ranged GETs, written at their offsets: about 1 MiB of
memory per thread, whatever the body's size."""

CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60
"""Longer than SQS's 20 s long poll plus a slow S3 part upload's response."""

_CREDENTIAL_CODES = frozenset({
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "AccessDeniedException",
    "InvalidClientTokenId", "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException",
    "InvalidToken", "TokenRefreshRequired", "AuthFailure", "MissingAuthenticationToken",
    "InvalidSecurity", "403",
})
_NOT_FOUND_CODES = frozenset({
    "NoSuchKey", "NotFound", "404", "NoSuchBucket",
    "AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist",
})
_RECEIPT_CODES = frozenset({
    "ReceiptHandleIsInvalid", "InvalidReceiptHandle",
    "AWS.SimpleQueueService.MessageNotInflight", "MessageNotInflight",
})
_UNSUPPORTED_CODES = frozenset({"NotImplemented", "XNotImplemented", "501"})
_PERMISSION_CODES = frozenset({"AccessDenied", "AccessDeniedException"})
_VALUE_CODES: dict[str, type[ValueError]] = {
    "KeyTooLongError": InvalidKey,
    "MetadataTooLarge": MetadataError,
    "EntityTooLarge": PayloadTooLarge,
}
_LOST_REPLY = (ReadTimeoutError, ConnectionClosedError, ResponseStreamingError)
"""Failures after the request went out: it may have been applied."""
_LOST_CONNECTION = (BotoConnectionError, *_LOST_REPLY)
_ACCESS_KEY_LIKE = re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{12,}\b")


class NoSuchBucket(NotFound):
    """The bucket itself is missing (so a store may create it and retry)."""


class NotSupported(BackendUnavailable):
    """The endpoint does not implement the call (``NotImplemented``, HTTP 501): some
    S3-compatible stores lack bucket settings such as public access blocks."""


def http_status(exc: BaseException | None) -> int | None:
    """The HTTP status of the botocore failure behind a remotejob error (or of ``exc`` itself)."""
    while exc is not None and not isinstance(exc, ClientError):
        exc = exc.__cause__
    if exc is None:
        return None
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def client_config() -> Config:
    """The botocore settings every client uses (``AWS_MAX_ATTEMPTS`` still sets the attempts)."""
    return Config(
        retries={"mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        max_pool_connections=32,
    )


def error_code(exc: ClientError) -> str:
    """The AWS error code of a ClientError (``""`` if the reply had none)."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def safe_endpoint(url: str) -> str:
    """``url`` without any user:password part, for messages."""
    parts = urlsplit(url)
    if not parts.username and not parts.password:
        return url
    return urlunsplit(parts._replace(netloc=parts.hostname or ""))


def _aws_message(exc: ClientError) -> str:
    text = str(exc.response.get("Error", {}).get("Message", "")).strip()
    return _ACCESS_KEY_LIKE.sub("<access key>", text)[:300]


def _param_error(exc: ParamValidationError) -> ValueError:
    report = str(exc.kwargs.get("report", ""))
    params = sorted(set(re.findall(r"parameter (?:input\.)?([A-Za-z0-9_.\[\]]+)", report)))
    kind: type[ValueError] = ValueError
    if any(p.startswith("Key") for p in params):
        kind = InvalidKey
    elif any(p.startswith("Metadata") for p in params):
        kind = MetadataError
    elif any("ReceiptHandle" in p for p in params):
        kind = InvalidReceipt
    return kind(f"the request has invalid parameters: {', '.join(params) or 'see the cause'}")


class Translate:
    """Context manager: botocore failures in its body become remotejob errors.

    Args:
        service: ``S3`` or ``SQS``, for messages.
        endpoint: the endpoint URL in use, for messages.
        action: what was being done, e.g. ``writing``.
        subject: what it was done to, e.g. ``object 'a' in s3://b/p/`` or ``queue 'q'``.
        missing: the NotFound message to use instead of the generic one.
        ok: AWS error codes that mean success here; :attr:`swallowed` then holds the code.
        hint: appended to the message of a failure the service does not explain (an internal
            error, an unsupported call), e.g. that the endpoint may not support encryption.
    """

    def __init__(
        self,
        service: str,
        endpoint: str,
        action: str,
        subject: str,
        *,
        missing: str | None = None,
        ok: Collection[str] = (),
        hint: str | None = None,
    ) -> None:
        self.service, self.endpoint, self.action, self.subject = service, endpoint, action, subject
        self.missing, self.ok, self.hint = missing, ok, hint
        self.swallowed: str | None = None

    def __enter__(self) -> Translate:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None or isinstance(exc, RemoteJobError) or not isinstance(exc, Exception):
            return False
        if isinstance(exc, ClientError) and error_code(exc) in self.ok:
            self.swallowed = error_code(exc)
            return True
        error = self.error(exc)
        if error is None:
            return False
        raise error from exc

    def error(self, exc: Exception) -> Exception | None:
        """The remotejob error for ``exc``, or None for an exception that is not botocore's."""
        where = f"{self.service} at {self.endpoint}"
        doing = f"{self.action} {self.subject}"
        env = f"AWS_ENDPOINT_URL_{self.service}"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return BackendUnavailable(
                f"no AWS credentials found for {where}: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or run where an IAM role is available"
            )
        if isinstance(exc, _LOST_REPLY):
            return UncertainResult(
                f"lost the reply of {where} while {doing} ({type(exc).__name__}): the request may "
                "have been applied"
            )
        if isinstance(exc, _LOST_CONNECTION):
            return BackendUnavailable(
                f"cannot reach {where} while {doing} ({type(exc).__name__}): check {env} "
                "(or endpoint_url=) and the network"
            )
        if isinstance(exc, NoRegionError):
            return ConfigError(f"no AWS region for {self.service}: set AWS_REGION, or use sqs://REGION")
        if isinstance(exc, ProfileNotFound):
            return ConfigError(f"AWS_PROFILE names a profile that does not exist ({where})")
        if isinstance(exc, ParamValidationError):
            return _param_error(exc)
        if isinstance(exc, ClientError):
            return self._client_error(exc, where, doing)
        if isinstance(exc, BotoCoreError):
            return BackendUnavailable(f"{where} failed while {doing} ({type(exc).__name__})")
        return None

    def _client_error(self, exc: ClientError, where: str, doing: str) -> Exception:
        code = error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return AlreadyExists(f"{self.subject} already exists")
        if code in _RECEIPT_CODES or (code == "InvalidParameterValue" and "receipt" in str(exc).lower()):
            return InvalidReceipt(f"{doing}: the receipt handle is not valid or has expired ({code})")
        if code in _VALUE_CODES:
            return _VALUE_CODES[code](f"{where} refused {doing}: {code}")
        if code in _PERMISSION_CODES:
            return BackendUnavailable(
                f"{where} refused {doing} ({code}): the credentials in use are not allowed to: check "
                "that identity's IAM policy (`remotejob iam-policy --role "
                "submitter|worker|admin|dashboard|scaler` prints what each role needs)"
            )
        if code in _CREDENTIAL_CODES or status == 403:
            return BackendUnavailable(
                f"{where} refused {doing} ({code or status}): check the credentials "
                "(AWS_PROFILE / AWS_ACCESS_KEY_ID) and that identity's permissions"
            )
        if code == "NoSuchBucket":
            return NoSuchBucket(self.missing or f"the bucket of {self.subject} does not exist at {where}")
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(self.missing or f"{self.subject} does not exist ({where})")
        hint = f"; {self.hint}" if self.hint else ""
        if code in _UNSUPPORTED_CODES or status == 501:
            return NotSupported(f"{where} does not support {doing} ({code or status}){hint}")
        said = _aws_message(exc).rstrip(".") if hint else _aws_message(exc)
        if isinstance(status, int) and status >= 500:  # the service failed: it may have applied it
            return UncertainResult(f"{where} failed while {doing}: {code or status}: {said}{hint}")
        return BackendUnavailable(f"{where} failed while {doing}: {code or status}: {said}{hint}")


_requests: Counter[str] = Counter()
_requests_lock = threading.Lock()


def _count_request(event_name: str, **kwargs: Any) -> None:
    # before-send fires once per HTTP request, retries included: what AWS bills.
    service, operation = (event_name.split(".") + ["", "", ""])[1:3]
    with _requests_lock:
        _requests[f"{service.upper()}.{operation}"] += 1


def request_counts() -> dict[str, int]:
    """HTTP requests this process sent to S3 and SQS, by ``SERVICE.Operation``."""
    with _requests_lock:
        return dict(_requests)


class LazyClient:
    """One boto3 client, created on first use and then shared by threads.

    boto3 clients are thread-safe but sessions are not, so the client is made under a lock.
    """

    def __init__(
        self,
        service: str,
        endpoint_url: str | None,
        region: str | None,
        session: boto3.session.Session | None,
    ) -> None:
        self._service, self._endpoint_url, self._region = service, endpoint_url, region
        self._session = session
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client (botocore raises NoRegionError etc. here, inside a Translate)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    session = self._session or boto3.session.Session()
                    try:
                        self._client = session.client(
                            self._service,  # type: ignore[call-overload]
                            endpoint_url=self._endpoint_url,
                            region_name=self.region(),
                            config=client_config(),
                        )
                    except ValueError as exc:  # botocore's "Invalid endpoint: ..."
                        raise ConfigError(f"invalid {self._service} endpoint URL: {exc}") from exc
                    self._client.meta.events.register("before-send", _count_request)
        return self._client

    def region(self) -> str | None:
        """The region argument, else ``AWS_REGION`` (boto3 itself reads only AWS_DEFAULT_REGION)."""
        return self._region or os.environ.get("AWS_REGION") or None

    def endpoint(self) -> str:
        """The endpoint in use, for messages (a URL, never a credential)."""
        if self._endpoint_url:
            return safe_endpoint(self._endpoint_url)
        try:
            return safe_endpoint(str(self.get().meta.endpoint_url))
        except (BotoCoreError, ConfigError):
            return f"the default {self._service.upper()} endpoint"
