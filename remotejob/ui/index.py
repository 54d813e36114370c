"""The dashboard's index: a local SQLite copy of every job's state, kept fresh without LISTing the
store on every page view.

- **Initial sync** (and a rescan every ``rescan_s``, default an hour): one LIST of ``jobs/`` and
  ``batches/``, then one GET per job whose records changed since the index last saw them (by
  their ETags), so a restart against a kept index reads only what changed.
- **Refresh** (every ``refresh_s`` while someone looks at a page, once a minute otherwise): one
  LIST of the journal (``journal.py``) from a few minutes before its newest entry, a GET of each
  entry not read yet, a GET of each job those entries name, and the queues' depths (one
  ``GetQueueAttributes`` per queue; a status's depth includes its priority levels' queues, each
  looked for once a minute until it exists). Idle (no jobs changing) that is one LIST plus one request per
  queue per refresh.

Pages read only the index, so the first page and any filter answer from SQLite, whatever the
store's size. The index is a cache: deleting its file costs one initial sync.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import journal, keys, levels, records
from ..backends.base import QueueDepth
from ..context import Context
from ..errors import NotFound, RemoteJobError
from ..status import DONE, JobStatus

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
LOOKBACK_S = 300.0
"""How far before its newest entry the journal is re-listed: entries stamped by a slow clock or
stored late are still found."""
IDLE_REFRESH_S = 60.0
"""How often the index refreshes while nobody looks at a page."""
VIEWER_S = 120.0
"""How long after the last page view the index keeps refreshing at its fast pace."""
PAGE_SIZE = 50
GET_THREADS = 16

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL,
    worker TEXT,
    error TEXT,
    meta TEXT NOT NULL DEFAULT '{}',
    run INTEGER NOT NULL DEFAULT 0,
    tag TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created DESC);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created DESC);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created DESC);
CREATE INDEX IF NOT EXISTS jobs_updated ON jobs (updated);
CREATE INDEX IF NOT EXISTS jobs_status_state ON jobs (status, state);
CREATE TABLE IF NOT EXISTS job_meta (
    job TEXT NOT NULL, k TEXT NOT NULL, v TEXT NOT NULL, PRIMARY KEY (k, v, job)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_meta_job ON job_meta (job);
CREATE TABLE IF NOT EXISTS journal_seen (key TEXT PRIMARY KEY) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class JobFilter:
    """What the jobs page asks for; every field optional."""

    state: str | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    meta: tuple[str, str] | None = None
    """One ``(key, value)`` the job's metadata must hold."""


@dataclass(frozen=True)
class Row:
    """One job as the index holds it."""

    id: str
    state: str
    status: str
    created: float
    updated: float
    started: float | None
    worker: str | None
    error: str | None
    meta: dict[str, str]
    run: int


@dataclass(frozen=True)
class WorkerRow:
    """A worker seen in the records: ``host:pid``, when it last wrote one, how many jobs it runs."""

    id: str
    host: str
    pid: str
    seen: float
    running: int


