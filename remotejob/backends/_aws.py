"""Plumbing shared by the S3 and SQS backends: clients, and the one place botocore errors are
translated into remotejob errors (from the endpoint, bucket, key and error code only, so no
secret can leak into a message).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from ..errors import (
    BackendUnavailable,
    NotFound,
)

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

CHUNK = 8 * 1024 * 1024
TRANSFER = TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=4)
"""Bounded streaming: at most a few 8 MiB parts in memory, whatever the body's size."""

_CREDENTIAL_CODES = {
    "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidClientTokenId",
    "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException", "InvalidToken",
    "AuthFailure", "MissingAuthenticationToken", "InvalidSecurity", "AccessDeniedException",
}
_NOT_FOUND_CODES = {
    "NoSuchKey", "NotFound", "404", "NoSuchBucket", "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
}


def _config(read_timeout: float = 60) -> Config:
    return Config(
        retries={"mode": "standard"},
        connect_timeout=5,
        read_timeout=read_timeout,
        max_pool_connections=32,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def _translate(service: str, endpoint: str, what: str) -> Iterator[None]:
    """Turn botocore failures raised in the body into remotejob errors naming ``endpoint``."""
    env = "AWS_ENDPOINT_URL_S3" if service == "S3" else "AWS_ENDPOINT_URL_SQS"
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise BackendUnavailable(
            f"no AWS credentials found for {service} at {endpoint}: set AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run where an IAM role is available"
        ) from exc
    except BotoConnectionError as exc:
        raise BackendUnavailable(
            f"cannot reach {service} at {endpoint} while {what}: check {env}, "
            "endpoint_url= and the network"
        ) from exc
    except ParamValidationError as exc:
        raise ValueError(f"{service} refused the request while {what}: {exc}") from exc
    except ClientError as exc:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _CREDENTIAL_CODES or status == 403:
            raise BackendUnavailable(
                f"{service} at {endpoint} rejected our credentials while {what} ({code}): "
                "check AWS_PROFILE / AWS_ACCESS_KEY_ID and the permissions of that identity"
            ) from exc
        if code in _NOT_FOUND_CODES or status == 404:
            raise NotFound(f"{what}: not found at {endpoint} ({code})") from exc
        raise BackendUnavailable(f"{service} at {endpoint} failed while {what}: {code}") from exc
    except BotoCoreError as exc:
        raise BackendUnavailable(
            f"{service} at {endpoint} failed while {what} ({type(exc).__name__})"
        ) from exc


class _Clients:
    """One lazily created boto3 client, shared by threads (clients are thread-safe)."""

    def __init__(self, service: str, endpoint_url: str | None, region: str | None,
                 session: boto3.session.Session | None, read_timeout: float = 60) -> None:
        self._service, self._endpoint_url, self._region = service, endpoint_url, region
        self._session, self._read_timeout = session, read_timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    session = self._session or boto3.session.Session()
                    self._client = session.client(
                        self._service,  # type: ignore[call-overload]
                        endpoint_url=self._endpoint_url,
                        region_name=self._region,
                        config=_config(self._read_timeout),
                    )
        return self._client

    def endpoint(self) -> str:
        """The endpoint in use, for messages (a URL, never a credential)."""
        if self._endpoint_url:
            return self._endpoint_url
        try:
            return str(self.get().meta.endpoint_url)
        except BotoCoreError:
            return f"the default {self._service} endpoint"
