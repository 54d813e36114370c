"""The only code that knows the key and queue-name layout.

One job system keeps everything in one bucket/prefix (or folder)::

    in/<job-id>                  the job's input body, its metadata travelling with the object
    out/<job-id>/<asset>         the job's output assets
    jobs/<job-id>/queued         the job's status records (see ``records.py``)
    jobs/<job-id>/progress
    jobs/<job-id>/final
    jobs/<job-id>/history                  earlier runs of a retried job
    jobs/<job-id>/retry-<n>                which retry() sent the job's n-th run
    jobs/<job-id>/handoff-<status>         a pipeline stage's create-once record
    jobs/<job-id>/start-<status>           which message runs a later pipeline stage
    jobs/<job-id>/attempts/<status>/<attempt>/<asset>   an attempt's staged outputs (see
                                 ``lifecycle.py``), per stage so that no stage sweeps another's
    batches/<batch-id>           one submit's manifest: its generated job ids are
                                 ``<batch-id>-<n>`` for n below its job count (see ``batch.py``)
    cancels/<stamp>-<job-id>     the cancellation log workers read (see ``control.py``)
    journal/<stamp>              which jobs and batches a process wrote records of, about once
                                 a second while it writes any (see ``journal.py``): a dashboard's
                                 index reads it instead of listing ``jobs/``
    timers/<due-stamp>-<random>  messages of jobs due later than a queue can delay them, parked
                                 until a worker sends them (see ``timers.py``)
    schedules/<name>             a periodic job's schedule (see ``schedules.py``); its ticks'
                                 job ids are ``<name>@<YYYYMMDDTHHMMSSZ>``
    in/<name>@input              a schedule's input too large to travel in its messages
    dedup/<sha256>/<generation>  which job holds a dedup key (the key's SHA-256 in hex): one
                                 create-once object per job submitted with it (see ``dedup.py``)

Staging lives under ``jobs/`` rather than ``out/`` so that ``out/<job-id>/`` only ever holds
published outputs. Where a job id is one segment of a longer key, ``%`` and ``/`` in it are
written ``%25`` and ``%2F`` (:func:`job_segment`), so that no two jobs' keys can meet: job ``a``'s
output ``b/c`` and job ``a/b``'s output ``c`` stay apart.

and one queue per status, ``<name>-<status>``, plus the dead-letter queue ``<name>-dead``; a
status's jobs of high or low priority wait in ``<name>-<status>-high`` and ``<name>-<status>-low``.

In legacy mode (the 2014 Node.js package's layout, see ``legacy.py``) the store is the root of
the bucket ``remotejobs-<name>``, a 2014 job's input is at any key outside the areas above
(:data:`AREAS`), and each output is also published at the root as ``<job-id>-<asset>``
(:func:`legacy_output_key`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

from .limits import validate_key

DIRECTIONS = {"in": "in", "input": "in", "out": "out", "output": "out"}
DEAD = "dead"
RECORDS = ("queued", "progress", "final", "history")
CANCELS = "cancels/"
JOURNAL = "journal/"
TIMERS = "timers/"
SCHEDULES = "schedules/"
DEDUP = "dedup/"
AREAS = ("in/", "out/", "jobs/", "batches/", CANCELS, JOURNAL, TIMERS, SCHEDULES, DEDUP)
"""The prefixes remotejob's own objects live under; a 2014 job's input may not name them."""


def direction(name: str) -> str:
    """Normalise a direction: ``in``/``input`` or ``out``/``output``.

    Raises:
        ValueError: any other direction.
    """
    try:
        return DIRECTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown direction {name!r}: use 'in' (job inputs) or 'out' (job outputs)"
        ) from None


def object_key(direction_name: str, key: str) -> str:
    """The store key of ``key`` in a direction, e.g. ``in/cat.jpg``; validates both."""
    return validate_key(f"{direction(direction_name)}/{validate_key(key)}")


def input_key(job_id: str) -> str:
    """Where a job's input body lives."""
    return object_key("in", job_id)


