"""The status records under ``jobs/<job-id>/`` and the batch manifests under ``batches/``: the only
code that reads or writes them.

- ``queued``: created once by a submit or trigger with a chosen key (a job id runs once); rewritten
  when a pipeline hands the job on or a redrive sends it back, so it names the status it waits in;
- ``progress``: a running attempt (worker, attempt, started), written at its first heartbeat (so
  short jobs never pay for it), at once by ``Queue.next()``, and at once on a job's last allowed
  delivery (so a job that kills its worker can say which worker it was);
- ``final``: the job's outcome, created once by the attempt that wins the claim (see
  ``lifecycle.py``), naming that attempt and each output with its SHA-256 and size, and the
  handler's last progress; a ``cancel()`` claims it too (``cancelled``), racing completion. A
  failed or cancelled job's record keeps its message (``envelope``) for ``retry()``;
- ``history``: the earlier runs of a job that ``retry()`` sent again; ``retry-<n>``: created
  once by the retry that sent the n-th run, so two retries at once send one message;
- ``handoff-<status>``: a pipeline stage's outcome, created once like ``final``;
- ``start-<status>``: which message may run a pipeline stage after the first (see
  :func:`claim_start`);
- ``batches/<batch-id>``: one submit's manifest, standing for its generated ids'
  ``queued`` records.

So that a job list and a job page need no request beyond these records, ``queued``, ``progress``
and ``final`` carry the job's metadata (``meta``; a manifest carries its jobs'), ``progress`` and
``final`` the size of the input the worker read (``input_size``), and the ``final`` record of an
attempt whose handler raised its formatted traceback (``traceback``, the last 16 KiB). Every
write of these records is also noted in the journal (see ``journal.py``).

:func:`status` reads ``final`` first, so a finished job never looks unfinished; then whichever of
``progress`` and ``queued`` was written last.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any

from . import keys
from .backends.base import ObjectStore
from .envelope import sqs_safe
from .errors import AlreadyExists, BackendUnavailable, NotFound, RemoteJobError, UncertainResult
from .status import STATES, Attempt, JobStatus, Output, Progress

logger = logging.getLogger(__name__)

_JSON = "application/json"
CLAIM_TRIES = 5
"""How often a create-once write is tried while its outcome cannot be read back."""


def encode(doc: Mapping[str, Any]) -> bytes:
    """Serialise a status record (any text, lone surrogates included, survives as an escape)."""
    return sqs_safe(json.dumps({"v": 1, **doc}, ensure_ascii=False, separators=(",", ":"))).encode()


def read(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The record at ``key``, or None if there is none."""
    try:
        with store.get(key) as obj:
            doc = json.loads(obj.read())
    except NotFound:
        return None
    return doc if isinstance(doc, dict) else None


def _put(store: ObjectStore, key: str, doc: Mapping[str, Any]) -> None:
    """Overwrite a record; a lost reply is retried (the same bytes twice are harmless)."""
    body = encode(doc)
    for attempt in range(CLAIM_TRIES):
        try:
            store.put(key, body, content_type=_JSON)
            return
        except UncertainResult:
            if attempt == CLAIM_TRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def create_queued(
    store: ObjectStore, job_id: str, status: str, now: float, meta: Mapping[str, str] | None = None, *,
    due: float | None = None, priority: str | None = None, extra: Mapping[str, Any] | None = None,
) -> None:
    """Create the ``queued`` record of a job whose caller chose its id, once (with the job's
    metadata, so that a job list can show and filter it without reading the input). ``due``:
    when a delayed job may start (``status()`` says ``scheduled`` until then); ``extra``: more
    fields for the record.

    Raises:
        AlreadyExists: the job id was submitted or triggered before (a job id runs once).
    """
    record = _queued(job_id, status, now, now, 0, meta, due, priority, extra)
    record["token"] = uuid.uuid4().hex
    if claim(store, keys.record_key(job_id, "queued"), record, owner="token") is None:
        return
    raise AlreadyExists(
        f"job {job_id!r} was triggered before, and a job id runs once: store the input under "
        "a new key (store() without 'key' makes one) to run it again"
    )


def forget_queued(store: ObjectStore, job_id: str) -> None:
    """Remove a ``queued`` record whose job was never sent."""
    store.delete(keys.record_key(job_id, "queued"))


