"""The journal: which jobs and batches changed, so that a dashboard's index can follow a job system
without listing ``jobs/`` (100,000 jobs are hundreds of LIST requests).

Every process that writes status records appends, about once a second while it writes any, one
small object, ``journal/<ms><random>`` (see :func:`keys.journal_key`: keys sort by time), naming the
jobs and batches whose records it wrote or removed::

    {"v": 1, "at": 1718000000.123, "jobs": ["a", "b"], "batches": ["0190..."]}

An entry is a hint, not a record: the records themselves say where a job stands. A reader lists
the entries after the last one it read (one LIST) and reads the new ones (one GET each), then reads
the records of the jobs they name. Keys follow the writers' clocks and an entry may land a moment
after a later-stamped one, so a reader starts each listing a little before the newest entry it has
seen (``journal_start(newest_at - lookback)``) and skips the keys it has read.

Nothing here may fail or slow a job: a :class:`Journal` only collects ids in memory while its
process writes; one background thread (shared by every journal of the process, started on the
first write) writes the entries; a failed write is logged and its ids are kept for the next one.
An idle process writes nothing. :class:`JournalingStore` tells a journal of every key written
through it, so the journal sees every writer (submit, trigger, worker, cancel, retry, redrive...)
without any of them knowing of it.

Entries older than :data:`JOURNAL_KEEP_S` are removed by :func:`prune` (workers run it at start and
then at most once an hour; a dashboard may too).
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import keys
from .backends.base import Body, ObjectInfo, ObjectStore, StoredObject
from .errors import NotFound
from .records import encode
from .status import error_text

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0
"""The least time between two entries of one journal."""
GATHER_S = 0.1
"""How long a journal that wrote nothing for a while waits after a first write to gather more."""
JOURNAL_KEEP_S = 24 * 3600.0
"""How long entries are kept: a dashboard that was away longer syncs from the records."""
MAX_KEPT = 10_000
"""Ids a journal keeps for its next entry while the store refuses its writes; beyond, dropped."""
LOG_EVERY_S = 60.0
"""The least time between two warnings about failed journal writes."""
RETRY_MAX_S = 60.0
"""The longest wait before a failed entry is tried again."""
EXIT_BUDGET_S = 5.0
"""How long the last flush at interpreter exit may take, at most, before it gives up."""

_JOB_RECORDS = ("handoff-", "start-", "retry-")


def touched(key: str) -> tuple[str, str] | None:
    """``("job", id)`` for a key of a job's status record, ``("batch", id)`` for a batch manifest,
    None for any other key (inputs, outputs, staged assets, the logs)."""
    if key.startswith("jobs/"):
        segment, _, record = key[len("jobs/"):].partition("/")
        if segment and (record in keys.RECORDS or record.startswith(_JOB_RECORDS)) and "/" not in record:
            return "job", keys.job_from_segment(segment)
        return None
    if key.startswith("batches/") and len(key) > len("batches/") and "/" not in key[len("batches/"):]:
        return "batch", key[len("batches/"):]
    return None


class Journal:
    """Collects the jobs and batches whose records this process writes, and appends them to the
    store's journal at most once per ``interval`` seconds (in a background thread).

    Args:
        store: the store to write entries to (not a :class:`JournalingStore`).
        interval: the least time between two entries, seconds.
    """

    def __init__(self, store: ObjectStore, interval: float = INTERVAL_S) -> None:
        self.store = store
        self.interval = interval
        self.written = 0
        """Entries this journal wrote."""
        self._jobs: dict[str, None] = {}  # insertion-ordered sets
        self._batches: dict[str, None] = {}
        self._lock = threading.Lock()
        self._writing = threading.Lock()
        self._last_write = -math.inf
        self._failures = 0
        self._warned = -math.inf

    def note_key(self, key: str) -> None:
        """Note that ``key`` was written or deleted (only status records and manifests count)."""
        found = touched(key)
        if found is None:
            return
        kind, ident = found
        with self._lock:
            first = not self._jobs and not self._batches
            (self._jobs if kind == "job" else self._batches)[ident] = None
        if first:
            _FLUSHER.schedule(self, max(time.monotonic() + GATHER_S, self._last_write + self.interval))

    @property
    def pending(self) -> int:
        """Ids noted and not written yet."""
        with self._lock:
            return len(self._jobs) + len(self._batches)

    def flush(self) -> bool:
        """Write what was noted as one entry now; return False if the write failed (its ids are
        kept for the next one). Never raises for a store's error: it is logged."""
        with self._writing:
            with self._lock:
                jobs, batches = list(self._jobs), list(self._batches)
                self._jobs, self._batches = {}, {}
            if not jobs and not batches:
                return True
            now = time.time()
            body = encode({"at": now, "jobs": jobs, "batches": batches})
            try:
                self.store.put(keys.journal_key(now), body, content_type="application/json")
            except BaseException as exc:  # noqa: BLE001 - the journal must never fail a job
                self._failed(jobs, batches, exc)
                if not isinstance(exc, Exception):
                    raise
                return False
            finally:
                self._last_write = time.monotonic()
            self._failures = 0
            self.written += 1
            return True

    def close(self) -> None:
        """Write what is pending now (later writes are journaled again)."""
        self.flush()
        if not self.pending:
            _FLUSHER.cancel(self)

    def _failed(self, jobs: list[str], batches: list[str], exc: BaseException) -> None:
        """Keep a failed entry's ids for the next one (at most :data:`MAX_KEPT`) and try again
        later; warn at most once per :data:`LOG_EVERY_S`."""
        with self._lock:
            kept_jobs = dict.fromkeys(jobs) | self._jobs
            kept_batches = dict.fromkeys(batches) | self._batches
            dropped = max(0, len(kept_jobs) + len(kept_batches) - MAX_KEPT)
            if dropped:  # the oldest go: a dashboard's index also resyncs from the records
                excess = min(dropped, len(kept_jobs))
                kept_jobs = dict.fromkeys(list(kept_jobs)[excess:])
                kept_batches = dict.fromkeys(list(kept_batches)[dropped - excess:])
            self._jobs, self._batches = kept_jobs, kept_batches
            self._failures += 1
            retry = min(RETRY_MAX_S, self.interval * 2.0 ** min(self._failures, 16))
        if time.monotonic() - self._warned >= LOG_EVERY_S or dropped:
            self._warned = time.monotonic()
            logger.warning("could not write to the job journal in %s (%s); %d id(s) kept for the next "
                           "try%s", getattr(self.store, "location", "the store"), error_text(exc),
                           len(kept_jobs) + len(kept_batches),
                           f", {dropped} dropped" if dropped else "")
        _FLUSHER.schedule(self, time.monotonic() + retry)


