"""S3Store: an ObjectStore in an S3 bucket (or any S3-compatible store), through boto3."""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import threading
import time
from collections.abc import Collection, Generator, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from ..bodies import write_at
from ..errors import BackendUnavailable, ConfigError, InvalidKey, NotFound
from ..limits import decode_metadata, encode_metadata, validate_key, validate_metadata, validate_sse
from ._aws import (
    DOWNLOAD_CONCURRENCY,
    DOWNLOAD_PART,
    TRANSFER,
    LazyClient,
    NoSuchBucket,
    NotSupported,
    Translate,
    error_code,
    http_status,
)
from .base import Body, ObjectInfo, StoredObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef

logger = logging.getLogger(__name__)

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d{1,3}(\.\d{1,3}){3}")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
_READ_BUFFER = 256 * 1024
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
"""The public access block every bucket remotejob creates gets: nothing in it is ever public."""
_NO_PUBLIC_ACCESS_BLOCK = {"NoSuchPublicAccessBlockConfiguration"}
_NO_ENCRYPTION = {"ServerSideEncryptionConfigurationNotFoundError"}
_warned: set[tuple[str, str]] = set()


def _warn_once(endpoint: str, what: str, message: str, *args: object) -> None:
    """Log a warning once per endpoint and kind of trouble (not once per bucket or write)."""
    if (endpoint, what) not in _warned:
        _warned.add((endpoint, what))
        logger.warning(message, *args)


def validate_bucket(bucket: str) -> str:
    """Check a general purpose bucket name against S3's naming rules.

    Raises:
        ConfigError: naming the rule and how to fix the name.
    """
    if (
        not isinstance(bucket, str)
        or not _BUCKET.fullmatch(bucket)
        or ".." in bucket
        or _IP_ADDRESS.fullmatch(bucket)
        or bucket.startswith(_RESERVED_PREFIXES)
        or bucket.endswith(_RESERVED_SUFFIXES)
    ):
        raise ConfigError(
            f"{bucket!r} is not a valid S3 bucket name: use 3-63 lower-case letters, digits, '-' "
            "and '.', starting and ending with a letter or digit, e.g. 'my-company-jobs'"
        )
    return bucket


