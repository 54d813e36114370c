"""SQLite plumbing shared by the embedded store and queues.

A :class:`Database` gives each thread (and each forked process) its own connection to one WAL-mode
file, with explicit ``BEGIN IMMEDIATE`` transactions, so writers from several processes serialise
on SQLite's lock instead of failing. A new file is made whole (WAL mode, schema) under a private
name and linked into place, so no process ever opens a database that is still being set up.
:func:`translate_errors` is the one place where ``sqlite3`` and ``OSError`` failures become
:class:`~remotejob.errors.BackendUnavailable`.
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from ..errors import BackendUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another writer's lock before giving up."""

# Connections inherited through fork() must not be closed in the child: closing runs SQLite's
# last-connection cleanup against files the parent still uses. They are parked here instead.
_inherited: list[sqlite3.Connection] = []


class Database:
    """One SQLite file, a connection per thread and process, the schema created on first use."""

    def __init__(self, path: Path, schema: str, prepare: Callable[[], None] | None = None) -> None:
        """Describe the database; nothing is opened until a connection is needed.

        Args:
            path: The database file; its folder is created when missing.
            schema: ``CREATE ... IF NOT EXISTS`` statements run on every new connection.
            prepare: Called before the first connection of each thread, e.g. to create folders.
        """
        self.path = path
        self._schema = schema
        self._prepare = prepare
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it (and creating the schema) on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        if conn is not None:
            _inherited.append(conn)
        conn = self._open()
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open(self) -> sqlite3.Connection:
        if self._prepare is not None:
            self._prepare()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):  # SQLite would follow a planted link
            planted = self.path.with_name(self.path.name + suffix)
            if planted.is_symlink():
                raise BackendUnavailable(
                    f"{planted} is a symbolic link: remotejob opens no database through a link, so "
                    "that nothing outside its folder is written; remove the link"
                )
        if not os.path.lexists(self.path):
            self._create()
        # isolation_level=None: no implicit transactions; every write says BEGIN IMMEDIATE itself.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            self._set_up(conn)
        except BaseException:
            conn.close()
            raise
        logger.debug("opened SQLite database %s", self.path)
        return conn

    def _create(self) -> None:
        """Make the database under a private name (WAL mode, schema) and hard-link it into place.

        Switching a shared file to WAL is what made processes opening a fresh database at once
        fail with "database is locked": the switch rewrites the file's header in a write
        transaction that starts as a read one, and SQLite refuses at once, without its busy
        handler, to upgrade a read lock while another connection holds the write lock (waiting
        could deadlock). A file that appears whole never needs the switch. The first link wins;
        a process that loses it opens the winner's file, which is as good as its own.
        """
        fresh = self.path.with_name(f".{self.path.name}.{secrets.token_hex(8)}.new")
        try:
            conn = sqlite3.connect(fresh, isolation_level=None)
            try:
                self._set_up(conn)
            finally:
                conn.close()  # the last connection: its WAL is checkpointed into the file
            try:
                os.link(fresh, self.path)
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links: _set_up on the shared file retries
                logger.debug("could not link %s into place; setting it up in place", self.path)
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                fresh.with_name(fresh.name + suffix).unlink(missing_ok=True)

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL mode and the schema, and any migration. A file made by :meth:`_create` is in WAL
        mode already; one made otherwise (an empty file, a file system without hard links) is
        switched here, and a switch that meets another process's write lock gets SQLITE_BUSY
        without SQLite's busy handler being consulted (see :meth:`_create`), so that is retried
        here until the busy timeout."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in self._schema.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                    self._migrate(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring an older database's schema up to date (inside the set-up transaction, under
        SQLite's write lock, so processes racing to do it do it once); nothing by default."""

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the body in one ``BEGIN IMMEDIATE`` transaction: committed, or rolled back on error.

        This process's writers take turns on a lock first. Threads waiting for SQLite's write lock
        wait in its busy handler, which sleeps 1, 2, 5, 10... ms between tries instead of waking
        when the lock is free: eight worker threads putting small records spent a quarter of their
        time there. On this lock they wake as soon as it is released; processes still meet on
        SQLite's lock.
        """
        with self._writers().lock:
            yield from self._transaction()

    def write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in a write transaction; return its result once it is committed (durably:
        the commit is synchronous), or raise what it raised with its changes undone.

        Group commit: the writes that this process's threads queue while another group commits
        go into the next transaction together, each inside its own savepoint, so that one
        ``COMMIT`` (one fsync) serves them all and an op that fails undoes only its own changes.
        An op may run on another thread's connection, so it uses only the one it is given, and
        it must not write to this database itself (the writers' lock is held while it runs).
        """
        writers = self._writers()
        pending = _Pending(op)
        with writers.queued:
            writers.pending.append(pending)
        with writers.lock:
            if not pending.done:
                with writers.queued:
                    group, writers.pending = writers.pending, []
                self._commit_group(group)
        return pending.outcome()

    def _commit_group(self, group: list[_Pending[Any]]) -> None:
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for pending in group:
                    conn.execute("SAVEPOINT op")
                    try:
                        pending.value = pending.op(conn)
                    except Exception as exc:  # noqa: BLE001 - it is raised in its own thread
                        conn.execute("ROLLBACK TO op")
                        pending.error = exc
                    conn.execute("RELEASE op")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.rollback()
                raise
        except BaseException as exc:  # nothing of the group was applied
            for pending in group:
                pending.value, pending.error = None, _unapplied(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            for pending in group:
                pending.done = True

    def _writers(self) -> _Writers:
        key = (os.getpid(), str(self.path))  # a child of fork() makes its own
        writers = _writers.get(key)
        if writers is None:
            with _writers_lock:
                writers = _writers.setdefault(key, _Writers())
        return writers

    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise


class _Writers:
    """One process's writers of one database: the lock they take turns on, and the writes queued
    for the next group commit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queued = threading.Lock()
        self.pending: list[_Pending[Any]] = []


class _Pending(Generic[T]):
    """One queued write and, once its group is committed (``done``), its result or error."""

    def __init__(self, op: Callable[[sqlite3.Connection], T]) -> None:
        self.op = op
        self.done = False
        self.value: T | None = None
        self.error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


def _unapplied(exc: BaseException) -> BaseException:
    """A group's failure, as its own exception for each writer of the group (one exception object
    raised in several threads would mix their tracebacks)."""
    if isinstance(exc, sqlite3.Error):
        return type(exc)(*exc.args)
    return sqlite3.OperationalError(f"the write was not committed: {type(exc).__name__}: {exc}")


_writers: dict[tuple[int, str], _Writers] = {}
_writers_lock = threading.Lock()


@contextmanager
def translate_errors(location: str, action: str, hint: str) -> Iterator[None]:
    """Turn ``sqlite3.Error`` and ``OSError`` raised in the body into ``BackendUnavailable``.

    Args:
        location: Where the backend lives, named in the message.
        action: What was being done, e.g. ``"reading 'in/cat.jpg'"``.
        hint: What the user should check.
    """
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise BackendUnavailable(f"{action} failed at {location} ({exc}): {hint}") from exc