class _Flusher:
    """One thread per process that writes every journal's entries when they are due."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Journal, float] = {}
        self._current: Journal | None = None
        self._thread: threading.Thread | None = None

    def schedule(self, journal: Journal, at: float) -> None:
        with self._cond:
            if self._due.get(journal, math.inf) <= at:
                return
            self._due[journal] = at
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="remotejob-journal", daemon=True)
                self._thread.start()
            self._cond.notify()

    def cancel(self, journal: Journal) -> None:
        with self._cond:
            self._due.pop(journal, None)

    def _next(self) -> Journal:
        with self._cond:
            while True:
                if not self._due:
                    self._cond.wait()
                    continue
                journal, at = min(self._due.items(), key=lambda item: item[1])
                left = at - time.monotonic()
                if left <= 0:
                    del self._due[journal]
                    self._current = journal
                    return journal
                self._cond.wait(left)

    def _run(self) -> None:
        while True:
            journal = self._next()
            try:
                journal.flush()
            except BaseException as exc:  # noqa: BLE001 - this thread serves every journal
                logger.debug("journal flush interrupted: %s", exc)
            finally:
                with self._cond:
                    self._current = None

    def flush_all(self, budget_s: float = EXIT_BUDGET_S) -> None:
        """Write every pending entry now, within ``budget_s`` seconds (at interpreter exit)."""
        deadline = time.monotonic() + budget_s
        with self._cond:
            journals = list(self._due) + ([self._current] if self._current is not None else [])
            self._due.clear()
        for journal in journals:
            if time.monotonic() >= deadline:
                logger.warning("gave up writing the job journal at exit: %d journal(s) left", len(journals))
                return
            try:
                journal.flush()
            except BaseException as exc:  # noqa: BLE001 - exiting anyway
                logger.debug("journal flush at exit failed: %s", exc)

    def _forked(self) -> None:
        """In a forked child: the parent's thread is not there, nor may its lock be usable."""
        self._cond = threading.Condition()
        self._due = {}
        self._current = None
        self._thread = None


