"""The embedded object store: a folder of blob files indexed by SQLite.

Layout under the root folder::

    index.db        key -> (blob file, size, metadata, content type, etag, modified, data), WAL mode
    blobs/<hex>     one file per object body too large to be inline, named at random

A body given as bytes of at most :data:`INLINE_MAX` bytes is *inline*: it is the row's ``data``
and the row's ``blob`` is :data:`_INLINE` (``"inline"``), so a small put is one SQLite transaction,
durable through SQLite's write-ahead log, and writes no file. Every other body (larger bytes, file
objects, paths) is a blob file, and its row's ``data`` is NULL. A row is inline exactly when its
``data`` is not NULL and its ``blob`` is the marker; any other row must name a blob. An index
written before inline bodies existed gains the ``data`` column when first opened.

Blob names never derive from keys, so a key cannot escape the folder, distinct keys never collide
and keys may be as long as S3 allows. Keys are stored as UTF-8 BLOBs, which SQLite compares
byte by byte: ``list`` returns S3's order. A body is written and fsynced under a fresh name before
the index row that points to it is committed, so readers see the old object or the new one.

Nothing inside the folder is trusted to stay as the store left it, so nothing there leads outside
it: ``blobs`` is opened as a folder without following a link and every blob is opened relative to
it, without following links (a new one with ``O_EXCL``), and read only if it is a regular file;
``index.db`` and its side files must not be links; a blob name read from the index must have the
shape of a blob name (but for the marker of an inline row, which opens no file). Reading or writing
through anything planted there fails with ``BackendUnavailable``; overwriting or deleting a key
removes a planted link, never its target. The path *to* the folder is the caller's and may pass
through links. Needs POSIX (Linux, macOS): ``O_NOFOLLOW`` and ``dir_fd``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import sqlite3
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from ..errors import AlreadyExists, BackendUnavailable, NotFound
from ..limits import validate_key, validate_metadata
from ._sqlite import Database, translate_errors
from .base import Body, ObjectInfo, StoredObject

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
"""Bytes read from a body file object at a time."""

INLINE_MAX = 64 * 1024
"""The largest body, given as bytes, kept in the index row instead of a blob file."""

_INLINE = "inline"
"""The ``blob`` of an inline row: not a blob name, so no file is ever opened or removed for it."""

_PAGE = 1000
"""Index rows fetched per query while listing (as S3 pages its listings)."""

# ``data`` comes last: an index made before it existed gains it by ALTER TABLE, which appends.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    blob TEXT NOT NULL,
    size INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    content_type TEXT NOT NULL,
    etag TEXT NOT NULL,
    modified REAL NOT NULL,
    data BLOB
) WITHOUT ROWID;
"""

_INSERT = (
    "INSERT INTO objects (key, blob, size, metadata, content_type, etag, modified, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_REPLACE = (
    "INSERT OR REPLACE INTO objects (key, blob, size, metadata, content_type, etag, modified, data) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT key, blob, size, metadata, content_type, etag, modified, data FROM objects WHERE key = ?"
)
_LIST = (
    "SELECT key, blob, size, metadata, content_type, etag, modified FROM objects "
    "WHERE key >= ? AND key > ? ORDER BY key LIMIT ?"
)
_LIST_TO = (
    "SELECT key, blob, size, metadata, content_type, etag, modified FROM objects "
    "WHERE key >= ? AND key > ? AND key < ? ORDER BY key LIMIT ?"
)
_Listed = tuple[bytes, str, int, str, str, str, float]
_Row = tuple[bytes, str, int, str, str, str, float, bytes | None]
"""An index row: key, blob, size, metadata, content type, etag, modified, inline data."""

_BLOB_NAME = re.compile(r"[0-9a-f]{32}")
"""What :func:`_new_blob_name` makes: the only file names the index may point to."""

_INDEX_FILES = ("index.db", "index.db-wal", "index.db-shm", "index.db-journal")
"""The index and the side files SQLite creates beside it."""

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO must not block
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _new_blob_name() -> str:
    """A fresh blob file name: 32 random hex digits."""
    return secrets.token_hex(16)


class _Index(Database):
    """The index database; an index made before inline bodies gets their ``data`` column."""

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if not _has_data_column(conn):
            conn.execute("ALTER TABLE objects ADD COLUMN data BLOB")
            logger.info("added inline bodies to the index %s", self.path)