def job_segment(job_id: str) -> str:
    """A job id as one key segment: ``%`` and ``/`` written ``%25`` and ``%2F``."""
    return validate_key(job_id).replace("%", "%25").replace("/", "%2F")


def job_from_segment(segment: str) -> str:
    """The job id a :func:`job_segment` stands for."""
    return segment.replace("%2F", "/").replace("%25", "%")


def output_prefix(job_id: str) -> str:
    """The prefix of a job's outputs: ``out/<job-segment>/``."""
    return f"out/{job_segment(job_id)}/"


def output_key(job_id: str, asset: str) -> str:
    """Where one output asset of a job lives: ``out/<job-segment>/<asset>``."""
    return validate_key(output_prefix(job_id) + validate_key(asset))


def legacy_output_key(job_id: str, asset: str) -> str:
    """Where the 2014 package puts (and its requesters look for) a job's output asset: the
    bucket's root, ``<job-id>-<asset>``."""
    return validate_key(f"{validate_key(job_id)}-{validate_key(asset)}")


def in_areas(key: str) -> bool:
    """The key lies in one of remotejob's own areas (:data:`AREAS`)."""
    return key.startswith(AREAS)


def record_key(job_id: str, record: str) -> str:
    """Where one of a job's status records lives (``queued``, ``progress`` or ``final``)."""
    if record not in RECORDS:
        raise ValueError(f"unknown status record {record!r}")
    return validate_key(f"jobs/{job_segment(job_id)}/{record}")


def handoff_key(job_id: str, status: str) -> str:
    """The create-once record of a pipeline stage that handed the job on from ``status``."""
    return validate_key(f"jobs/{job_segment(job_id)}/handoff-{status}")


def start_key(job_id: str, status: str) -> str:
    """The create-once record naming the message that runs a later pipeline stage ``status``."""
    return validate_key(f"jobs/{job_segment(job_id)}/start-{status}")


def retry_key(job_id: str, run: int) -> str:
    """The create-once record of the ``retry()`` that sent the job's ``run``-th run."""
    return validate_key(f"jobs/{job_segment(job_id)}/retry-{run}")


def cancel_log_key(job_id: str, run: int, when: float) -> str:
    """An entry of the cancellation log, ``cancels/<ms><random>-<run>-<job-segment>``: it sorts
    by time, and names the run it cancels (a retried job's new run is not cancelled by it)."""
    return validate_key(
        f"{CANCELS}{int(when * 1000):012x}{secrets.token_hex(2)}-{run}-{job_segment(job_id)}"
    )


def cancel_log_start(when: float) -> str:
    """A key that sorts before every log entry written at ``when`` or later."""
    return f"{CANCELS}{int(max(0.0, when) * 1000):012x}"


def parse_cancel_log(key: str) -> tuple[float, int, str] | None:
    """``(when, run, job id)`` of a cancellation log entry's key; None for any other key."""
    rest = key[len(CANCELS):] if key.startswith(CANCELS) else ""
    stamp, dash, tail = rest[:16], rest[16:17], rest[17:]
    run, dash2, segment = tail.partition("-")
    try:
        millis, number = int(stamp[:12], 16), int(run)
    except ValueError:
        return None
    if dash != "-" or not dash2 or not segment:
        return None
    return millis / 1000, number, job_from_segment(segment)


_JOURNAL_STAMP = re.compile(r"[0-9a-f]{16}")


def journal_key(when: float) -> str:
    """A journal entry's key, ``journal/<ms><random>``: 12 hex digits of milliseconds (so keys
    sort by time) and 4 random ones (so two processes writing in the same millisecond differ)."""
    return f"{JOURNAL}{int(max(0.0, when) * 1000):012x}{secrets.token_hex(2)}"


def journal_start(when: float) -> str:
    """A key that sorts before every journal entry written at ``when`` or later (for
    ``list(start_after=)``)."""
    return f"{JOURNAL}{int(max(0.0, when) * 1000):012x}"