class Index:
    """A local SQLite index of one job system's jobs.

    Args:
        ctx: The job system.
        path: The SQLite file (created with its folder); ``None`` keeps it in memory.
        refresh_s: How often to refresh while pages are being viewed.
        rescan_s: How often to list the whole store again (catches what no journal entry named).
        prune: Whether to delete journal entries older than a day (needs delete permission).
    """

    def __init__(self, ctx: Context, path: Path | None, refresh_s: float = 5.0, rescan_s: float = 3600.0,
                 prune: bool = True) -> None:
        self.ctx = ctx
        self.refresh_s = refresh_s
        self.rescan_s = rescan_s
        self.prune = prune
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.RLock()
        self._setup()
        self.depths: dict[str, QueueDepth | None] = {}
        """Each status's queue depth, its priority levels' queues included; and ``dead``'s."""
        self._missing_levels: dict[str, float] = {}
        self.synced_at = 0.0
        """When the index last finished a refresh (0: never)."""
        self.scanned_at = 0.0
        self.error: str | None = None
        """The last refresh's error, shown on the pages until a refresh succeeds."""
        self._viewed = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pruned_at = 0.0

    # -- set-up and the background thread --------------------------------------------------------

    def _setup(self) -> None:
        with self._lock:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM settings WHERE key='schema'").fetchone()
            identity = f"{self.ctx.name}|{self.ctx.store.location}"
            owner = self._db.execute("SELECT value FROM settings WHERE key='identity'").fetchone()
            if row is None or row[0] != SCHEMA_VERSION or owner is None or owner[0] != identity:
                self._db.executescript(
                    "DELETE FROM jobs; DELETE FROM job_meta; DELETE FROM journal_seen; DELETE FROM settings;"
                )
                self._set("schema", SCHEMA_VERSION)
                self._set("identity", identity)

    def _set(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    def _get_setting(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def start(self) -> None:
        """Sync, then keep refreshing, in a daemon thread (pages say when no sync finished yet)."""
        self._wake.set()
        self._thread = threading.Thread(target=self._run, name="remotejob-ui-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refresh."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def viewed(self) -> None:
        """A page was served: refresh at the fast pace (and now, if the last refresh is old)."""
        idle = time.monotonic() - self._viewed > VIEWER_S
        self._viewed = time.monotonic()
        if idle:
            self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            fast = time.monotonic() - self._viewed <= VIEWER_S
            self._wake.wait(self.refresh_s if fast else max(self.refresh_s, IDLE_REFRESH_S))
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - the thread must live on; the page shows it
                logger.warning("the dashboard's index could not refresh: %s", exc)
                self.error = str(exc)

    # -- refreshing ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Bring the index up to date: a rescan when one is due, else the journal's news; then
        the queues' depths."""
        now = time.time()
        try:
            if now - self.scanned_at >= self.rescan_s:
                self.rescan()
            else:
                self._read_journal()
            self._read_depths()
            if self.prune and now - self._pruned_at >= 3600:
                self._pruned_at = now
                self._prune_journal()
        except RemoteJobError as exc:
            self.error = str(exc)
            raise
        self.error = None
        self.synced_at = time.time()

    def rescan(self) -> None:
        """List the whole store and read every job whose records changed since the last scan."""
        started = time.time()
        seen_tags: dict[str, str] = {}
        records_of: dict[str, set[str]] = {}
        for info in self.ctx.store.list("jobs/"):
            segment, _, record = info.key[len("jobs/"):].partition("/")
            if not segment or not (record in keys.RECORDS or record.startswith("handoff-")):
                continue
            job_id = keys.job_from_segment(segment)
            seen_tags[job_id] = seen_tags.get(job_id, "") + f"{record}:{info.etag};"
            records_of.setdefault(job_id, set()).add(record)
        with self._lock:
            known = dict(self._db.execute("SELECT id, tag FROM jobs WHERE tag != ''").fetchall())
        changed = [job_id for job_id, tag in seen_tags.items() if known.get(job_id) != tag]
        self._load(changed, seen_tags, records_of)
        batch_rows = self._scan_batches(set(seen_tags))
        with self._lock, self._transaction():
            # a job is gone when neither its records nor a batch manifest name it
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS live (id TEXT PRIMARY KEY)")
            self._db.execute("DELETE FROM live")
            self._db.executemany("INSERT OR IGNORE INTO live VALUES (?)",
                                 ((j,) for j in list(seen_tags) + [r.id for r in batch_rows]))
            stale = [r[0] for r in self._db.execute(
                "SELECT id FROM jobs WHERE id NOT IN (SELECT id FROM live)").fetchall()]
            for job_id in stale:
                self._delete(job_id)
        self._upsert_pending(batch_rows)
        self.scanned_at = started
        self._read_journal()

    def _scan_batches(self, recorded: set[str]) -> list[Row]:
        rows: list[Row] = []
        infos = list(self.ctx.store.list("batches/"))
        for info in infos:
            rows.extend(self._batch_rows(info.key[len("batches/"):], recorded))
        return rows

    def _batch_rows(self, batch_id: str, recorded: set[str] | None = None) -> list[Row]:
        raw = records.read(self.ctx.store, keys.batch_key(batch_id))
        if raw is None:
            return []
        try:
            count, missing = int(raw["jobs"]), set(raw.get("missing") or [])
            status, created = str(raw["status"]), float(raw["created"])
        except (KeyError, TypeError, ValueError):
            return []
        metas = raw.get("metas")  # each job's metadata, or one "meta" they all share
        if not (isinstance(metas, list) and len(metas) == count):
            metas = [raw.get("meta") or {}] * count
        due = raw.get("due")
        state = "scheduled" if isinstance(due, (int, float)) and due > time.time() else "pending"
        rows = []
        for n in range(count):
            job_id = keys.batch_job_id(batch_id, n)
            if n in missing or (recorded is not None and job_id in recorded):
                continue
            meta = metas[n] if isinstance(metas[n], dict) else {}
            rows.append(Row(job_id, state, status, created, created, None, None, None,
                            {str(k): str(v) for k, v in meta.items()}, 0))
        return rows

    def _upsert_pending(self, rows: list[Row]) -> None:
        """Rows of batched jobs that have no record yet (never over a row a record gave)."""
        with self._lock, self._transaction():
            for r in rows:
                added = self._db.execute(
                    "INSERT OR IGNORE INTO jobs (id, state, status, created, updated, meta) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (r.id, r.state, r.status, r.created, r.updated, json.dumps(r.meta, ensure_ascii=False)),
                ).rowcount
                if added:
                    self._db.executemany("INSERT OR IGNORE INTO job_meta (job, k, v) VALUES (?, ?, ?)",
                                         ((r.id, k, v) for k, v in r.meta.items()))

    def _read_journal(self) -> None:
        with self._lock:
            newest = self._get_setting("journal") or ""
        stamp = keys.parse_journal(newest)
        start = keys.journal_start(stamp - LOOKBACK_S) if stamp is not None else ""
        listed = [info.key for info in self.ctx.store.list(keys.JOURNAL, start_after=start)]
        with self._lock:
            fresh = [key for key in listed if self._db.execute(
                "SELECT 1 FROM journal_seen WHERE key=?", (key,)).fetchone() is None]
        if not fresh:
            return
        jobs: set[str] = set()
        batches: set[str] = set()
        for entry in self._read_entries(fresh):
            jobs.update(entry.jobs)
            batches.update(entry.batches)
        pending: list[Row] = []
        for batch_id in batches:
            pending.extend(self._batch_rows(batch_id))
        self._upsert_pending(pending)
        self._load(sorted(jobs), None)
        with self._lock, self._transaction():
            self._db.executemany("INSERT OR IGNORE INTO journal_seen VALUES (?)", ((k,) for k in fresh))
            self._set("journal", max(fresh + ([newest] if newest else [])))
            if start:
                self._db.execute("DELETE FROM journal_seen WHERE key < ?", (start,))

    def _read_entries(self, entry_keys: list[str]) -> Iterator[journal.JournalEntry]:
        """The journal entries at these keys (one that vanished or is not an entry is skipped)."""

        def one(key: str) -> journal.JournalEntry | None:
            try:
                with self.ctx.store.get(key) as obj:
                    return journal.decode(key, obj.read())
            except NotFound:
                return None
            except ValueError as exc:
                logger.warning("skipping journal entry %s: %s", key, exc)
                return None

        with ThreadPoolExecutor(GET_THREADS) as pool:
            yield from (entry for entry in pool.map(one, entry_keys) if entry is not None)

    def _load(self, job_ids: list[str], tags: dict[str, str] | None,
              present: dict[str, set[str]] | None = None) -> None:
        """Read the jobs' status records and write them into the index (``present``: which
        records a listing found per job, so that only the one that says where it stands is read)."""
        if not job_ids:
            return

        def one(job_id: str) -> tuple[str, JobStatus | None]:
            try:
                found = None if present is None else present.get(job_id)
                if found:
                    try:  # only the records the listing found: one GET per job
                        return job_id, records.status(self.ctx.store, self.ctx.name, job_id, found)
                    except NotFound:
                        pass  # they went since the listing: read the job afresh
                return job_id, records.status(self.ctx.store, self.ctx.name, job_id)
            except NotFound:
                return job_id, None
            except RemoteJobError as exc:
                logger.warning("skipping job %s in the index: %s", job_id, exc)
                return job_id, None

        with ThreadPoolExecutor(GET_THREADS) as pool:
            results = list(pool.map(one, job_ids))
        with self._lock, self._transaction():
            for job_id, st in results:
                if st is None:
                    if keys.parse_batch_job(job_id) is None:
                        self._delete(job_id)
                    continue
                self._write(st, "" if tags is None else tags.get(job_id, ""))

    def _write(self, st: JobStatus, tag: str) -> None:
        meta = dict(getattr(st, "meta", {}) or {})
        self._db.execute(
            "INSERT OR REPLACE INTO jobs (id, state, status, created, updated, started, worker, error, meta,"
            " run, tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (st.id, st.state, st.status, st.created, st.updated, st.started, st.worker, st.error,
             json.dumps(meta, ensure_ascii=False), st.run, tag),
        )
        self._db.execute("DELETE FROM job_meta WHERE job=?", (st.id,))
        self._db.executemany("INSERT OR IGNORE INTO job_meta (job, k, v) VALUES (?, ?, ?)",
                             ((st.id, k, v) for k, v in meta.items()))

    def _delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        self._db.execute("DELETE FROM job_meta WHERE job=?", (job_id,))

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _read_depths(self) -> None:
        depths: dict[str, QueueDepth | None] = {}
        self.ctx.ensure_queues()
        for status in (*self.ctx.statuses, keys.DEAD):
            try:
                depths[status] = self.ctx.queues.depth(keys.queue_name(self.ctx.name, status))
            except RemoteJobError as exc:
                logger.warning("could not read the depth of %s: %s", status, exc)
                depths[status] = None
        for label, extra in levels.level_depths(self.ctx, self._missing_levels).items():
            status = label.rsplit("-", 1)[0]
            depths[status] = _added(depths.get(status), extra)
        self.depths = depths

    def _prune_journal(self) -> None:
        try:
            journal.prune(self.ctx.store)
        except RemoteJobError as exc:  # e.g. a read-only role: pruning is the workers' job too
            logger.info("not pruning the journal: %s", exc)

    def note(self, st: JobStatus) -> None:
        """Write a status the ui just read or made (an action's outcome) into the index."""
        with self._lock, self._transaction():
            self._write(st, "")

    # -- queries ----------------------------------------------------------------------------------

    def jobs(self, flt: JobFilter, before: tuple[float, str] | None = None,
             limit: int = PAGE_SIZE) -> list[Row]:
        """Jobs matching ``flt``, newest first, after the cursor ``before`` (created, id)."""
        where, args = self._where(flt)
        if before is not None:
            where.append("(j.created < ? OR (j.created = ? AND j.id < ?))")
            args += [before[0], before[0], before[1]]
        sql = ("SELECT j.id, j.state, j.status, j.created, j.updated, j.started, j.worker, j.error, j.meta, "
               "j.run FROM jobs j")
        if flt.meta is not None:
            sql += " JOIN job_meta m ON m.job = j.id AND m.k = ? AND m.v = ?"
            args = [*flt.meta, *args]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY j.created DESC, j.id DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]), r[9]) for r in rows]

    @staticmethod
    def _where(flt: JobFilter) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        args: list[Any] = []
        if flt.state:
            where.append("j.state = ?")
            args.append(flt.state)
        if flt.status:
            where.append("j.status = ?")
            args.append(flt.status)
        if flt.since is not None:
            where.append("j.created >= ?")
            args.append(flt.since)
        if flt.until is not None:
            where.append("j.created < ?")
            args.append(flt.until)
        return where, args

    def count(self) -> int:
        """How many jobs the index holds."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM jobs").fetchone()[0])

    def counts(self) -> dict[tuple[str, str], int]:
        """Jobs by (status queue, state)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, state, count(*) FROM jobs GROUP BY status, state").fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    def oldest_waiting(self) -> dict[str, float]:
        """Per status queue, when its longest-waiting pending job was sent there."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, min(updated) FROM jobs WHERE state = 'pending' GROUP BY status").fetchall()
        return {r[0]: float(r[1]) for r in rows}

    def finished_since(self, since: float) -> list[tuple[float, str, float]]:
        """``(finished, state, latency)`` of the jobs that finished from ``since`` on (latency:
        submit to outcome, seconds)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT updated, state, updated - created FROM jobs WHERE updated >= ? "
                "AND state IN (?, ?, ?)", (since, *DONE),
            ).fetchall()
        return [(float(r[0]), str(r[1]), float(r[2])) for r in rows]

    def workers(self, since: float) -> list[WorkerRow]:
        """Workers named by records written from ``since`` on, or running a job now."""
        with self._lock:
            rows = self._db.execute(  # each half reads one index: recent records, running jobs
                "SELECT worker, max(updated), sum(state = 'inprogress') FROM ("
                " SELECT worker, updated, state FROM jobs WHERE updated >= ? AND worker IS NOT NULL"
                " UNION ALL SELECT worker, updated, state FROM jobs"
                " WHERE state = 'inprogress' AND updated < ? AND worker IS NOT NULL"
                ") GROUP BY worker ORDER BY max(updated) DESC",
                (since, since),
            ).fetchall()
        out = []
        for worker, seen, running in rows:
            host, _, pid = str(worker).rpartition(":")
            out.append(WorkerRow(str(worker), host or str(worker), pid, float(seen), int(running or 0)))
        return out

    def running_on(self, worker: str) -> list[str]:
        """The jobs a worker runs now."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE worker = ? AND state = 'inprogress'",
                                    (worker,)).fetchall()
        return [r[0] for r in rows]

    def refresh_jobs(self, job_ids: Iterable[str]) -> None:
        """Read these jobs again now (after an action on them)."""
        self._load(list(job_ids), None)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _added(depth: QueueDepth | None, extra: QueueDepth) -> QueueDepth | None:
    """A status queue's depth with one of its priority levels' added (None stays unknown)."""
    if depth is None:
        return None
    ages = [a for a in (depth.oldest_age_s, extra.oldest_age_s) if a is not None]
    return QueueDepth(depth.waiting + extra.waiting, depth.in_flight + extra.in_flight,
                      depth.delayed + extra.delayed, max(ages) if ages else None)