_FLUSHER = _Flusher()
atexit.register(_FLUSHER.flush_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_FLUSHER._forked)


class JournalingStore:
    """An :class:`~remotejob.backends.base.ObjectStore` that tells a :class:`Journal` of every key
    written, copied to or deleted through it (also when the outcome is uncertain: a hint is
    harmless), and otherwise is the store it wraps."""

    def __init__(self, inner: ObjectStore, journal: Journal) -> None:
        self.inner = inner
        self.journal = journal
        self.location = inner.location

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"JournalingStore({self.inner!r})"

    def ensure(self) -> None:
        self.inner.ensure()

    def put(
        self,
        key: str,
        body: Body,
        metadata: Mapping[str, str] | None = None,
        content_type: str = "application/octet-stream",
        if_absent: bool = False,
    ) -> ObjectInfo:
        try:
            return self.inner.put(key, body, metadata, content_type, if_absent)
        finally:
            self.journal.note_key(key)

    def get(self, key: str) -> StoredObject:
        return self.inner.get(key)

    def head(self, key: str) -> ObjectInfo:
        return self.inner.head(key)

    def copy(self, source: str, key: str) -> ObjectInfo:
        try:
            return self.inner.copy(source, key)
        finally:
            self.journal.note_key(key)

    def delete(self, key: str) -> None:
        try:
            self.inner.delete(key)
        finally:
            self.journal.note_key(key)

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after)


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JournalEntry:
    """One journal entry: when a process wrote it and which jobs and batches it names."""

    key: str
    at: float
    jobs: list[str] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)


def read(store: ObjectStore, start_after: str = "") -> list[JournalEntry]:
    """The journal's entries, oldest first, those whose key sorts after ``start_after`` only (e.g.
    the last key read, or :func:`keys.journal_start`); one LIST and a GET per entry. An entry that
    cannot be decoded (or vanished, pruned meanwhile) is skipped, with a warning for the former.

    Raises:
        BackendUnavailable: the store cannot be read.
    """
    entries: list[JournalEntry] = []
    for info in store.list(keys.JOURNAL, start_after=start_after):
        if keys.parse_journal(info.key) is None:
            continue
        try:
            with store.get(info.key) as obj:
                entries.append(decode(info.key, obj.read()))
        except NotFound:
            continue
        except ValueError as exc:
            logger.warning("skipping journal entry %s: %s", info.key, exc)
    return entries


def decode(key: str, raw: bytes) -> JournalEntry:
    """Parse one journal entry.

    Raises:
        ValueError: it is not one.
    """
    try:
        doc = json.loads(raw)
        jobs, batches = doc.get("jobs", []), doc.get("batches", [])
        if not isinstance(jobs, list) or not isinstance(batches, list) \
                or not all(isinstance(i, str) for i in [*jobs, *batches]):
            raise ValueError("jobs and batches must be lists of ids")
        return JournalEntry(key=key, at=float(doc["at"]), jobs=jobs, batches=batches)
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a journal entry: {exc}") from exc


def prune(store: ObjectStore, keep_s: float = JOURNAL_KEEP_S, limit: int | None = None) -> int:
    """Delete the journal entries older than ``keep_s`` seconds (at most ``limit`` of them);
    return how many were deleted. Lists from the start and stops at the first newer entry, so
    it costs one LIST when there is nothing to prune.

    Raises:
        BackendUnavailable: the store cannot be listed.
    """
    newest = keys.journal_start(time.time() - keep_s)
    deleted = 0
    for info in store.list(keys.JOURNAL):
        if info.key >= newest or (limit is not None and deleted >= limit):
            break
        if keys.parse_journal(info.key) is None:
            continue
        store.delete(info.key)
        deleted += 1
    return deleted