class S3Store:
    """An ObjectStore in an S3 bucket, under an optional key prefix.

    The bucket is created when a write finds it missing (or by :meth:`ensure`), so normal
    operations spend no request on checking it.

    Args:
        bucket: the bucket name.
        prefix: a folder-like prefix inside the bucket that every key lives under.
        endpoint_url: an S3-compatible endpoint; default: ``AWS_ENDPOINT_URL_S3`` or AWS.
        region: the region; default: ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or the profile's.
        session: a boto3 session to take credentials and settings from.
        create_bucket: create the bucket when a write finds it missing. A bucket this store
            creates gets a public access block (all four settings on) and, with ``sse``, that
            default encryption; an endpoint that lacks either call gets a warning, not an error.
        sse: server-side encryption for every object written: ``"AES256"`` (S3-managed keys)
            or ``"aws:kms"``; None leaves it to the bucket's default.
        kms_key_id: the KMS key for ``"aws:kms"`` (id, ARN or ``alias/NAME``); None: S3's
            AWS-managed key.

    Raises:
        ConfigError: an invalid bucket name, prefix or encryption option.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
        create_bucket: bool = True,
        sse: str | None = None,
        kms_key_id: str | None = None,
    ) -> None:
        self.bucket = validate_bucket(bucket)
        self.sse, self.kms_key_id = validate_sse(sse, kms_key_id)
        self._sse_args: dict[str, str] = {}
        if self.sse is not None:
            self._sse_args["ServerSideEncryption"] = self.sse
        if self.kms_key_id is not None:
            self._sse_args["SSEKMSKeyId"] = self.kms_key_id
        root = prefix.strip("/")
        if root:
            try:
                validate_key(root)
            except InvalidKey as exc:
                raise ConfigError(f"invalid prefix {prefix!r} for s3://{bucket}: {exc}") from exc
        self.prefix = root + "/" if root else ""
        self.location = f"s3://{bucket}/{self.prefix}"
        self._create_bucket = create_bucket
        self._bucket_known = False
        self._client = LazyClient("s3", endpoint_url, region, session)

    download_part_size = DOWNLOAD_PART
    """Saved to a file, a body larger than this is fetched in parts of this size, in parallel."""
    download_concurrency = DOWNLOAD_CONCURRENCY
    """How many ranged GETs one save runs at once."""

    def __repr__(self) -> str:
        return f"S3Store({self.location!r})"

    @property
    def _s3(self) -> S3Client:
        return cast("S3Client", self._client.get())

    def _full(self, key: str) -> str:
        validate_key(key)
        return validate_key(self.prefix + key)

    def _call(
        self, action: str, key: str | None = None, ok: Collection[str] = (), writing: bool = False
    ) -> Translate:
        subject = f"object {key!r} in {self.location}" if key is not None else f"bucket {self.bucket}"
        missing = f"no object {key!r} in {self.location}" if key is not None else None
        hint = None
        if writing and self.sse is not None:
            hint = (
                f"objects are written with server-side encryption {self.sse} (REMOTEJOB_SSE), which "
                "this endpoint may not support: enable it there, or unset REMOTEJOB_SSE"
            )
        return Translate("S3", self._client.endpoint(), action, subject, missing=missing, ok=ok, hint=hint)

    def endpoint(self) -> str:
        """The S3 endpoint in use (a URL, never a credential)."""
        return self._client.endpoint()

    def exists(self) -> bool:
        """Whether the bucket exists (and we may see it), without creating it.

        Raises:
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        try:
            with self._call("checking"):
                self._s3.head_bucket(Bucket=self.bucket)
        except NotFound:
            return False
        return True

    def public_access_block(self) -> dict[str, bool] | None:
        """The bucket's public access block settings, or None if it has none.

        Raises:
            NotSupported: the endpoint does not implement public access blocks.
            NotFound: no such bucket.
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        with self._call("reading the public access block of", ok=_NO_PUBLIC_ACCESS_BLOCK) as call:
            reply = self._s3.get_public_access_block(Bucket=self.bucket)
        if call.swallowed:
            return None
        settings = reply.get("PublicAccessBlockConfiguration", {})
        return {name: bool(settings.get(name, False)) for name in PUBLIC_ACCESS_BLOCK}

    def default_encryption(self) -> dict[str, str] | None:
        """The bucket's default encryption, ``{"SSEAlgorithm": ..., "KMSMasterKeyID": ...}``
        (the key only for KMS), or None if it has none.

        Raises:
            NotSupported: the endpoint does not implement bucket encryption settings.
            NotFound: no such bucket.
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        with self._call("reading the default encryption of", ok=_NO_ENCRYPTION) as call:
            reply = self._s3.get_bucket_encryption(Bucket=self.bucket)
        if call.swallowed:
            return None
        for rule in reply.get("ServerSideEncryptionConfiguration", {}).get("Rules", []):
            default = rule.get("ApplyServerSideEncryptionByDefault")
            if default and default.get("SSEAlgorithm"):
                found = {"SSEAlgorithm": str(default["SSEAlgorithm"])}
                if default.get("KMSMasterKeyID"):
                    found["KMSMasterKeyID"] = str(default["KMSMasterKeyID"])
                return found
        return None

    def ensure(self) -> None:
        """Create the bucket if it is missing; a bucket we own already is fine.

        Raises:
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        if not self.exists():
            self._make_bucket()
        self._bucket_known = True

    def _make_bucket(self) -> None:
        args: dict[str, Any] = {"Bucket": self.bucket}
        with self._call("creating", ok={"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}) as call:
            region = self._s3.meta.region_name
            if region and region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": region}
            self._s3.create_bucket(**args)
        if call.swallowed == "BucketAlreadyExists":
            # Some S3-compatible stores say this of a bucket we own; AWS only of someone else's.
            with self._call("checking"):
                self._s3.head_bucket(Bucket=self.bucket)
        elif call.swallowed is None:
            logger.info("created bucket %s", self.bucket)
            self._secure_new_bucket()

    def _secure_new_bucket(self) -> None:
        """Block public access to a bucket we just created and, with ``sse``, set its default
        encryption. A store that lacks a call (SeaweedFS has no public access blocks) or an
        identity that may not make it gets a warning: the bucket is usable, and `remotejob
        doctor` reports what is missing."""
        endpoint = self._client.endpoint()
        try:
            with self._call("blocking public access to"):
                self._s3.put_public_access_block(
                    Bucket=self.bucket,
                    PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK,  # type: ignore[arg-type]
                )
        except BackendUnavailable as exc:
            _warn_once(
                endpoint, "PutPublicAccessBlock",
                "bucket %s was created without a public access block (%s); make sure the store "
                "never serves it anonymously (`remotejob doctor` checks it)", self.bucket, _reason(exc),
            )
        if self.sse is None:
            return
        default: dict[str, Any] = {"SSEAlgorithm": self.sse}
        if self.kms_key_id is not None:
            default["KMSMasterKeyID"] = self.kms_key_id
        rule: Any = {"ApplyServerSideEncryptionByDefault": default}
        if self.sse == "aws:kms":
            rule["BucketKeyEnabled"] = True  # one KMS request per bucket key, not per object
        try:
            with self._call("setting the default encryption of"):
                self._s3.put_bucket_encryption(
                    Bucket=self.bucket, ServerSideEncryptionConfiguration={"Rules": [rule]}
                )
        except BackendUnavailable as exc:
            _warn_once(
                endpoint, "PutBucketEncryption",
                "bucket %s was created without default encryption (%s); remotejob still asks for "
                "%s on every object it writes", self.bucket, _reason(exc), self.sse,
            )

    def _ensure_for_upload(self) -> None:
        """Make sure of the bucket before a stream or file upload (which cannot be replayed after
        NoSuchBucket). An identity that may write objects but not check the bucket (HeadBucket
        needs s3:ListBucket, which a worker's policy may grant only for some prefixes) goes on:
        the upload itself then succeeds or says what is wrong."""
        try:
            self.ensure()
        except BackendUnavailable as exc:
            if http_status(exc) != 403:
                raise
            logger.debug("could not check bucket %s (%s); uploading anyway", self.bucket, exc)
            self._bucket_known = True

    def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store ``body``: bytes in one PUT, a file object streamed in 8 MiB parts.

        See :meth:`remotejob.backends.base.ObjectStore.put`.

        Raises:
            AlreadyExists: ``if_absent`` and the key exists.
            InvalidKey, MetadataError: the key or metadata would be refused by S3.
            ValueError: ``if_absent`` with a file object.
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        full = self._full(key)
        meta = validate_metadata(metadata or {})
        if isinstance(body, (bytearray, memoryview)):
            body = bytes(body)
        if if_absent and not isinstance(body, bytes):
            raise ValueError("if_absent=True needs a bytes body (create-once records are small)")
        extra = {"Metadata": encode_metadata(meta), "ContentType": content_type, **self._sse_args}
        if isinstance(body, os.PathLike):
            return self._upload_file(key, full, body, extra, meta)
        if not isinstance(body, bytes):
            return self._upload(key, full, body, extra, meta)
        try:
            return self._put_bytes(key, full, body, extra, if_absent, meta)
        except NoSuchBucket:
            if not self._create_bucket:
                raise
            self._make_bucket()
            return self._put_bytes(key, full, body, extra, if_absent, meta)

    def _put_bytes(
        self, key: str, full: str, body: bytes, extra: dict[str, Any], if_absent: bool,
        meta: dict[str, str],
    ) -> ObjectInfo:
        conditional: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        with self._call("writing", key, writing=True):
            reply = self._s3.put_object(Bucket=self.bucket, Key=full, Body=body, **extra, **conditional)
        self._bucket_known = True
        etag = reply.get("ETag", "").strip('"')
        return ObjectInfo(key, len(body), meta, extra["ContentType"], etag, time.time())

    def _upload(
        self, key: str, full: str, body: IO[bytes], extra: dict[str, Any], meta: dict[str, str]
    ) -> ObjectInfo:
        # A stream cannot be replayed after NoSuchBucket, so the bucket is made sure of first.
        if self._create_bucket and not self._bucket_known:
            self._ensure_for_upload()
        counting = _Counting(body)
        with self._call("writing", key, writing=True):
            self._s3.upload_fileobj(
                cast("IO[Any]", counting), self.bucket, full, ExtraArgs=extra, Config=TRANSFER
            )
        return ObjectInfo(key, counting.size, meta, extra["ContentType"], "", time.time())

    def _upload_file(
        self, key: str, full: str, path: os.PathLike[str], extra: dict[str, Any], meta: dict[str, str]
    ) -> ObjectInfo:
        # s3transfer reads a file's parts from disk in its threads, sized to the file: memory
        # stays bounded and files of any S3 size work, unlike a stream's fixed 8 MiB parts.
        if self._create_bucket and not self._bucket_known:
            self._ensure_for_upload()
        size = os.path.getsize(path)
        with self._call("writing", key, writing=True):
            self._s3.upload_file(os.fspath(path), self.bucket, full, ExtraArgs=extra, Config=TRANSFER)
        return ObjectInfo(key, size, meta, extra["ContentType"], "", time.time())

    def _info(self, key: str, reply: HeadObjectOutputTypeDef | Mapping[str, Any]) -> ObjectInfo:
        modified = reply.get("LastModified")
        return ObjectInfo(
            key=key,
            size=int(reply.get("ContentLength", 0)),
            metadata=decode_metadata(reply.get("Metadata", {})),
            content_type=str(reply.get("ContentType") or "application/octet-stream"),
            etag=str(reply.get("ETag", "")).strip('"'),
            modified=modified.timestamp() if modified else 0.0,
        )

    def get(self, key: str) -> StoredObject:
        """Open the object; its body streams from S3 as it is read.

        Raises:
            NotFound: no such key.
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        full = self._full(key)
        call = self._call("reading", key)
        with call:
            reply = self._s3.get_object(Bucket=self.bucket, Key=full)
        return _S3Object(self, full, call, reply)

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info without its body.

        Raises:
            NotFound: no such key.
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        full = self._full(key)
        with self._call("reading", key):
            reply = self._s3.head_object(Bucket=self.bucket, Key=full)
        return self._info(key, reply)

    def copy(self, source: str, key: str) -> ObjectInfo:
        """Copy an object inside the bucket, server-side (in parts above 8 MiB), keeping its
        metadata and content type.

        Raises:
            NotFound: no object at ``source``.
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        src, full = self._full(source), self._full(key)
        with self._call("reading", source):
            head = self._s3.head_object(Bucket=self.bucket, Key=src)
        with self._call("copying to", key, writing=True):
            # Multipart copies do not carry metadata over by themselves, so it is given again;
            # nor does a copy keep the source's encryption, so it is asked for again too.
            self._s3.copy(
                {"Bucket": self.bucket, "Key": src}, self.bucket, full,
                ExtraArgs={"Metadata": head.get("Metadata", {}), "ContentType": head.get("ContentType")
                           or "application/octet-stream", "MetadataDirective": "REPLACE",
                           **self._sse_args},
                Config=TRANSFER,
            )
        return dataclasses.replace(self._info(source, head), key=key, modified=time.time())

    def delete(self, key: str) -> None:
        """Delete the object; a missing key (or bucket) is fine.

        Raises:
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        full = self._full(key)
        with self._call("deleting", key, ok={"NoSuchKey", "NoSuchBucket", "404"}):
            self._s3.delete_object(Bucket=self.bucket, Key=full)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix`` (and sorts after ``start_after``),
        in S3's (byte) order.

        Raises:
            BackendUnavailable: S3 cannot be reached, or refuses us.
        """
        full = self.prefix + prefix
        with self._call(f"listing {full!r} in", ok={"NoSuchBucket"}):
            paginator = self._s3.get_paginator("list_objects_v2")
            pages = (paginator.paginate(Bucket=self.bucket, Prefix=full, StartAfter=self.prefix + start_after)
                     if start_after else paginator.paginate(Bucket=self.bucket, Prefix=full))
            for page in pages:
                for item in page.get("Contents", []):
                    modified = item.get("LastModified")
                    yield ObjectInfo(
                        key=item["Key"][len(self.prefix) :],
                        size=int(item.get("Size", 0)),
                        etag=str(item.get("ETag", "")).strip('"'),
                        modified=modified.timestamp() if modified else 0.0,
                    )


def _reason(exc: BaseException) -> str:
    """Why a bucket setting failed, in a few words (the AWS error code, never a secret)."""
    cause = exc.__cause__
    code = error_code(cause) if isinstance(cause, ClientError) else ""
    if isinstance(exc, NotSupported):
        return f"the endpoint does not support it: {code or 'NotImplemented'}"
    return f"refused: {code}" if code else str(exc)


class _Counting:
    """A readable wrapper that counts the bytes an upload read, so no HEAD is needed after."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self.size += len(chunk)
        return chunk


class _Body(io.RawIOBase):
    """A botocore StreamingBody as a raw binary stream, its failures translated like any call."""

    def __init__(self, body: Any, call: Translate) -> None:
        super().__init__()
        self._body = body
        self._call = call

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._call:
            data: bytes = self._body.read(len(buffer))
        view = memoryview(buffer).cast("B")
        view[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        data = b""
        with self._call:
            data = self._body.read()
        return data

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


_CHANGED_ATTEMPTS = 3
"""Downloads started over because the object was replaced (or deleted) under them, at most."""
_PART_ATTEMPTS = 4
"""Reads of one part, resumed where they stopped after a lost connection, at most."""
_STREAM_ERRORS = (ReadTimeoutError, ResponseStreamingError, IncompleteReadError, ConnectionClosedError)
_IO_CHUNK = 1024 * 1024
_GONE = {"PreconditionFailed", "412", "NoSuchKey", "NotFound", "404"}


class _Changed(Exception):
    """The object is no longer the version the download started on (If-Match failed)."""


class _NoRanges(Exception):
    """The endpoint answered a ranged GET with other bytes than asked for."""


class _S3Object(StoredObject):
    """An S3 object opened by one GET: :meth:`open` and :meth:`read` stream that response.

    :meth:`save` of a body larger than ``S3Store.download_part_size`` writes it in parts at
    their offsets, ``download_concurrency`` ranged GETs at a time (the first part from the open
    response), each pinned with ``If-Match`` to the ETag of the first GET so that a body replaced
    meanwhile cannot yield a mix of two versions: the download then starts over on the new one.
    The bytes are handed on in order, read back from the file as the parts fill it, so the
    caller's SHA-256 check runs alongside the download; memory stays at about one chunk per
    thread whatever the size.
    """

    def __init__(self, store: S3Store, full: str, call: Translate, reply: Mapping[str, Any]) -> None:
        self._store, self._full, self._call = store, full, call
        self._body: Any = reply["Body"]
        self._etag = str(reply.get("ETag") or "")
        info = store._info(full[len(store.prefix) :], reply)
        super().__init__(info, io.BufferedReader(_Body(self._body, call), _READ_BUFFER))

    def _fill(self, fd: int) -> Generator[bytes | memoryview, None, None]:
        attempt = 0
        while True:
            attempt += 1
            try:
                if self.size <= self._store.download_part_size or not self._etag or self._opened is not None:
                    yield from super()._fill(fd)
                else:
                    yield from self._parts(fd)
                return
            except _NoRanges:
                logger.warning("S3 at %s does not serve byte ranges as asked: downloads stream",
                               self._store.endpoint())
                self._store.download_part_size = 1 << 62
                self._stream.close()
            except _Changed:
                self._stream.close()
                if attempt == _CHANGED_ATTEMPTS:
                    raise BackendUnavailable(
                        f"S3 at {self._store.endpoint()}: {self._call.subject} was replaced "
                        f"{attempt} times while being downloaded; try again"
                    ) from None
                logger.info("%s was replaced while being downloaded; starting over", self._call.subject)
            os.ftruncate(fd, 0)
            yield b""  # the caller discards what it had
            self._reopen()

    def _reopen(self) -> None:
        with self._call:
            reply = self._store._s3.get_object(Bucket=self._store.bucket, Key=self._full)
        self._body, self._etag = reply["Body"], str(reply.get("ETag") or "")
        self.info = self._store._info(self.key, reply)
        self._stream = io.BufferedReader(_Body(self._body, self._call), _READ_BUFFER)

    def _ranged(self, start: int, end: int) -> Any:
        """The body of a GET of bytes ``start`` to ``end - 1`` of the version being downloaded.

        Raises:
            _Changed: that version is gone (replaced or deleted).
        """
        with self._call:
            try:
                reply = self._store._s3.get_object(
                    Bucket=self._store.bucket, Key=self._full, Range=f"bytes={start}-{end - 1}",
                    IfMatch=self._etag,
                )
            except ClientError as exc:
                if error_code(exc) in _GONE or http_status(exc) in (404, 412):
                    raise _Changed from exc
                raise
        body = reply["Body"]
        if str(reply.get("ETag") or "") != self._etag:  # an endpoint that ignored If-Match
            body.close()
            raise _Changed
        if str(reply.get("ContentRange") or "") != f"bytes {start}-{end - 1}/{self.size}":
            body.close()
            raise _NoRanges
        return body

    def _parts(self, fd: int) -> Generator[memoryview, None, None]:
        download = _Download(self, fd)
        threads = [
            threading.Thread(target=download.work, name=f"remotejob-download-{n}", daemon=True)
            for n in range(min(download.count, download.threads))
        ]
        buffer = memoryview(bytearray(_IO_CHUNK))
        try:
            for thread in threads:
                thread.start()
            done = 0
            while done < self.size:
                ready = download.wait_past(done)
                while done < ready:
                    n = os.preadv(fd, [buffer[: min(_IO_CHUNK, ready - done)]], done)
                    if n <= 0:
                        raise OSError(f"could not read back the file being downloaded at byte {done}")
                    yield buffer[:n]
                    done += n
        finally:
            download.stop()
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            self._body.close()
            buffer.release()


class _Download:
    """The shared state of one parallel download: which parts are taken, how far each is
    written, the first failure."""

    def __init__(self, obj: _S3Object, fd: int) -> None:
        self.obj, self.fd, self.size = obj, fd, obj.size
        # At least download_part_size; larger for a large body (up to 4 times), while each thread
        # still gets about 4 parts: fewer requests, each costing botocore about 2 ms of CPU.
        self.threads = max(1, obj._store.download_concurrency)
        floor = obj._store.download_part_size
        self.part = max(floor, min(4 * floor, -(-self.size // (4 * self.threads))))
        self.count = -(-self.size // self.part)
        self._written = [0] * self.count
        self._complete = 0
        """Parts 0 .. _complete-1 are written whole."""
        self._next = 0
        self._error: BaseException | None = None
        self._stopped = False
        self._cond = threading.Condition()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True

    def work(self) -> None:
        """A thread's loop: take the next part not yet taken and write it, until none is left."""
        try:
            while True:
                with self._cond:
                    if self._stopped or self._error is not None or self._next >= self.count:
                        return
                    index = self._next
                    self._next += 1
                self._write_part(index)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            with self._cond:
                if self._error is None:
                    self._error = exc
                self._cond.notify_all()

    def wait_past(self, offset: int) -> int:
        """Wait until more than the first ``offset`` bytes are written; return how many are.

        Raises:
            The first failure of a part.
        """
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                while self._complete < self.count and self._written[self._complete] == self._length(
                    self._complete
                ):
                    self._complete += 1
                ready = self.size if self._complete == self.count else (
                    self._complete * self.part + self._written[self._complete]
                )
                if ready > offset:
                    return ready
                self._cond.wait()

    def _length(self, index: int) -> int:
        return min(self.part, self.size - index * self.part)

    def _write_part(self, index: int) -> None:
        start = index * self.part
        end = start + self._length(index)
        position, failures = start, 0
        body = self.obj._body if index == 0 else None
        while position < end:
            try:
                if body is None:
                    body = self.obj._ranged(position, end)
                while position < end:
                    if self._stopped:
                        return
                    data = body.read(min(_IO_CHUNK, end - position))
                    if not data:
                        raise IncompleteReadError(actual_bytes=position - start, expected_bytes=end - start)
                    write_at(self.fd, data, position)
                    position += len(data)
                    with self._cond:
                        self._written[index] = position - start
                        self._cond.notify_all()
            except _STREAM_ERRORS as exc:
                failures += 1
                if failures >= _PART_ATTEMPTS:
                    error = self.obj._call.error(exc)
                    raise (error or exc) from exc
                logger.debug("part %d of %s: %s; resuming at byte %d", index, self.obj._call.subject,
                             type(exc).__name__, position)
            finally:
                if body is not None and position < end:  # stopped or failed: drop the rest
                    if body is not self.obj._body:  # (the first GET's is closed by _parts)
                        body.close()
                    body = None
