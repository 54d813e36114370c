"""The embedded message queue: SQS semantics on one SQLite file, safe across processes.

Each receive is one ``BEGIN IMMEDIATE`` transaction that picks visible messages, hands each a
fresh receipt, hides it for the visibility timeout and counts the receive, or moves it to the
dead-letter queue once it has been received ``max_receive_count`` times. Two processes receiving
at once are serialised by SQLite's write lock, so an invisible message is never handed out twice.
A receipt names its delivery: ``"<seq>.<random>"``; only the latest one deletes the message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path

from ..errors import (
    BatchPartlyFailed,
    ConfigError,
    InvalidReceipt,
    NotFound,
    PayloadTooLarge,
    VisibilityLimit,
)
from ..limits import (
    DEAD_LETTER_RETENTION_S,
    MAX_MESSAGE_BYTES,
    MAX_VISIBILITY_S,
    validate_batch,
    validate_delay,
    validate_message_body,
    validate_queue_name,
    validate_visibility,
    validate_wait,
)
from ._sqlite import Database, translate_errors
from .base import CAPPED, GONE, Message, OutgoingMessage, QueueAttributes, QueueDepth

logger = logging.getLogger(__name__)

POLL_S = 0.01
"""How often a long poll looks for messages sent by other processes: an indexed read, about
30 microseconds, so a waiting worker costs well under 1% of a core and picks a job up within
10 ms (50 ms made the embedded submit-to-start latency about 30 ms at the median)."""

MAX_RECEIVE_COUNT = 1000
"""SQS's largest ``maxReceiveCount`` in a redrive policy."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queues (
    name TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    sent_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    received_at REAL
);
CREATE INDEX IF NOT EXISTS messages_by_visibility ON messages (queue, visible_at, seq);
CREATE INDEX IF NOT EXISTS messages_by_age ON messages (queue, sent_at);
"""

_FIELDS = dataclasses.fields(QueueAttributes)
_RECEIPT = re.compile(r"([0-9]{1,18})\.[0-9a-f]{32}")


class _QueueDatabase(Database):
    def _migrate(self, conn: sqlite3.Connection) -> None:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(messages)")}
        if "received_at" not in columns:  # databases made before the 12-hour visibility cap
            conn.execute("ALTER TABLE messages ADD COLUMN received_at REAL")


class _Signal:
    """Wakes this process's long polls on one database when a message may have become visible."""

    def __init__(self) -> None:
        self.version = 0
        self._changed = threading.Condition()

    def notify(self) -> None:
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        """Wait up to ``timeout`` unless something changed since ``version`` was ``seen``."""
        with self._changed:
            if self.version == seen:
                self._changed.wait(timeout)


_signals: dict[Path, _Signal] = {}
_signals_lock = threading.Lock()


def _signal_for(path: Path) -> _Signal:
    signal = _signals.get(path)
    if signal is None:
        with _signals_lock:
            signal = _signals.setdefault(path, _Signal())
    return signal


def _forget_signals() -> None:
    """In a forked child, drop locks another parent thread may have held at the fork."""
    global _signals_lock
    _signals_lock = threading.Lock()
    _signals.clear()


os.register_at_fork(after_in_child=_forget_signals)


