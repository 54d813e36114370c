"""Turning what callers pass as a ``body`` into something a store can stream.

A body may be bytes, str (stored as UTF-8), a path (``os.PathLike``) or a binary file object.
Files are streamed in chunks, never read whole; :class:`HashingReader` computes the SHA-256 and
size of whatever passes through it, so hashing costs no second read.
"""

from __future__ import annotations

import hashlib
import io
import mimetypes
import os
import threading
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from .errors import IntegrityError, NotFound
from .limits import validate_key, validate_metadata

if TYPE_CHECKING:  # base.py imports this module's readers when a body is opened
    from .backends.base import Body

_SAVE_CHUNK = 1024 * 1024

BodyLike = bytes | bytearray | memoryview | str | os.PathLike[str] | IO[bytes]
"""What the public API accepts as a body."""


class HashingReader(io.RawIOBase):
    """A read-only binary stream that hashes and counts what is read through it."""

    def __init__(self, source: IO[bytes]) -> None:
        super().__init__()
        self._source = source
        self._sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        chunk = self._source.read(len(view))
        if not chunk:
            return 0
        n = len(chunk)
        view[:n] = chunk
        self._sha256.update(chunk)
        self.size += n
        return n

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read() if size is None or size < 0 else self._source.read(size)
        if chunk:
            self._sha256.update(chunk)
            self.size += len(chunk)
        return bytes(chunk or b"")

    def hexdigest(self) -> str:
        """SHA-256 of everything read so far, as hex."""
        return self._sha256.hexdigest()


class VerifyingReader(io.RawIOBase):
    """A read-only stream that raises :class:`IntegrityError` at its end if what was read does
    not have the SHA-256 recorded for it."""

    def __init__(self, source: IO[bytes], sha256: str, what: str) -> None:
        super().__init__()
        self._reader = HashingReader(source)
        self._source = source
        self._expected = sha256
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._reader.readinto(buffer)
        if n == 0:
            self._check()
        return n

    def read(self, size: int = -1) -> bytes:
        chunk = self._reader.read(size)
        if not chunk or size is None or size < 0:
            self._check()
        return chunk

    def close(self) -> None:
        self._source.close()
        super().close()

    def _check(self) -> None:
        if self._reader.hexdigest() != self._expected:
            raise _mismatch(self._what, self._reader.size)


def _mismatch(what: str, size: int) -> IntegrityError:
    return IntegrityError(
        f"{what} does not match the SHA-256 recorded when it was written "
        f"(read {size} bytes): the stored copy was damaged or altered"
    )


def verified(stream: IO[bytes], sha256: str | None, what: str) -> BinaryIO:
    """``stream``, checked against ``sha256`` at its end when one is recorded."""
    if sha256 is None:
        return stream  # type: ignore[return-value]
    return io.BufferedReader(VerifyingReader(stream, sha256, what), 1024 * 1024)


def check_body(value: object, what: str = "body") -> None:
    """Reject a body the store cannot take before anything is written.

    Raises:
        TypeError: not bytes, str, a path or a binary file object; or a text-mode file.
        NotFound: a path that does not exist.
    """
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return
    if isinstance(value, os.PathLike):
        if not os.path.isfile(value):
            raise NotFound(f"{what} path {os.fspath(value)!r} is not a readable file")
        return
    if isinstance(value, io.TextIOBase) or "b" not in getattr(value, "mode", "b"):
        raise TypeError(f"{what} is a text-mode file: open it in binary mode ('rb')")
    if not callable(getattr(value, "read", None)):
        raise TypeError(
            f"{what} must be bytes, str, a path (os.PathLike) or a binary file object, "
            f"not {type(value).__name__}"
        )


@dataclass
class Prepared:
    """A body ready for ``ObjectStore.put``: bytes kept as bytes, paths passed on for the store
    to read itself, streams wrapped to hash what the store reads."""

    body: Body
    reader: HashingReader | None = None

    @property
    def sha256(self) -> str:
        """SHA-256 hex of the body; for a stream, valid once the store has read it to the end."""
        if self.reader is not None:
            return self.reader.hexdigest()
        if isinstance(self.body, os.PathLike):
            digest = hashlib.sha256()
            with open(self.body, "rb") as handle:
                while chunk := handle.read(1024 * 1024):
                    digest.update(chunk)
            return digest.hexdigest()
        return hashlib.sha256(self.body).hexdigest()  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        """Body size in bytes (for a stream, once read)."""
        if self.reader is not None:
            return self.reader.size
        if isinstance(self.body, os.PathLike):
            return os.path.getsize(self.body)
        return len(self.body)  # type: ignore[arg-type]


