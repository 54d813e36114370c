"""Dedup keys: ``submit(..., dedup_key=k)`` makes at most one live job per key.

While a job submitted with a key is queued, scheduled or running, submitting again with that key
returns that job's id and sends nothing; once it has finished (completed, failed or cancelled) the
key is free and the next submit with it makes a new job. A key holds for exactly as long as its
job is unfinished: there is no time window (SQS FIFO forgets a deduplication id after 5 minutes,
even while the job still waits; here a job queued for a day still holds its key, and a job that
finished a second ago no longer does).

Built only on create-once writes, never on read-modify-write. Each job a key made is one
*generation*, ``dedup/<sha256(key)>/<generation>`` (see ``keys.py``), created once and naming the
job's id. A submit lists the key's generations (byte order is generation order), reads the newest
and its job's status: an unfinished job holds the key and its id is returned; otherwise the
submit creates the next generation with a fresh job id, and only the one create that wins submits
that job (as a keyed submit: its ``queued`` record is created once, before anything else). A
loser reads the winner's generation and returns its job. A create whose reply was lost is read
back and recognised by its random ``token`` (``records.claim``).

A generation whose job has no record yet is being submitted by its creator: a submit waits for
the record (up to :data:`WAIT_S`). Past :data:`SETTLING_S` after the generation was created (by
its creator's clock), its creator is taken to have died before sending the job, and the key is
free. If the winner's submit fails having sent nothing, it removes its generation again.

Cost on top of a keyed submit: 1 LIST + 1 GET (the newest generation) + 1-3 GETs (its job's
status, while there is one) + 1 PUT (the new generation) + 1 DELETE from the third generation on
(only the newest two are kept).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from . import batch, keys, records
from .bodies import parse_entry
from .context import Context
from .errors import BackendUnavailable, BatchPartlyFailed, NotFound, RemoteJobError

logger = logging.getLogger(__name__)

KEY_MAX_BYTES = 1024
"""The longest dedup key, in UTF-8 bytes."""
SETTLING_S = 60.0
"""How long after its creation a generation whose job has no record yet is taken to be still
being submitted; past it, its creator is taken to have died before sending the job."""
WAIT_S = 10.0
"""How long a submit waits for the job of a generation that is still being submitted."""
ROUNDS = 8
"""Generation creates a submit may lose (each to a job that finished at once) before giving up."""

_Current = tuple[int, dict[str, Any] | None]
"""The newest generation and its object (None: it was removed since it was listed)."""


def check_dedup_key(dedup_key: object) -> str:
    """Return a valid dedup key.

    Raises:
        TypeError: not a str. ValueError: empty, not valid Unicode, or over 1,024 UTF-8 bytes.
    """
    if not isinstance(dedup_key, str):
        raise TypeError(f"dedup_key must be a str (e.g. f'report-{{date}}'), got {type(dedup_key).__name__}")
    if not dedup_key:
        raise ValueError("dedup_key must not be empty: pass a key naming the work, or None for no dedup")
    try:
        size = len(dedup_key.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("dedup_key must be valid Unicode text (it holds a lone surrogate)") from None
    if size > KEY_MAX_BYTES:
        raise ValueError(f"dedup_key is {size} UTF-8 bytes, over {KEY_MAX_BYTES}: use a shorter key, "
                         "e.g. a hash of the long one")
    return dedup_key


def submit(
    ctx: Context, data: Mapping[str, Any], status: str, dedup_key: str, *,
    time_limit: float | None = None, due: float | None = None, priority: str | None = None,
) -> str:
    """Submit one job unless a job submitted with ``dedup_key`` is unfinished; return the id of
    the job that holds the key (the new one, or the unfinished one). See the module docstring.

    Raises:
        TypeError, ValueError: a bad key, or ``data`` with a ``key`` of its own (the dedup key
            chooses the job id). Everything ``Queue.submit`` raises.
        BackendUnavailable: the key's job is still being submitted by another caller after
            waiting :data:`WAIT_S`, or the key was contended past :data:`ROUNDS`: try again.
    """
    check_dedup_key(dedup_key)
    if isinstance(data, Mapping) and data.get("key") is not None:
        raise ValueError("data has a 'key' and a dedup_key is given: the dedup key chooses the job id, "
                         "so leave 'key' out (or submit without dedup_key to name the job)")
    parse_entry(data)  # everything is checked before anything is written
    batch.check_time_limit(time_limit)
    ctx.status_queue(status, priority)
    deadline, pause, lost = time.monotonic() + WAIT_S, 0.02, 0
    found = _generations(ctx, dedup_key)
    current = _read(ctx, dedup_key, found[-1]) if found else None
    while True:
        if current is not None and current[1] is not None:
            job_id, record = _job_of(dedup_key, current[1]), current[1]
            state = _unfinished(ctx, job_id)
            if state:
                return job_id
            if state is None and time.time() - _created(record) < SETTLING_S:
                if time.monotonic() >= deadline:
                    raise BackendUnavailable(
                        f"job {job_id!r} of dedup key {dedup_key!r} is still being submitted by another "
                        f"caller after {WAIT_S:g} s: try again later")
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
                current = _read(ctx, dedup_key, current[0])
                continue
        generation = 0 if current is None else current[0] + 1
        new_id = keys.new_key()
        mine = {"key": dedup_key, "job": new_id, "token": uuid.uuid4().hex, "created": time.time()}
        where = keys.dedup_generation_key(dedup_key, generation)
        winner = records.claim(ctx.store, where, mine, owner="token")
        if winner is None:
            _send(ctx, data, status, dedup_key, generation, new_id, time_limit, due, priority)
            _prune(ctx, dedup_key, [g for g in found if g < generation - 1])
            return new_id
        lost += 1
        if lost >= ROUNDS:
            raise BackendUnavailable(f"dedup key {dedup_key!r} is contended: {lost} submits won it "
                                     "before this one; try again")
        current = (generation, winner)


def _generations(ctx: Context, dedup_key: str) -> list[int]:
    """The key's generations, oldest first."""
    found = (keys.parse_dedup_generation(info.key) for info in ctx.store.list(keys.dedup_prefix(dedup_key)))
    return sorted(g for g in found if g is not None)


