"""The two seams every backend implements, and the small data types they exchange.

Shaped after S3 and SQS so the AWS backend stays thin and the embedded one honest. No logic
lives here beyond :class:`StoredObject`'s stream handling.

Keys passed to an :class:`ObjectStore` are relative to the store's root (an AWS store adds its
bucket prefix); the caller has already checked them with :func:`remotejob.limits.validate_key`,
and the store checks them again, so no backend can be handed a key AWS would refuse.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, BinaryIO, Protocol, runtime_checkable

Body = bytes | IO[bytes] | os.PathLike[str]
"""What a store writes: bytes, a binary stream read to its end, or a file the store reads itself
(so S3 can upload its parts in parallel straight from disk, with bounded memory)."""
"""What an ObjectStore accepts: bytes, or a binary file object read in chunks until EOF."""


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows of one object without reading its body."""

    key: str
    size: int
    metadata: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/octet-stream"
    etag: str = ""
    modified: float = 0.0
    """Last-modified time, seconds since the epoch."""


class StoredObject:
    """An object read from a store: its info and its body as a stream.

    Read the body once, with :meth:`read` (all of it), :meth:`open` (a binary file object to
    stream from) or :meth:`save` (into a file); use it as a context manager, or call
    :meth:`close`, to release the stream. After :meth:`checked`, each of them checks the body
    against a recorded SHA-256.

    A store may subclass it to fill a file faster than one stream can (:meth:`_fill`): the S3
    store fetches a large body's parts in parallel.
    """

    def __init__(self, info: ObjectInfo, stream: BinaryIO) -> None:
        self.info = info
        self._stream = stream
        self._sha256: str | None = None
        self._what = f"object {info.key!r}"
        self._opened: BinaryIO | None = None

    @property
    def key(self) -> str:
        """The object's key, as the caller named it."""
        return self.info.key

    @property
    def metadata(self) -> dict[str, str]:
        """User metadata, exactly as stored."""
        return self.info.metadata

    @property
    def content_type(self) -> str:
        """The MIME type the object was stored with."""
        return self.info.content_type

    @property
    def size(self) -> int:
        """Body size in bytes."""
        return self.info.size

    def checked(self, sha256: str | None, what: str | None = None) -> StoredObject:
        """Check the body against ``sha256`` however it is read, and return this object.

        :meth:`open` and :meth:`read` raise :class:`~remotejob.errors.IntegrityError` on the read
        that reaches the end of a body that does not match, before end-of-file is returned;
        :meth:`save` raises it and leaves nothing at its path. None checks nothing.
        ``what`` names the body in the error (default: the object and its key).
        """
        if sha256 is not None:
            self._sha256 = sha256
            self._what = what or self._what
        return self

    def open(self) -> BinaryIO:
        """Return the body as a binary file object, streamed from the store."""
        if self._opened is None:
            from ..bodies import verified  # bodies imports this module

            self._opened = verified(self._stream, self._sha256, self._what)
        return self._opened

    def read(self) -> bytes:
        """Read and return the whole body, then close the stream."""
        try:
            return self.open().read()
        finally:
            self.close()

    def save(self, path: str | os.PathLike[str], progress: Callable[[int], None] | None = None) -> None:
        """Write the body into the file at ``path``, then close.

        The file is written under a temporary name in the same folder and renamed to ``path``
        once complete (and checked, after :meth:`checked`): if reading fails or the bytes do not
        match, nothing is left at ``path`` and a file already there is untouched.
        ``progress``, if given, is called with the number of bytes each step added.

        Raises:
            IntegrityError: after :meth:`checked`, the body does not match its SHA-256.
        """
        from ..bodies import save_atomically  # bodies imports this module

        try:
            save_atomically(path, self._fill, self._sha256, self._what, progress)
        finally:
            self.close()

    def _fill(self, fd: int) -> Generator[bytes | memoryview, None, None]:
        """Write the whole body into ``fd`` (a new, empty file open for reading and writing) from
        offset 0, and yield all of it, in order, as it is written (each chunk valid until the
        next is asked for). A store whose object was replaced while it was being written
        yields an empty chunk and starts again from offset 0 with the new one."""
        from ..bodies import stream_into  # bodies imports this module

        yield from stream_into(self._stream)(fd)

    def close(self) -> None:
        """Release the body stream."""
        if self._opened is not None:
            self._opened.close()
        self._stream.close()

    def __enter__(self) -> StoredObject:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StoredObject(key={self.key!r}, size={self.size}, content_type={self.content_type!r})"