@contextmanager
def open_body(value: BodyLike, what: str = "body") -> Iterator[Prepared]:
    """Yield ``value`` prepared for a store (checked with :func:`check_body` first)."""
    check_body(value, what)
    if isinstance(value, str):
        yield Prepared(value.encode("utf-8"))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        yield Prepared(bytes(value))
    elif isinstance(value, os.PathLike):
        yield Prepared(value)
    else:
        reader = HashingReader(value)
        yield Prepared(reader, reader)  # type: ignore[arg-type]


def save_atomically(
    path: str | os.PathLike[str],
    fill: Callable[[int], Generator[bytes | memoryview, None, None]],
    sha256: str | None,
    what: str,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write a body into ``path`` atomically and return its size: ``fill(fd)`` writes it into a
    temporary file in the same folder and yields it in order (see ``StoredObject._fill``); what
    it yields is hashed and, with ``sha256``, checked before the file is renamed to ``path``.
    On any failure the temporary file is removed and ``path`` is left as it was.

    Raises:
        IntegrityError: the body does not match ``sha256``.
    """
    target = os.fspath(path)
    tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.part"
    digest, size = hashlib.sha256(), 0
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        try:
            with closing(fill(fd)) as chunks:
                for chunk in chunks:
                    if not chunk:  # the object was replaced: its writer starts over
                        if progress is not None and size:
                            progress(-size)
                        digest, size = hashlib.sha256(), 0
                        continue
                    digest.update(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
        finally:
            os.close(fd)
        if sha256 is not None and digest.hexdigest() != sha256:
            raise _mismatch(what, size)
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return size


def copy_to_file(stream: IO[bytes], path: str | os.PathLike[str]) -> int:
    """Stream ``stream`` into ``path`` atomically (see :func:`save_atomically`); return its size."""
    return save_atomically(path, stream_into(stream), None, "body")


def stream_into(stream: IO[bytes]) -> Callable[[int], Generator[bytes | memoryview, None, None]]:
    """A ``fill`` for :func:`save_atomically` that copies ``stream`` into the file, in order."""

    def fill(fd: int) -> Generator[bytes | memoryview, None, None]:
        while chunk := stream.read(_SAVE_CHUNK):
            write_at(fd, chunk, None)
            yield chunk

    return fill


def write_at(fd: int, data: bytes | memoryview, offset: int | None) -> None:
    """Write all of ``data`` to ``fd``: at ``offset`` (``os.pwrite``), or at its position."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


@dataclass
class Entry:
    """A ``store()`` or asset mapping taken apart: key, body, metadata and content type."""

    key: str | None
    body: BodyLike
    metadata: dict[str, str]
    content_type: str


RESERVED = ("key", "body", "content_type")


def parse_entry(data: Mapping[str, Any], what: str = "data") -> Entry:
    """Split a mapping like ``{"body": b"..", "filename": "cat.jpg", "name": "Cat"}``.

    ``body`` is the content, ``key`` names it, ``content_type`` overrides the type guessed from
    ``filename``; every other entry is metadata (``filename`` included) and must be a str.

    Raises:
        ValueError: not a mapping, or no ``body``.
        TypeError: a body of the wrong type.
        MetadataError: metadata that is not text or over S3's 2 KB.
        InvalidKey: a ``key`` S3 would refuse.
    """
    if not isinstance(data, Mapping) or "body" not in data:
        raise ValueError(f"{what} must be a mapping with a 'body' entry, got {data!r:.80}")
    key = data.get("key")
    if key is not None:
        validate_key(key)
    check_body(data["body"], what)
    metadata = validate_metadata({k: v for k, v in data.items() if k not in RESERVED})
    content_type = data.get("content_type")
    if content_type is not None and not isinstance(content_type, str):
        raise TypeError(f"{what}: content_type must be a str")
    filename = metadata.get("filename")
    guessed = mimetypes.guess_type(filename)[0] if filename else None
    return Entry(key, data["body"], metadata, content_type or guessed or "application/octet-stream")