class SqliteQueues:
    """A :class:`~remotejob.backends.base.MessageQueue` in one SQLite file.

    Example::

        queues = SqliteQueues("/var/lib/jobs/queues.db")
        queues.ensure(["thumbs-pending"], QueueAttributes(visibility_s=60))
        queues.send("thumbs-pending", '{"job": "42"}')
        for message in queues.receive("thumbs-pending", wait_s=20):
            ...
            queues.delete("thumbs-pending", message.receipt)
    """

    def __init__(self, path: str | os.PathLike[str], clock: Callable[[], float] = time.time) -> None:
        """Use the database file ``path``; it (and its folder) is created on first use.

        Args:
            path: The SQLite file holding every queue.
            clock: Seconds since the epoch, for send times, delays and visibility timeouts.
                Tests pass a fake clock to expire visibility instantly; long polls wait in
                real time regardless.
        """
        self.path = Path(path).absolute()
        self.location = f"sqlite://{self.path}"
        self._clock = clock
        self._db = _QueueDatabase(self.path, _SCHEMA)
        self._known: dict[str, QueueAttributes] = {}

    def __repr__(self) -> str:
        return f"SqliteQueues({str(self.path)!r})"

    @property
    def _signal(self) -> _Signal:
        return _signal_for(self.path)

    def _errors(self, action: str) -> AbstractContextManager[None]:
        return translate_errors(
            self.location,
            action,
            "check that the file's folder exists and is writable, and that the file is an SQLite "
            "database on a local disk",
        )

    def ensure(self, names: Sequence[str], attributes: QueueAttributes) -> None:
        """Create the named queues if missing; existing queues keep their attributes.

        A queue named as ``attributes.dead_letter`` is created without a redrive policy of its
        own and keeping messages for ``DEAD_LETTER_RETENTION_S``, longer than its sources, so one
        call can create a queue and its dead-letter queue.

        Raises:
            ConfigError: an invalid queue name or redrive policy.
            NotFound: the dead-letter queue neither exists nor is among ``names``.
            ValueError: a visibility timeout or wait outside SQS's limits.
        """
        for name in names:
            validate_queue_name(name)
        validate_visibility(attributes.visibility_s)
        validate_wait(attributes.wait_s)
        dead = attributes.dead_letter
        if (dead is None) != (attributes.max_receive_count is None):
            raise ConfigError("a redrive policy needs both dead_letter and max_receive_count")
        if dead is not None:
            validate_queue_name(dead)
            count = attributes.max_receive_count or 0
            if not 1 <= count <= MAX_RECEIVE_COUNT:
                raise ConfigError(f"max_receive_count {count} is outside SQS's 1-{MAX_RECEIVE_COUNT}")
            if attributes.retention_s >= DEAD_LETTER_RETENTION_S:
                raise ConfigError(
                    f"retention {attributes.retention_s} s leaves the dead-letter queue no room to keep "
                    f"messages longer than its sources: use less than {DEAD_LETTER_RETENTION_S} s"
                )
        # As on SQS: dead letters outlive their sources (they keep their first enqueue time).
        plain = dataclasses.replace(
            attributes, dead_letter=None, max_receive_count=None, retention_s=DEAD_LETTER_RETENTION_S
        )
        with self._errors("creating queues"), self._db.transaction() as conn:
            for name in names:
                own = plain if name == dead else attributes
                conn.execute(
                    "INSERT OR IGNORE INTO queues (name, attributes, created) VALUES (?, ?, ?)",
                    (name, json.dumps(dataclasses.asdict(own)), self._clock()),
                )
            if (
                dead is not None
                and not conn.execute("SELECT 1 FROM queues WHERE name = ?", (dead,)).fetchone()
            ):
                raise NotFound(
                    f"dead-letter queue {dead!r} does not exist in {self.location}: create it first"
                )

    def _attributes(self, queue: str) -> QueueAttributes:
        known = self._known.get(queue)
        if known is not None:
            return known
        row = (
            self._db.connection().execute("SELECT attributes FROM queues WHERE name = ?", (queue,)).fetchone()
        )
        if row is None:
            raise NotFound(
                f"queue {queue!r} does not exist in {self.location}: run `remotejob init` or connect() first"
            )
        stored = json.loads(row[0])
        attributes = QueueAttributes(**{f.name: stored[f.name] for f in _FIELDS if f.name in stored})
        # Queues are never deleted or changed once created, so what we learn stays true.
        self._known[queue] = attributes
        return attributes

    def send(self, queue: str, body: str, delay_s: int = 0) -> str:
        """Send one message and return its message id.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: the body exceeds 256 KiB.
            ValueError: an empty body, characters SQS refuses, or a delay outside 0-900 s.
        """
        return self._insert(queue, [OutgoingMessage(body, delay_s)])[0]

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Send 1-10 messages in one transaction and return their message ids, in order.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: more than 10 messages, or bodies over 256 KiB in all.
            ValueError: no messages, or an entry ``send`` would refuse.
        """
        validate_batch(len(messages), "send batch")
        return self._insert(queue, messages)

    def _insert(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        for message in messages:
            validate_message_body(message.body)
            validate_delay(message.delay_s)
        total = sum(len(message.body.encode()) for message in messages)
        if total > MAX_MESSAGE_BYTES:
            raise PayloadTooLarge(
                f"send batch bodies total {total} bytes; SQS allows {MAX_MESSAGE_BYTES} per "
                "request: send fewer at a time"
            )
        ids = [str(uuid.uuid4()) for _ in messages]
        with self._errors(f"sending to {queue!r}"):
            self._attributes(queue)
            now = self._clock()
            rows = [(queue, i, m.body, now, now + m.delay_s) for i, m in zip(ids, messages, strict=True)]
            self._db.write(lambda conn: conn.executemany(
                "INSERT INTO messages (queue, message_id, body, sent_at, visible_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            ))
        self._signal.notify()
        return ids

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
        queue's), until deleted. The poll ends early, empty, once ``cancel`` is set.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: ``max_messages`` over 10.
            ValueError: ``max_messages`` under 1, or a wait or visibility outside SQS's limits.
        """
        validate_batch(max_messages, "max_messages")
        validate_wait(wait_s)
        if visibility_s is not None:
            validate_visibility(visibility_s)
        with self._errors(f"receiving from {queue!r}"):
            attributes = self._attributes(queue)
            visibility = attributes.visibility_s if visibility_s is None else visibility_s
            deadline = time.monotonic() + wait_s
            while True:
                seen = self._signal.version
                if self._any_visible(queue):
                    received = self._take(queue, attributes, max_messages, visibility)
                    if received:
                        return received
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (cancel is not None and cancel.is_set()):
                    return []
                self._signal.wait(seen, min(remaining, POLL_S))

    def _any_visible(self, queue: str) -> bool:
        """Look without taking the write lock, so idle long polls do not block senders."""
        row = (
            self._db.connection()
            .execute(
                "SELECT 1 FROM messages WHERE queue = ? AND visible_at <= ? LIMIT 1",
                (queue, self._clock()),
            )
            .fetchone()
        )
        return row is not None

    def _take(
        self, queue: str, attributes: QueueAttributes, max_messages: int, visibility: float
    ) -> list[Message]:
        now = self._clock()
        dead, limit = attributes.dead_letter, attributes.max_receive_count
        received: list[Message] = []
        taken: set[int] = set()
        moved = 0
        with self._db.transaction() as conn:
            conn.execute(
                "DELETE FROM messages WHERE queue = ? AND sent_at < ?",
                (queue, now - attributes.retention_s),
            )
            while len(received) < max_messages:
                # With visibility 0 a message just taken is still visible: skip those.
                rows = conn.execute(
                    "SELECT seq, message_id, body, sent_at, receive_count FROM messages "
                    "WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?",
                    (queue, now, max_messages),
                ).fetchall()
                fresh = [row for row in rows if row[0] not in taken][: max_messages - len(received)]
                if not fresh:
                    break
                for seq, message_id, body, sent_at, count in fresh:
                    if dead is not None and limit is not None and count >= limit:
                        conn.execute(
                            "UPDATE messages SET queue = ?, receive_count = 0, receipt = NULL, "
                            "visible_at = ? WHERE seq = ?",
                            (dead, now, seq),
                        )
                        logger.info(
                            "message %s moved from %s to %s after %d receives", message_id, queue, dead, count
                        )
                        moved += 1
                        continue
                    receipt = f"{seq}.{secrets.token_hex(16)}"
                    conn.execute(
                        "UPDATE messages SET receipt = ?, visible_at = ?, receive_count = ?, received_at = ? "
                        "WHERE seq = ?",
                        (receipt, now + visibility, count + 1, now, seq),
                    )
                    taken.add(seq)
                    received.append(Message(body, message_id, receipt, count + 1, sent_at))
        if moved:
            self._signal.notify()
        return received

    def delete(self, queue: str, receipt: str) -> None:
        """Delete the delivery named by ``receipt``; a stale receipt (the message was deleted or
        received again since) does nothing, as on SQS.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: ``receipt`` is not a receipt this backend issues.
        """
        self.delete_batch(queue, [receipt])

    def delete_batch(self, queue: str, receipts: Sequence[str]) -> None:
        """Delete 1-10 deliveries in one transaction; stale receipts do nothing.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: a receipt this backend never issues (nothing is deleted).
            PayloadTooLarge: more than 10 receipts.
        """
        validate_batch(len(receipts), "delete batch")
        rows = [(_seq(queue, receipt), queue, receipt) for receipt in receipts]
        with self._errors(f"deleting from {queue!r}"):
            self._attributes(queue)
            self._db.write(lambda conn: conn.executemany(
                "DELETE FROM messages WHERE seq = ? AND queue = ? AND receipt = ?", rows
            ))

    def change_visibility(self, queue: str, receipt: str, seconds: int) -> None:
        """Make the delivery visible again ``seconds`` (0 = now) from this moment.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: not a receipt this backend issues, or not the message's latest
                delivery (it was deleted or received again since).
            VisibilityLimit: that would end more than 12 hours after the delivery was received.
            ValueError: ``seconds`` outside 0 s to 12 h.
        """
        validate_visibility(seconds)
        failed = self._change(queue, [(receipt, seconds)])
        if failed.get(0) == GONE:
            raise InvalidReceipt(
                f"receipt {receipt!r} is not the latest delivery of a message in {queue!r}: "
                "the message was deleted or received again since"
            )
        if failed.get(0) == CAPPED:
            raise VisibilityLimit(
                f"a delivery of {queue!r} cannot stay invisible past 12 hours from its receipt (as on SQS)"
            )

    def change_visibility_batch(self, queue: str, entries: Sequence[tuple[str, int]]) -> list[int]:
        """``change_visibility`` for 1-10 ``(receipt, seconds)`` entries in one transaction.

        Returns the indices of the entries whose receipt is not the message's latest delivery.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: a receipt this backend never issues (nothing is changed).
            PayloadTooLarge: more than 10 entries.
            ValueError: a visibility outside 0 s to 12 h.
            BatchPartlyFailed: some entries would pass 12 hours from their receipt (code
                :data:`~remotejob.backends.base.CAPPED`); the others were changed.
        """
        validate_batch(len(entries), "visibility batch")
        for _, seconds in entries:
            validate_visibility(seconds)
        failed = self._change(queue, entries)
        if any(code != GONE for code in failed.values()):
            raise BatchPartlyFailed(
                f"{len(failed)} of {len(entries)} deliveries of {queue!r} could not be kept invisible "
                "(past 12 hours from their receipt, or gone)",
                failed=failed, done={i: "" for i in range(len(entries)) if i not in failed},
            )
        return sorted(failed)

    def _change(self, queue: str, entries: Sequence[tuple[str, int]]) -> dict[int, str]:
        """Change visibilities in one transaction; return the failed entries' codes."""
        rows = [(_seq(queue, receipt), receipt, seconds) for receipt, seconds in entries]
        failed: dict[int, str] = {}
        with self._errors(f"changing visibility in {queue!r}"):
            self._attributes(queue)
            now = self._clock()
            with self._db.transaction() as conn:
                for index, (seq, receipt, seconds) in enumerate(rows):
                    row = conn.execute(
                        "SELECT received_at FROM messages WHERE seq = ? AND queue = ? AND receipt = ?",
                        (seq, queue, receipt),
                    ).fetchone()
                    if row is None:
                        failed[index] = GONE
                    elif row[0] is not None and now + seconds > row[0] + MAX_VISIBILITY_S:
                        failed[index] = CAPPED
                    else:
                        conn.execute("UPDATE messages SET visible_at = ? WHERE seq = ?", (now + seconds, seq))
        if any(seconds == 0 for _, seconds in entries):
            self._signal.notify()
        return failed

    def depth(self, queue: str) -> QueueDepth:
        """Return the queue's message counts: waiting, in flight, and delayed, and the age of
        its oldest message (exact, from the same query).

        Raises:
            NotFound: no such queue.
        """
        with self._errors(f"counting {queue!r}"):
            attributes = self._attributes(queue)
            now = self._clock()
            waiting, in_flight, delayed, first = (
                self._db.connection()
                .execute(
                    "SELECT COALESCE(SUM(visible_at <= :now), 0), "
                    "COALESCE(SUM(visible_at > :now AND receive_count > 0), 0), "
                    "COALESCE(SUM(visible_at > :now AND receive_count = 0), 0), MIN(sent_at) "
                    "FROM messages WHERE queue = :queue AND sent_at >= :oldest",
                    {"now": now, "queue": queue, "oldest": now - attributes.retention_s},
                )
                .fetchone()
            )
        age = 0.0 if first is None else max(0.0, now - float(first))
        return QueueDepth(int(waiting), int(in_flight), int(delayed), age)

    def purge(self, queue: str) -> None:
        """Delete every message in the queue.

        Raises:
            NotFound: no such queue.
        """
        with self._errors(f"purging {queue!r}"):
            self._attributes(queue)
            with self._db.transaction() as conn:
                conn.execute("DELETE FROM messages WHERE queue = ?", (queue,))


def _seq(queue: str, receipt: str) -> int:
    match = _RECEIPT.fullmatch(receipt) if isinstance(receipt, str) else None
    if match is None:
        raise InvalidReceipt(f"{receipt!r} is not a receipt handle issued by queue {queue!r}")
    return int(match.group(1))
