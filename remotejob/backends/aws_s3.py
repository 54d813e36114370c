"""S3Store: an ObjectStore in an S3 bucket (or any S3-compatible store), through boto3."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, BinaryIO, cast

import boto3
from botocore.exceptions import (
    ClientError,
)

from ..errors import (
    AlreadyExists,
    NotFound,
)
from ..limits import (
    decode_metadata,
    encode_metadata,
    validate_key,
    validate_metadata,
)
from .base import (
    Body,
    ObjectInfo,
    StoredObject,
)

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

from ._aws import TRANSFER, _Clients, _code, _translate

logger = logging.getLogger(__name__)


class _Counting:
    """Wraps a readable body so the size of what was uploaded is known without a HEAD."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self.size += len(chunk)
        return chunk


class S3Store:
    """An ObjectStore in an S3 bucket, under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
        create_bucket: bool = True,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.location = f"s3://{bucket}/{self.prefix}"
        self._create_bucket = create_bucket
        self._bucket_ready = False
        self._clients = _Clients("s3", endpoint_url, region, session)

    @property
    def _s3(self) -> S3Client:
        return cast("S3Client", self._clients.get())

    def _key(self, key: str) -> str:
        validate_key(key)
        return validate_key(self.prefix + key)

    def _translate(self, what: str) -> Any:
        return _translate("S3", self._clients.endpoint(), what)

    def ensure(self) -> None:
        """Create the bucket if it is missing; an existing bucket of ours is fine."""
        with self._translate(f"checking bucket {self.bucket}"):
            try:
                self._s3.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                    raise
        self._make_bucket()

    def _make_bucket(self) -> None:
        with self._translate(f"creating bucket {self.bucket}"):
            region = self._s3.meta.region_name
            args: dict[str, Any] = {"Bucket": self.bucket}
            if region and region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": region}
            try:
                self._s3.create_bucket(**args)
                logger.info("created bucket %s", self.bucket)
            except ClientError as exc:
                if _code(exc) != "BucketAlreadyOwnedByYou":
                    raise

    def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store ``body`` (bytes in one PUT; a file streamed in 8 MiB parts). See ObjectStore."""
        full = self._key(key)
        meta = validate_metadata(metadata or {})
        if if_absent and not isinstance(body, bytes):
            raise ValueError("if_absent=True needs a bytes body")
        extra = {"Metadata": encode_metadata(meta), "ContentType": content_type}
        try:
            return self._put(key, full, body, extra, if_absent, meta)
        except NotFound:
            if not self._create_bucket or not isinstance(body, bytes):
                raise
            self._make_bucket()
            return self._put(key, full, body, extra, if_absent, meta)

    def _put(
        self, key: str, full: str, body: Body, extra: dict[str, Any], if_absent: bool,
        meta: dict[str, str],
    ) -> ObjectInfo:
        if not isinstance(body, bytes):
            return self._upload(key, full, body, extra, meta)
        conditional: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        with self._translate(f"writing {full!r} to bucket {self.bucket}"):
            try:
                reply = self._s3.put_object(
                    Bucket=self.bucket, Key=full, Body=body, **extra, **conditional
                )
            except ClientError as exc:
                if _code(exc) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    raise AlreadyExists(f"{key!r} already exists in {self.location}") from exc
                raise
        self._bucket_ready = True
        return ObjectInfo(key, len(body), meta, extra["ContentType"], reply.get("ETag", ""))

    def _upload(
        self, key: str, full: str, body: IO[bytes], extra: dict[str, Any], meta: dict[str, str]
    ) -> ObjectInfo:
        # A stream cannot be replayed after NoSuchBucket, so make sure of the bucket first (once).
        if self._create_bucket and not self._bucket_ready:
            self.ensure()
            self._bucket_ready = True
        counting = _Counting(body)
        with self._translate(f"writing {full!r} to bucket {self.bucket}"):
            self._s3.upload_fileobj(
                cast("IO[Any]", counting), self.bucket, full, ExtraArgs=extra, Config=TRANSFER
            )
        return ObjectInfo(key, counting.size, meta, extra["ContentType"])

    def _info(self, key: str, reply: Mapping[str, Any]) -> ObjectInfo:
        modified = reply.get("LastModified")
        return ObjectInfo(
            key=key,
            size=int(reply.get("ContentLength", 0)),
            metadata=decode_metadata(reply.get("Metadata", {})),
            content_type=str(reply.get("ContentType", "application/octet-stream")),
            etag=str(reply.get("ETag", "")),
            modified=modified.timestamp() if modified else 0.0,
        )

    def get(self, key: str) -> StoredObject:
        """Open the object; its body streams from S3 as it is read."""
        full = self._key(key)
        try:
            with self._translate(f"reading {full!r} from bucket {self.bucket}"):
                reply = self._s3.get_object(Bucket=self.bucket, Key=full)
        except NotFound:
            raise NotFound(f"no object {key!r} in {self.location}") from None
        return StoredObject(self._info(key, reply), cast(BinaryIO, _Stream(reply["Body"])))

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info without its body."""
        full = self._key(key)
        try:
            with self._translate(f"reading {full!r} from bucket {self.bucket}"):
                reply = self._s3.head_object(Bucket=self.bucket, Key=full)
        except NotFound:
            raise NotFound(f"no object {key!r} in {self.location}") from None
        return self._info(key, reply)

    def delete(self, key: str) -> None:
        """Delete the object; a missing key (or bucket) is fine."""
        full = self._key(key)
        try:
            with self._translate(f"deleting {full!r} from bucket {self.bucket}"):
                self._s3.delete_object(Bucket=self.bucket, Key=full)
        except NotFound:
            pass

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects under ``prefix`` in S3's byte order."""
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            with self._translate(f"listing {self.prefix + prefix!r} in bucket {self.bucket}"):
                for page in pages:
                    for item in page.get("Contents", []):
                        yield ObjectInfo(
                            key=item["Key"][len(self.prefix):],
                            size=int(item.get("Size", 0)),
                            etag=str(item.get("ETag", "")),
                            modified=item["LastModified"].timestamp() if "LastModified" in item else 0,
                        )
        except NotFound:
            return


class _Stream:
    """A botocore StreamingBody as a binary file object (read, readinto, close, context)."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.closed = False

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self._body.read(None if size is None or size < 0 else size))

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._body.close()
            self.closed = True

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