def write_queued(
    store: ObjectStore, job_id: str, status: str, created: float, updated: float, retry: int = 0,
    meta: Mapping[str, str] | None = None, *, due: float | None = None, priority: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Say the job waits in ``status`` (a hand-on, a redrive or a retry); the same arguments
    write the same bytes, so a repeated hand-on changes nothing."""
    _put(store, keys.record_key(job_id, "queued"),
         _queued(job_id, status, created, updated, retry, meta, due, priority, extra))


def _queued(
    job_id: str, status: str, created: float, updated: float, retry: int, meta: Mapping[str, str] | None,
    due: float | None, priority: str | None, extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    doc: dict[str, Any] = {"job": job_id, "state": "pending", "status": status, "created": created,
                           "updated": updated}
    if retry:
        doc["retry"] = retry
    if meta:
        doc["meta"] = dict(meta)
    if due is not None:
        doc["due"] = due
    if priority is not None:
        doc["priority"] = priority
    doc.update(extra or {})
    return doc


def claim_cancel(
    store: ObjectStore, job_id: str, status: str, created: float, reason: str | None, now: float, run: int,
    meta: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Create the job's ``final`` record as ``cancelled``; None if this cancel won, else the
    outcome that stands (the job finished, or was cancelled, first)."""
    record: dict[str, Any] = {
        "job": job_id, "state": "cancelled", "status": status, "created": created, "updated": now,
        "error": reason, "outputs": {}, "attempt_id": f"cancel-{uuid.uuid4().hex}", "published": True,
    }
    if run:
        record["retry"] = run
    if meta:
        record["meta"] = dict(meta)
    return claim(store, keys.record_key(job_id, "final"), record)


def keep_envelope(
    store: ObjectStore, job_id: str, record: Mapping[str, Any], body: str,
    progress: Mapping[str, Any] | None = None,
) -> None:
    """Keep a cancelled job's message in its final record, so ``retry()`` can send it (with the
    last progress its handler reported, when it ran)."""
    extra: dict[str, Any] = {"envelope": body}
    if progress is not None and record.get("progress") is None:
        extra["progress"] = dict(progress)
    if any(record.get(k) != v for k, v in extra.items()):
        _put(store, keys.record_key(job_id, "final"), {**record, **extra})


def claim_retry(store: ObjectStore, job_id: str, run: int) -> bool:
    """Let one ``retry()`` send the job's ``run``-th run: True for the first to ask."""
    record = {"job": job_id, "run": run, "id": uuid.uuid4().hex, "created": time.time()}
    return claim(store, keys.retry_key(job_id, run), record, owner="id") is None


def add_history(store: ObjectStore, job_id: str, record: Mapping[str, Any]) -> None:
    """Append a finished run (its final record, less its message and outputs) to the history."""
    earlier = read(store, keys.record_key(job_id, "history")) or {}
    runs = list(earlier.get("runs") or [])
    runs.append({k: record.get(k) for k in ("state", "error", "worker", "attempt", "started", "updated")})
    _put(store, keys.record_key(job_id, "history"), {"job": job_id, "runs": runs})


def write_progress(
    store: ObjectStore, job_id: str, status: str, created: float, started: float, worker: str, attempt: int,
    progress: Mapping[str, Any] | None = None, retry: int = 0, meta: Mapping[str, str] | None = None,
    input_size: int | None = None,
) -> None:
    """Record a running attempt of a job: where it runs, which delivery, since when, how far
    its handler says it has got, and the job's metadata and input size (when known)."""
    doc: dict[str, Any] = {
        "job": job_id,
        "state": "inprogress",
        "status": status,
        "created": created,
        "updated": time.time(),
        "started": started,
        "worker": worker,
        "attempt": attempt,
    }
    if progress is not None:
        doc["progress"] = dict(progress)
    if retry:
        doc["retry"] = retry
    if meta:
        doc["meta"] = dict(meta)
    if input_size is not None:
        doc["input_size"] = input_size
    _put(store, keys.record_key(job_id, "progress"), doc)


def clear_progress(store: ObjectStore, job_id: str) -> None:
    """Remove the ``progress`` record: the job waits again (a retry, a release, a redrive)."""
    store.delete(keys.record_key(job_id, "progress"))


def read_progress(store: ObjectStore, job_id: str) -> dict[str, Any] | None:
    """The ``progress`` record of a job, or None."""
    return read(store, keys.record_key(job_id, "progress"))


def claim(
    store: ObjectStore, key: str, record: Mapping[str, Any], owner: str = "attempt_id"
) -> dict[str, Any] | None:
    """Create the record at ``key`` once; return None if this write won, else the record that did.

    A write whose reply was lost is tried again; if the record is then found, its ``owner`` field
    tells whether it was this write. A record that exists but cannot be read back (a concurrent
    write still settling, or it was removed in between) is tried a bounded number of times.

    Raises:
        BackendUnavailable: the outcome could not be settled (the caller's delivery comes back).
    """
    body = encode(record)
    for attempt in range(CLAIM_TRIES):
        try:
            store.put(key, body, content_type=_JSON, if_absent=True)
            return None
        except (AlreadyExists, UncertainResult):
            existing = read(store, key)
        if existing is not None:
            return None if existing.get(owner) == record.get(owner) else existing
        time.sleep(0.05 * 2**attempt)
    raise BackendUnavailable(f"could not settle the create-once record {key!r}: try again later")


def mark_published(store: ObjectStore, key: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Rewrite a claimed record as published (its outputs are readable); return it."""
    done = {**record, "published": True}
    _put(store, key, done)
    return done


def rewrite(store: ObjectStore, key: str, record: Mapping[str, Any]) -> None:
    """Replace a claimed record (only its winner, or a finisher acting for it, does this)."""
    _put(store, key, record)


def reopen(store: ObjectStore, job_id: str) -> None:
    """Remove a job's outcome and progress so it can run again (a redrive of a failed job)."""
    store.delete(keys.record_key(job_id, "final"))
    store.delete(keys.record_key(job_id, "progress"))


def claim_start(store: ObjectStore, job_id: str, status: str, message_id: str) -> bool:
    """Let one message run the pipeline stage ``status`` of a job: True for the first message to
    ask (and for that message's redeliveries), False for another copy of the hand-on."""
    record = {"job": job_id, "status": status, "message": message_id, "created": time.time()}
    return claim(store, keys.start_key(job_id, status), record, owner="message") is None


def forget_start(store: ObjectStore, job_id: str, status: str) -> None:
    """Let a new message run a pipeline stage (a redrive sends the job back as a new message)."""
    store.delete(keys.start_key(job_id, status))


MANIFEST_META_MAX = 256 * 1024
"""Bytes of metadata a manifest carries for its jobs at most (beyond, the jobs' metadata shows
once a worker has recorded them)."""


def write_manifest(
    store: ObjectStore, batch_id: str, count: int, status: str, now: float, *, if_absent: bool,
    missing: Sequence[int] = (), meta: Sequence[Mapping[str, str]] = (), due: float | None = None,
    priority: str | None = None,
) -> None:
    """Write the manifest of a submitted batch: its first ``count`` generated ids are jobs, but
    for the ``missing`` ones (not sent); ``meta`` is each generated job's metadata, in order
    (kept once when all jobs share it)."""
    doc: dict[str, Any] = {"v": 1, "batch": batch_id, "jobs": count, "state": "pending",
                           "status": status, "created": now, "updated": now}
    if missing:
        doc["missing"] = sorted(missing)
    if due is not None:
        doc["due"] = due
    if priority is not None:
        doc["priority"] = priority
    if any(meta):
        if all(m == meta[0] for m in meta):
            doc["meta"] = dict(meta[0])
        else:
            each = [dict(m) for m in meta]
            if len(json.dumps(each)) <= MANIFEST_META_MAX:
                doc["metas"] = each
    body = json.dumps(doc, separators=(",", ":")).encode()
    store.put(keys.batch_key(batch_id), body, content_type=_JSON, if_absent=if_absent)


def delete_manifest(store: ObjectStore, batch_id: str) -> None:
    """Remove a batch's manifest: none of its jobs was sent."""
    store.delete(keys.batch_key(batch_id))


def status(store: ObjectStore, name: str, job_id: str, present: Collection[str] | None = None) -> JobStatus:
    """Where a job stands, from its records (see the module docstring). ``present``: the records
    a listing found (e.g. ``{"final"}``); only those are read.

    Raises:
        NotFound: no job with this id was ever submitted.
    """
    def get(record: str) -> bytes | None:
        if present is not None and record not in present:
            return None
        return _get(store, keys.record_key(job_id, record))

    final = get("final")
    if final is not None:
        return _with_history(store, decode_status(job_id, final))
    found = [decode_status(job_id, raw) for raw in (get(r) for r in ("progress", "queued"))
             if raw is not None]
    if found:
        return _with_history(store, max(found, key=lambda s: s.updated))
    batched = keys.parse_batch_job(job_id)
    if batched is not None:
        raw = _get(store, keys.batch_key(batched[0]))
        pending = None if raw is None else decode_manifest(job_id, batched[1], raw)
        if pending is not None:
            return pending
    raise NotFound(f"no job {job_id!r} in {name!r}: it was never submitted")


def _with_history(store: ObjectStore, st: JobStatus) -> JobStatus:
    """Add the earlier runs of a retried job (only a retried job's records name a run)."""
    if not st.run:
        return st
    doc = read(store, keys.record_key(st.id, "history")) or {}
    try:
        runs = [Attempt(state=str(r["state"]), error=r.get("error"), worker=r.get("worker"),
                        attempt=r.get("attempt"), started=r.get("started"), updated=float(r["updated"]))
                for r in doc.get("runs") or []]
    except (KeyError, TypeError, ValueError) as exc:
        raise RemoteJobError(f"history record of job {st.id!r} is corrupt: {exc}") from exc
    return replace(st, history=runs)


def _get(store: ObjectStore, key: str) -> bytes | None:
    try:
        with store.get(key) as obj:
            return obj.read()
    except NotFound:
        return None


def decode_status(job_id: str, raw: bytes) -> JobStatus:
    """Parse a status record into a :class:`JobStatus`.

    Raises:
        RemoteJobError: the record is not one of ours.
    """
    try:
        doc = json.loads(raw)
        assets = {
            name: Output(name, int(a["size"]), str(a["sha256"]), str(a["content_type"]))
            for name, a in doc.get("outputs", {}).items()
        }
        state = doc["state"]
        progress = doc.get("progress")
        if progress is not None:
            progress = Progress(done=float(progress["done"]),
                                total=None if progress.get("total") is None else float(progress["total"]),
                                message=progress.get("message"), updated=float(progress["updated"]))
        if doc.get("published") is False:
            state = "inprogress"  # the outcome is settled; its outputs are being published
        due = doc.get("due")
        due = None if due is None else float(due)
        if state == "pending" and due is not None and due > time.time():
            state = "scheduled"
        priority = doc.get("priority")
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        meta = doc.get("meta") or {}
        if not isinstance(meta, dict):
            raise ValueError("meta is not a mapping")
        size = doc.get("input_size")
        return JobStatus(
            id=job_id,
            state=state,
            status=str(doc["status"]),
            created=float(doc["created"]),
            updated=float(doc["updated"]),
            error=doc.get("error"),
            outputs=list(assets),
            assets=assets,
            worker=doc.get("worker"),
            attempt=doc.get("attempt"),
            started=doc.get("started"),
            progress=progress,
            run=int(doc.get("retry") or 0),
            meta={str(k): str(v) for k, v in meta.items()},
            traceback=None if doc.get("traceback") is None else str(doc["traceback"]),
            input_size=None if size is None else int(size),
            due=due,
            priority=None if priority is None else str(priority),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RemoteJobError(f"status record of job {job_id!r} is corrupt: {exc}") from exc


def outcome(job_id: str, record: Mapping[str, Any]) -> JobStatus:
    """The outcome a ``final`` record settles, even while its outputs are still being published
    (``status()`` says ``inprogress`` until they are readable)."""
    return decode_status(job_id, encode({**record, "published": True}))


def decode_manifest(job_id: str, index: int, raw: bytes) -> JobStatus | None:
    """The pending status of the ``index``-th job of a batch manifest; None if it has no such job.

    Raises:
        RemoteJobError: the manifest is not one of ours.
    """
    try:
        doc = json.loads(raw)
        count, missing = doc["jobs"], doc.get("missing", [])
    except (ValueError, KeyError, TypeError) as exc:
        raise RemoteJobError(f"batch manifest of job {job_id!r} is corrupt: {exc}") from exc
    if not isinstance(count, int) or index >= count or index in missing:
        return None
    each = doc.get("metas")
    if isinstance(each, list) and index < len(each):  # this job's own metadata
        raw = json.dumps({**doc, "meta": each[index], "metas": None}).encode()
    return decode_status(job_id, raw)


def recent_jobs(store: ObjectStore) -> list[str]:
    """Every job id in the store, most recently updated first (``remotejob ls``)."""
    latest: dict[str, float] = {}
    for info in store.list("jobs/"):
        segment, _, record = info.key[len("jobs/"):].partition("/")
        if segment and (record in keys.RECORDS or record.startswith("handoff-")):
            job_id = keys.job_from_segment(segment)
            latest[job_id] = max(latest.get(job_id, 0.0), info.modified)
    for info in store.list("batches/"):  # batched jobs that have no record yet
        raw = _get(store, info.key)
        batch_id = info.key[len("batches/"):]
        for index in _manifest_jobs(raw or b"{}"):
            latest.setdefault(keys.batch_job_id(batch_id, index), info.modified)
    return sorted(latest, key=lambda job_id: latest[job_id], reverse=True)


def _manifest_jobs(raw: bytes) -> list[int]:
    """The indices of a manifest's jobs (those sent); none for a manifest that is not ours."""
    try:
        doc = json.loads(raw)
        count, missing = doc["jobs"], set(doc.get("missing", []))
    except (ValueError, KeyError, TypeError):
        return []
    return [i for i in range(count) if i not in missing] if isinstance(count, int) else []