def _has_data_column(conn: sqlite3.Connection) -> bool:
    return any(column[1] == "data" for column in conn.execute("PRAGMA table_info(objects)"))


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
        self._db = _Index(self.root / "index.db", _SCHEMA, prepare=self._make_folders)

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _make_folders(self) -> None:
        """Create the folders; refuse links planted as ``blobs`` or as the index (SQLite follows
        them, and would create or write a database wherever they point)."""
        for path in (self._blobs, *(self.root / name for name in _INDEX_FILES)):
            self._refuse_link(path)
        self._blobs.mkdir(parents=True, exist_ok=True)

    def _refuse_link(self, path: Path) -> None:
        if path.is_symlink():
            raise BackendUnavailable(
                f"{path} is a symbolic link: the store at {self.location} follows no links inside "
                "its folder, so that it reads and writes nothing outside it; remove the link"
            )

    @contextmanager
    def _blob_folder(self) -> Iterator[int]:
        """The ``blobs`` folder, opened without following a link: blobs are opened relative to it."""
        try:
            folder = os.open(self._blobs, _FOLDER_FLAGS)
        except OSError:
            self._refuse_link(self._blobs)
            raise
        try:
            yield folder
        finally:
            os.close(folder)

    def _open_blob(self, folder: int, blob: str) -> BinaryIO:
        """Open a blob for reading: a regular file in ``blobs``, never a link or anything else."""
        try:
            fd = os.open(blob, _READ_FLAGS, dir_fd=folder)
        except FileNotFoundError:
            raise
        except OSError:  # ELOOP: a link
            self._check_regular(folder, blob)
            raise
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise self._odd_blob(blob, mode)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _check_regular(self, folder: int, blob: str) -> None:
        """Raise unless the blob is a regular file (not a link, FIFO, folder... planted there)."""
        mode = os.stat(blob, dir_fd=folder, follow_symlinks=False).st_mode
        if not stat.S_ISREG(mode):
            raise self._odd_blob(blob, mode)

    def _odd_blob(self, blob: str, mode: int) -> BackendUnavailable:
        if stat.S_ISLNK(mode):
            return BackendUnavailable(
                f"blob {self._blobs / blob} is a symbolic link: the store at {self.location} reads "
                "no links, so that it returns nothing from outside its folder; remove the link"
            )
        return BackendUnavailable(
            f"blob {self._blobs / blob} is not a regular file: the store at {self.location} did not "
            "put it there; remove it"
        )

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

        ``body`` is bytes or a binary file object, read in 1 MiB chunks until EOF. Bytes of at
        most :data:`INLINE_MAX` are kept in the index row; anything else goes to a blob file.

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
        data: bytes | None = None
        if isinstance(body, bytes | bytearray | memoryview):
            body = bytes(body)  # len() of a memoryview counts items, not bytes
            if len(body) <= INLINE_MAX:
                data = body
        with self._errors(f"writing {key!r}"):
            self._db.connection()
            if data is not None:
                blob, size, etag = _INLINE, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest()
            else:
                blob, size, etag = self._write_blob(body)
            info = ObjectInfo(key, size, checked, content_type, etag, time.time())
            self._commit(
                (key.encode(), blob, size, json.dumps(checked), content_type, etag, info.modified, data),
                if_absent,
            )
            return info

    def _commit(self, row: _Row, if_absent: bool) -> None:
        """Index the row whose blob is written (or which is inline): on failure its blob goes,
        on success the one it replaced."""
        try:
            replaced = self._index(row, if_absent)
        except BaseException:
            self._unlink(row[1])
            raise
        if replaced is not None:
            self._unlink(replaced)

    def _index(self, row: _Row, if_absent: bool) -> str | None:
        """Insert the row (one committed write); return the blob it replaced, if any."""

        def insert(conn: sqlite3.Connection) -> str | None:
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

        return self._db.write(insert)

    def _write_blob(self, body: Body) -> tuple[str, int, str]:
        """Write the body to a new blob file, durably; return its name, size and MD5 hex (the etag,
        as for an inline body).

        The temporary file is created with ``O_EXCL``: a file or link already in its place
        (planted: the name is random) fails the write instead of being written through.
        """
        name = _new_blob_name()
        partial = f"{name}.part"
        digest = hashlib.md5(usedforsecurity=False)
        size = 0
        with self._blob_folder() as folder:
            fd = os.open(partial, _CREATE_FLAGS, 0o666, dir_fd=folder)
            try:
                with os.fdopen(fd, "wb") as out:
                    for chunk in _chunks(body):
                        out.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(partial, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                try:
                    os.unlink(partial, dir_fd=folder)
                except FileNotFoundError:
                    pass
                raise
            _fsync_folder(folder)
        return name, size, digest.hexdigest()

    def _unlink(self, blob: str) -> None:
        if blob == _INLINE:  # an inline row has no file
            return
        if not _BLOB_NAME.fullmatch(blob):
            logger.warning("not removing %r from %s: it is not a blob of this store", blob, self.location)
            return
        try:
            with self._blob_folder() as folder:
                os.unlink(blob, dir_fd=folder)
        except FileNotFoundError:
            pass
        except (OSError, BackendUnavailable) as exc:
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
            if row[7] is not None:
                return StoredObject(_info(row), io.BytesIO(row[7]))
            with self._blob_folder() as folder:
                try:
                    stream = self._open_blob(folder, row[1])
                except FileNotFoundError:
                    # Overwritten or deleted between the index read and the open: read the index again.
                    row = self._row(key)
                    if row[7] is not None:
                        return StoredObject(_info(row), io.BytesIO(row[7]))
                    stream = self._open_blob(folder, row[1])
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
        """Copy the object at ``source`` to ``key``: an inline copy of an inline object, else a hard
        link to its blob where possible.

        Raises:
            NotFound: no object at ``source``.
            InvalidKey: a key S3 would refuse.
            BackendUnavailable: the folder or index cannot be written.
        """
        validate_key(source)
        validate_key(key)
        with self._errors(f"copying {source!r} to {key!r}"):
            row = self._row(source)
            blob = _INLINE if row[7] is not None else self._link_blob(row[1])
            info = ObjectInfo(key, row[2], json.loads(row[3]), row[4], row[5], time.time())
            self._commit((key.encode(), blob, row[2], row[3], row[4], row[5], info.modified, row[7]),
                         if_absent=False)
            return info

    def _link_blob(self, blob: str) -> str:
        """A new blob name with the same bytes as ``blob`` (blobs are never modified in place).

        Only a regular file is linked, and a link is never followed: should ``blob`` turn into
        one meanwhile, the copy is that link, which reads refuse.
        """
        name = _new_blob_name()
        with self._blob_folder() as folder:
            try:
                self._check_regular(folder, blob)
                os.link(blob, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                raise NotFound(f"the object was replaced while being copied in {self.location}") from None
            except OSError:  # a file system without hard links
                with self._open_blob(folder, blob) as source:
                    return self._write_blob(source)[0]
            _fsync_folder(folder)
        return name

    def _row(self, key: str) -> _Row:
        conn = self._db.connection()
        row = conn.execute(_SELECT, (key.encode(),)).fetchone()
        if row is None:
            raise NotFound(f"no object {key!r} in {self.location}")
        data, blob = row[7], row[1]
        if data is None:
            valid = isinstance(blob, str) and _BLOB_NAME.fullmatch(blob) is not None
        else:  # inline, which the store marks so; an altered row may not make a blob row inline
            valid = isinstance(data, bytes) and blob == _INLINE
        if not valid:
            says = (f"says {key!r} is in {blob!r}, which is" if data is None
                    else f"has inline data for {key!r} with blob {blob!r} instead of {_INLINE!r}:")
            raise BackendUnavailable(
                f"the index of {self.location} {says} not a blob of this store: the index was "
                "altered; delete the key or restore the index"
            )
        return row  # type: ignore[no-any-return]

    def delete(self, key: str) -> None:
        """Delete the object; deleting a missing key is not an error.

        Raises:
            InvalidKey: a key S3 would refuse.
            BackendUnavailable: the folder or index cannot be written.
        """
        validate_key(key)
        with self._errors(f"deleting {key!r}"):
            def remove(conn: sqlite3.Connection) -> str | None:
                row = conn.execute("SELECT blob FROM objects WHERE key = ?", (key.encode(),)).fetchone()
                conn.execute("DELETE FROM objects WHERE key = ?", (key.encode(),))
                return None if row is None else str(row[0])

            blob = self._db.write(remove)
            if blob is not None:
                self._unlink(blob)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        """Yield the objects whose key starts with ``prefix`` (and sorts after ``start_after``),
        in byte order of the UTF-8 key.

        Pages through the index, so objects may be deleted while listing.

        Raises:
            BackendUnavailable: the folder or index cannot be read.
        """
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
        if not isinstance(start_after, str):
            raise TypeError(f"start_after must be a str, got {type(start_after).__name__}")
        start = prefix.encode()
        end = _prefix_end(start)
        after = start_after.encode()
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


def _info(row: _Row | _Listed) -> ObjectInfo:
    key, _blob, size, metadata, content_type, etag, modified = row[:7]
    return ObjectInfo(key.decode(), size, json.loads(metadata), content_type, etag, modified)


def _fsync_folder(folder: int) -> None:
    """Make a rename in the open ``folder`` durable (where the file system allows it)."""
    try:
        os.fsync(folder)
    except OSError:
        pass