def _read(ctx: Context, dedup_key: str, generation: int) -> _Current:
    return generation, records.read(ctx.store, keys.dedup_generation_key(dedup_key, generation))


def _job_of(dedup_key: str, record: Mapping[str, Any]) -> str:
    job_id = record.get("job")
    if not isinstance(job_id, str) or not job_id:
        raise RemoteJobError(f"a dedup object of key {dedup_key!r} names no job: remove "
                             f"{keys.dedup_prefix(dedup_key)!r} to free the key")
    return job_id


def _created(record: Mapping[str, Any]) -> float:
    created = record.get("created")
    return float(created) if isinstance(created, (int, float)) else 0.0


def _unfinished(ctx: Context, job_id: str) -> bool | None:
    """True while the job is queued, scheduled or running; False once finished; None: no record."""
    try:
        return not records.status(ctx.store, ctx.name, job_id).done
    except NotFound:
        return None


def _send(
    ctx: Context, data: Mapping[str, Any], status: str, dedup_key: str, generation: int, job_id: str,
    time_limit: float | None, due: float | None, priority: str | None,
) -> None:
    """Submit the job this submit's generation names; remove the generation if nothing was sent."""
    try:
        batch.submit_many(ctx, [{**data, "key": job_id}], status, time_limit, due=due, priority=priority)
    except BaseException as exc:
        maybe_sent = isinstance(exc, BatchPartlyFailed) and bool(exc.done or exc.uncertain)
        if isinstance(exc, Exception) and not maybe_sent:
            _prune(ctx, dedup_key, [generation])
        raise


def _prune(ctx: Context, dedup_key: str, generations: list[int]) -> None:
    """Remove generations (best effort: one left behind only costs a LIST entry)."""
    for generation in generations:
        try:
            ctx.store.delete(keys.dedup_generation_key(dedup_key, generation))
        except RemoteJobError as exc:
            logger.warning("could not remove generation %d of dedup key %r: %s", generation, dedup_key, exc)