@runtime_checkable
class ObjectStore(Protocol):
    """Where job inputs, outputs and status records live (S3, or a local folder)."""

    location: str
    """A human-readable location for messages, e.g. ``s3://bucket/prefix`` (never a secret)."""

    def ensure(self) -> None:
        """Create the bucket or folder if it is missing; existing ones are fine."""

    def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store ``body`` under ``key`` atomically: readers see the old object or the new one.

        With ``if_absent=True`` the write is create-once (S3 ``If-None-Match: *``); ``body`` must
        then be bytes.

        Raises:
            AlreadyExists: ``if_absent`` and the key exists.
            InvalidKey, MetadataError: the key or metadata would be refused by S3.
        """

    def get(self, key: str) -> StoredObject:
        """Open the object for streaming.

        Raises:
            NotFound: no such key.
        """

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info without its body.

        Raises:
            NotFound: no such key.
        """

    def copy(self, source: str, key: str) -> ObjectInfo:
        """Copy the object at ``source`` to ``key`` inside the store (server-side on S3), with
        its metadata and content type; an object at ``key`` is replaced atomically.

        Raises:
            NotFound: no object at ``source``.
        """

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error."""

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in byte order of the whole key,
        only those whose key sorts after ``start_after`` when given (S3's ``StartAfter``).

        Listed infos carry key, size, etag and modified time; metadata may be empty.
        """


GONE = "gone"
"""A batch entry's error code (``BatchPartlyFailed.failed``): the delivery was deleted or received
again since its receipt was issued."""
CAPPED = "visibility-cap"
"""A batch entry's error code: the visibility would end more than 12 hours after the delivery was
received (SQS's cap), so it was not changed."""


@dataclass(frozen=True)
class QueueAttributes:
    """How a queue behaves; applied when the queue is created."""

    visibility_s: int = 30
    """Default visibility timeout for received messages."""
    wait_s: int = 20
    """Default long-poll wait (ReceiveMessageWaitTimeSeconds)."""
    retention_s: int = 4 * 24 * 3600
    """How long an unreceived message is kept."""
    dead_letter: str | None = None
    """Name of the queue that messages move to after ``max_receive_count`` receives."""
    max_receive_count: int | None = None


@dataclass(frozen=True)
class Message:
    """One delivery of a message: a fresh receipt every time it is received."""

    body: str
    message_id: str
    receipt: str
    receive_count: int
    sent_at: float
    """When the message was first sent, seconds since the epoch."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One entry of a :meth:`MessageQueue.send_batch`."""

    body: str
    delay_s: int = 0


@dataclass(frozen=True)
class QueueDepth:
    """Approximate message counts of a queue, as SQS reports them."""

    waiting: int
    in_flight: int
    delayed: int
    oldest_age_s: float | None = field(default=None, compare=False)
    """Seconds since the oldest message in the queue (waiting, in flight or delayed) was sent;
    0 when the queue is empty. None where the backend cannot tell cheaply: SQS's
    GetQueueAttributes has no such attribute (on AWS it is CloudWatch's
    ``ApproximateAgeOfOldestMessage``). Not part of equality: counts compare alike on every
    backend."""


@runtime_checkable
class MessageQueue(Protocol):
    """Named queues with SQS semantics: at-least-once delivery, visibility timeouts, receipts."""

    location: str
    """A human-readable location for messages, e.g. ``sqs://us-east-1`` (never a secret)."""

    def ensure(self, names: Sequence[str], attributes: QueueAttributes) -> None:
        """Create the named queues if missing (existing queues are fine)."""

    def send(self, queue: str, body: str, delay_s: int = 0) -> str:
        """Send one message and return its message id.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: the body exceeds the queue's maximum size.
        """

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Send 1-10 messages in one request and return their message ids, in order.

        Raises:
            BatchPartlyFailed: some entries were refused (``failed``); the others were sent
                (``done`` holds their message ids).
            UncertainResult: the reply was lost: any entry may have been sent.
        """

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        wait_s: float = 0,
        visibility_s: int | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (1-10), long-polling up to ``wait_s`` (0-20) seconds.

        Received messages stay in the queue, invisible for ``visibility_s`` (default: the
        queue's), until deleted. A backend that can cut a long poll short returns what it has
        (usually nothing) soon after ``cancel`` is set; SQS cannot, so its poll runs its course.
        """

    def delete(self, queue: str, receipt: str) -> None:
        """Delete the delivery named by ``receipt``; a stale receipt of a gone message is a no-op."""

    def delete_batch(self, queue: str, receipts: Sequence[str]) -> None:
        """Delete 1-10 deliveries in one request."""

    def change_visibility(self, queue: str, receipt: str, seconds: int) -> None:
        """Make the delivery visible again after ``seconds`` (0 = now) from this moment.

        Raises:
            InvalidReceipt: the delivery is gone.
            VisibilityLimit: that would end more than 12 hours after the delivery was received.
        """

    def change_visibility_batch(self, queue: str, entries: Sequence[tuple[str, int]]) -> list[int]:
        """``change_visibility`` for 1-10 ``(receipt, seconds)`` entries in one request.

        Returns the indices of the entries whose delivery is gone (deleted, or received again
        since); the others were changed.

        Raises:
            BatchPartlyFailed: some entries failed for another reason (``failed`` maps every
                failed entry, gone ones included, to its code: :data:`GONE`, :data:`CAPPED` or
                the service's); the others were changed.
        """

    def depth(self, queue: str) -> QueueDepth:
        """Return the queue's approximate message counts."""

    def purge(self, queue: str) -> None:
        """Delete every message in the queue."""