def parse_journal(key: str) -> float | None:
    """When a journal entry was written, from its key; None for any other key."""
    stamp = key[len(JOURNAL):] if key.startswith(JOURNAL) else ""
    return int(stamp[:12], 16) / 1000 if _JOURNAL_STAMP.fullmatch(stamp) else None


_TIMER_STAMP = re.compile(r"[0-9a-f]{12}-[0-9a-f]{16}")


def timer_key(due: float) -> str:
    """A parked timer's key, ``timers/<ms><random>``: 12 hex digits of the due time in
    milliseconds (so a listing yields timers in due order) and 64 random bits."""
    return f"{TIMERS}{int(max(0.0, due) * 1000):012x}-{secrets.token_hex(8)}"


def parse_timer(key: str) -> float | None:
    """When a parked timer is due, from its key; None for any other key."""
    stamp = key[len(TIMERS):] if key.startswith(TIMERS) else ""
    return int(stamp[:12], 16) / 1000 if _TIMER_STAMP.fullmatch(stamp) else None


_GENERATION = re.compile(r"[0-9]{10}")


def dedup_prefix(dedup_key: str) -> str:
    """The prefix of a dedup key's generations, ``dedup/<SHA-256 of the key, hex>/`` (any text
    makes a valid key, and keys of any length the same size)."""
    return f"{DEDUP}{hashlib.sha256(dedup_key.encode('utf-8')).hexdigest()}/"


def dedup_generation_key(dedup_key: str, generation: int) -> str:
    """A dedup key's ``generation``-th object, zero-padded to 10 digits so that a listing
    yields generations in order."""
    return f"{dedup_prefix(dedup_key)}{generation:010d}"


def parse_dedup_generation(key: str) -> int | None:
    """The generation a dedup object's key names; None for any other key."""
    tail = key.rpartition("/")[2]
    return int(tail) if key.startswith(DEDUP) and _GENERATION.fullmatch(tail) else None


def schedule_key(name: str) -> str:
    """Where a schedule lives: ``schedules/<name>`` (the caller checked the name)."""
    return f"{SCHEDULES}{name}"


def schedule_input_key(name: str) -> str:
    """Where a schedule's large input is stored once: ``in/<name>@input``."""
    return input_key(f"{name}@input")


def staging_key(job_id: str, status: str, attempt_id: str, asset: str) -> str:
    """Where one attempt of the stage ``status`` stages an output asset before its claim is settled."""
    return validate_key(
        f"jobs/{job_segment(job_id)}/attempts/{status}/{attempt_id}/{validate_key(asset)}"
    )


def staging_prefix(job_id: str, status: str, attempt_id: str = "") -> str:
    """The prefix of what one attempt of a stage staged (every attempt's, with ``attempt_id=""``)."""
    return f"jobs/{job_segment(job_id)}/attempts/{status}/{attempt_id + '/' if attempt_id else ''}"


def queue_name(name: str, status: str, priority: str | None = None) -> str:
    """The message queue that holds a status's jobs (of a priority level other than normal)."""
    return f"{name}-{status}" if priority in (None, "normal") else f"{name}-{status}-{priority}"


def dead_letter_name(name: str) -> str:
    """The dead-letter queue of a job system."""
    return queue_name(name, DEAD)


def new_key() -> str:
    """A fresh job id: 12 hex digits of milliseconds (so ids sort by time) and 64 random bits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(8)}"


_BATCH_JOB = re.compile(r"([0-9a-f]{28})-(0|[1-9][0-9]{0,8})")


def batch_key(batch_id: str) -> str:
    """Where the manifest of one submitted batch lives."""
    return validate_key(f"batches/{batch_id}")


def batch_job_id(batch_id: str, index: int) -> str:
    """The id of the ``index``-th generated job of a batch."""
    return f"{batch_id}-{index}"


def parse_batch_job(job_id: str) -> tuple[str, int] | None:
    """``(batch id, index)`` if ``job_id`` has the shape of a batch's generated job id."""
    match = _BATCH_JOB.fullmatch(job_id)
    return None if match is None else (match[1], int(match[2]))
