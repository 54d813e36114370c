"""The embedded object store: a folder of blob files indexed by SQLite.

Layout under the root folder::

    index.db        key -> (blob file, size, metadata, content type, etag, modified), WAL mode
    blobs/<hex>     one file per object body, named at random

Blob names never derive from keys, so a key cannot escape the folder, distinct keys never collide
and keys may be as long as S3 allows. Keys are stored as UTF-8 BLOBs, which SQLite compares
byte by byte: ``list`` returns S3's order. A body is written and fsynced under a fresh name before
the index row that points to it is committed, so readers see the old object or the new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

from ..errors import AlreadyExists, NotFound
from ..limits import validate_key, validate_metadata
from ._sqlite import Database, translate_errors
from .base import Body, ObjectInfo, StoredObject

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
"""Bytes read from a body file object at a time."""

_PAGE = 1000
"""Index rows fetched per query while listing (as S3 pages its listings)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    content_type TEXT NOT NULL,
    etag TEXT NOT NULL,
    modified REAL NOT NULL
) WITHOUT ROWID;
"""

_INSERT = (
    "INSERT INTO objects (key, blob, size, metadata, content_type, etag, modified) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_REPLACE = (
    "INSERT OR REPLACE INTO objects (key, blob, size, metadata, content_type, etag, modified) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT key, blob, size, metadata, content_type, etag, modified FROM objects WHERE key = ?"
_LIST = (
    "SELECT key, blob, size, metadata, content_type, etag, modified FROM objects "
    "WHERE key >= ? AND key > ? ORDER BY key LIMIT ?"
)
_LIST_TO = (
    "SELECT key, blob, size, metadata, content_type, etag, modified FROM objects "
    "WHERE key >= ? AND key > ? AND key < ? ORDER BY key LIMIT ?"
)
_Row = tuple[bytes, str, int, str, str, str, float]


class LocalStore:
    """An :class:`~remotejob.backends.base.ObjectStore` in a local folder, safe across processes.

    Example::

        store = LocalStore("/var/lib/jobs/store")
        store.put("in/cat.jpg", b"...", {"owner": "ana"}, "image/jpeg")
        with store.get("in/cat.jpg") as obj:
            data = obj.read()
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        """Use the folder ``root``; it and its index are created on first use.

        Args:
            root: The store's folder.
        """
        self.root = Path(root).absolute()
        self.location = f"file://{self.root}"
        self._blobs = self.root / "blobs"
        self._db = Database(self.root / "index.db", _SCHEMA, prepare=self._make_folders)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _make_folders(self) -> None:
        self._blobs.mkdir(parents=True, exist_ok=True)

    def _errors(self, action: str) -> AbstractContextManager[None]:
        return translate_errors(
            self.location, action, "check that the folder exists, is a folder, is writable and has free space"
        )

    def ensure(self) -> None:
        """Create the folder, its ``blobs`` folder and the index if missing.

        Raises:
            BackendUnavailable: the folder cannot be created or written.
        """
        with self._errors("creating the store"):
            self._make_folders()
            self._db.connection()

    def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        if_absent: bool = False,
    ) -> ObjectInfo:
        """Store ``body`` under ``key``; readers see the old object or the new one, never a part.

        ``body`` is bytes or a binary file object, read in 1 MiB chunks until EOF.

        Raises:
            AlreadyExists: ``if_absent`` and the key exists (the existing object is untouched).
            InvalidKey, MetadataError: the key or metadata would be refused by S3.
            TypeError: ``body`` is neither bytes nor a binary file object, or is a file object
                while ``if_absent`` is set (create-once writes take bytes, as on S3).
            BackendUnavailable: the folder or index cannot be written.
        """
        validate_key(key)
        checked = validate_metadata(metadata or {})
        if not isinstance(content_type, str) or not content_type:
            raise TypeError(f"content_type must be a non-empty str, got {content_type!r}")
        is_bytes = isinstance(body, bytes | bytearray | memoryview)
        if not is_bytes and not isinstance(body, os.PathLike) and not callable(getattr(body, "read", None)):
            raise TypeError(f"body must be bytes or a binary file object, got {type(body).__name__}")
        if if_absent and not is_bytes:
            raise TypeError("if_absent=True needs the body as bytes, as S3's conditional put does")
        with self._errors(f"writing {key!r}"):
            self._db.connection()
            blob, size, etag = self._write_blob(body)
            info = ObjectInfo(key, size, checked, content_type, etag, time.time())
            self._commit((key.encode(), blob, size, json.dumps(checked), content_type, etag, info.modified),
                         if_absent)
            return info

    def _commit(self, row: _Row, if_absent: bool) -> None:
        """Index the row whose blob is written: on failure the blob goes, on success the one
        it replaced."""
        try:
            replaced = self._index(row, if_absent)
        except BaseException:
            self._unlink(row[1])
            raise
        if replaced is not None:
            self._unlink(replaced)

    def _index(self, row: _Row, if_absent: bool) -> str | None:
        """Insert the row in one transaction; return the blob it replaced, if any."""
        with self._db.transaction() as conn:
            if if_absent:
                try:
                    conn.execute(_INSERT, row)
                except sqlite3.IntegrityError:
                    raise AlreadyExists(
                        f"object {row[0].decode()!r} already exists in {self.location}"
                    ) from None
                return None
            old = conn.execute("SELECT blob FROM objects WHERE key = ?", (row[0],)).fetchone()
            conn.execute(_REPLACE, row)
            return None if old is None else str(old[0])

    def _write_blob(self, body: Body) -> tuple[str, int, str]:
        """Write the body to a new blob file, durably; return its name, size and MD5 hex."""
        name = secrets.token_hex(16)
        partial = self._blobs / f"{name}.part"
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        try:
            with open(partial, "xb") as out:
                for chunk in _chunks(body):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, self._blobs / name)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_folder(self._blobs)
        return name, size, digest.hexdigest()

    def _unlink(self, blob: str) -> None:
        try:
            (self._blobs / blob).unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove blob %s from %s: %s", blob, self.location, exc)

    def get(self, key: str) -> StoredObject:
        """Open the object for streaming; close the result to release the file.

        Raises:
            NotFound: no such key.
            InvalidKey: a key S3 would refuse.
            BackendUnavailable: the folder or index cannot be read.
        """
        validate_key(key)
        with self._errors(f"reading {key!r}"):
            row = self._row(key)
            try:
                stream = open(self._blobs / row[1], "rb")
            except FileNotFoundError:
                # Overwritten or deleted between the index read and the open: read the index again.
                row = self._row(key)
                stream = open(self._blobs / row[1], "rb")
            return StoredObject(_info(row), stream)

    def head(self, key: str) -> ObjectInfo:
        """Return the object's info without opening its body.

        Raises:
            NotFound: no such key.
            InvalidKey: a key S3 would refuse.
            BackendUnavailable: the folder or index cannot be read.
        """
        validate_key(key)
        with self._errors(f"reading {key!r}"):
            return _info(self._row(key))

    def copy(self, source: str, key: str) -> ObjectInfo:
        """Copy the object at ``source`` to ``key`` (a hard link to its blob where possible).

        Raises:
            NotFound: no object at ``source``.
            InvalidKey: a key S3 would refuse.
            BackendUnavailable: the folder or index cannot be written.
        """
        validate_key(source)
        validate_key(key)
        with self._errors(f"copying {source!r} to {key!r}"):
            row = self._row(source)
            blob = self._link_blob(row[1])
            info = ObjectInfo(key, row[2], json.loads(row[3]), row[4], row[5], time.time())
            self._commit((key.encode(), blob, row[2], row[3], row[4], row[5], info.modified), if_absent=False)
            return info

    def _link_blob(self, blob: str) -> str:
        """A new blob name with the same bytes as ``blob`` (blobs are never modified in place)."""
        name = secrets.token_hex(16)
        try:
            os.link(self._blobs / blob, self._blobs / name)
        except FileNotFoundError:
            raise NotFound(f"the object was replaced while being copied in {self.location}") from None
        except OSError:  # a file system without hard links
            with open(self._blobs / blob, "rb") as source:
                return self._write_blob(source)[0]
        _fsync_folder(self._blobs)
        return name

    def _row(self, key: str) -> _Row:
        conn = self._db.connection()
        row = conn.execute(_SELECT, (key.encode(),)).fetchone()
        if row is None:
            raise NotFound(f"no object {key!r} in {self.location}")
        return row  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error.

        Raises:
            InvalidKey: a key S3 would refuse.
            BackendUnavailable: the folder or index cannot be written.
        """
        validate_key(key)
        with self._errors(f"deleting {key!r}"):
            with self._db.transaction() as conn:
                row = conn.execute("SELECT blob FROM objects WHERE key = ?", (key.encode(),)).fetchone()
                conn.execute("DELETE FROM objects WHERE key = ?", (key.encode(),))
            if row is not None:
                self._unlink(str(row[0]))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix``, in byte order of the UTF-8 key.

        Pages through the index, so objects may be deleted while listing.

        Raises:
            BackendUnavailable: the folder or index cannot be read.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        start = prefix.encode()
        end = _prefix_end(start)
        after = b""
        while True:
            with self._errors(f"listing {prefix!r}"):
                conn = self._db.connection()
                if end is None:
                    rows = conn.execute(_LIST, (start, after, _PAGE)).fetchall()
                else:
                    rows = conn.execute(_LIST_TO, (start, after, end, _PAGE)).fetchall()
            for row in rows:
                yield _info(row)
            if len(rows) < _PAGE:
                return
            after = rows[-1][0]


def _chunks(body: Body) -> Iterator[bytes]:
    if isinstance(body, bytes | bytearray | memoryview):
        yield bytes(body)
        return
    if isinstance(body, os.PathLike):
        with open(body, "rb") as handle:
            yield from _chunks(handle)
        return
    stream: IO[bytes] = body
    while True:
        chunk = stream.read(CHUNK)
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise TypeError(f"body file object returned {type(chunk).__name__}: open it in binary mode")
        yield bytes(chunk)


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _info(row: _Row) -> ObjectInfo:
    key, _blob, size, metadata, content_type, etag, modified = row
    return ObjectInfo(key.decode(), size, json.loads(metadata), content_type, etag, modified)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
