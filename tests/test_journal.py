"""The journal (``journal/``): every process that writes status records tells, in a small object
about once a second, which jobs and batches it touched, so that a dashboard's index learns what
changed without listing ``jobs/``.

Each test flushes explicitly (``queue.close()``, or a worker's run returning) instead of waiting
for the background thread, so nothing here sleeps.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

import remotejob
from remotejob import journal, keys
from remotejob.journal import JournalEntry
from tests.conftest import BackendSetup, unique
from tests.faults import Faults, FaultyStore


def _jobs(entries: list[JournalEntry]) -> set[str]:
    return {job_id for entry in entries for job_id in entry.jobs}


class Reader:
    """Reads a job system's journal as a dashboard would: only the entries it has not seen."""

    def __init__(self, q: remotejob.Queue) -> None:
        self.q = q
        self.seen: set[str] = set()

    def new(self) -> list[JournalEntry]:
        """Flush this process's journal, then return the entries not read before."""
        self.q.close()
        fresh = [e for e in journal.read(self.q.object_store) if e.key not in self.seen]
        self.seen.update(e.key for e in fresh)
        return fresh


def _fail_if(text: bytes) -> Any:
    def handler(job: remotejob.Job) -> None:
        if job.open().read() == text:
            raise RuntimeError("asked to fail")
    return handler


def test_every_writer_journals_the_jobs_and_batches_it_touched(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, visibility_timeout=2, max_attempts=1)
    reader = Reader(q)
    keyed, stored = unique("keyed-"), unique("stored-")
    assert q.submit({"key": keyed, "body": b"keyed"}) == keyed
    q.store("in", {"key": stored, "body": b"stored"})
    q.trigger(stored)
    generated = q.submit_many([{"body": b"ok"}, {"body": b"fail"}, {"body": b"fail"}])
    batch_id = generated[0].rpartition("-")[0]

    submitted = reader.new()
    assert {keyed, stored} <= _jobs(submitted)
    assert batch_id in {b for e in submitted for b in e.batches}
    assert not set(generated) & _jobs(submitted)  # a batch's jobs have no records of their own yet

    ran = q.work(_fail_if(b"fail"), burst=True, concurrency=4, retry_delay=0, handle_signals=False)
    assert ran == 5
    failed = [job_id for job_id in generated if q.status(job_id).state == "failed"]
    assert len(failed) == 2 and q.status(keyed).state == "completed"
    # the worker's run flushed its journal when it returned
    worked = [e for e in journal.read(q.object_store) if e.key not in reader.seen]
    assert {keyed, stored, *generated} <= _jobs(worked)
    reader.seen.update(e.key for e in worked)

    to_cancel = q.submit({"key": unique("cancel-"), "body": b"never runs"})
    reader.new()
    assert q.cancel(to_cancel).state == "cancelled"
    assert to_cancel in _jobs(reader.new())

    assert q.retry(failed[0]).state == "pending"
    assert _jobs(reader.new()) == {failed[0]}

    assert q.redrive() == 1  # the other failed job (the retried one's dead letter is superseded)
    assert failed[1] in _jobs(reader.new())

    entries = journal.read(q.object_store)
    assert [e.key for e in entries] == sorted(e.key for e in entries)
    assert [e.at for e in entries] == sorted(e.at for e in entries)  # keys sort by time
    later = journal.read(q.object_store, start_after=entries[-2].key)
    assert [e.key for e in later] == [entries[-1].key]


def test_an_idle_process_writes_no_entry(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1)
    q.init()
    assert q.work(_fail_if(b"-"), burst=True, handle_signals=False) == 0
    with pytest.raises(remotejob.NotFound):
        q.status("never-submitted")
    q.close()
    assert journal.read(q.object_store) == []
    assert list(q.object_store.list(keys.JOURNAL)) == []


def test_prune_removes_only_entries_older_than_it_keeps_and_workers_prune_at_start(
    backend: BackendSetup,
) -> None:
    q = backend.connect(wait_time=1)
    body = b'{"v":1,"at":0,"jobs":["old"],"batches":[]}'
    day = 24 * 3600
    old = [keys.journal_key(time.time() - 2 * day), keys.journal_key(time.time() - day - 60)]
    for key in old:
        q.object_store.put(key, body, content_type="application/json")
    job_id = q.submit({"key": unique("k"), "body": b"x"})
    q.close()
    assert [e.key for e in journal.read(q.object_store)][:2] == old

    assert journal.prune(q.object_store, keep_s=day) == 2
    [kept] = journal.read(q.object_store)
    assert kept.jobs == [job_id]
    assert journal.prune(q.object_store) == 0
    assert journal.prune(q.object_store, keep_s=3 * day) == 0

    q.object_store.put(keys.journal_key(time.time() - 2 * day), body, content_type="application/json")
    assert q.work(lambda job: None, burst=True, handle_signals=False) == 1  # it prunes as it starts
    remaining = journal.read(q.object_store)
    assert remaining[0] == kept and all(e.at > time.time() - day for e in remaining)
    assert _jobs(remaining[1:]) == {job_id}  # the worker's own entries


def test_a_failing_journal_write_fails_no_job_and_its_ids_go_in_the_next_entry(
    backend: BackendSetup, caplog: pytest.LogCaptureFixture,
) -> None:
    faults = Faults()
    refused = remotejob.BackendUnavailable("the journal's writes are refused")
    faults.fail("store.put", refused, match=keys.JOURNAL, times=1000)
    q = remotejob.Queue(unique("q"), FaultyStore(backend.make_store(), faults), backend.make_queues(),
                        wait_time=1)
    with caplog.at_level(logging.WARNING, logger="remotejob.journal"):
        job_id = q.submit({"key": unique("k"), "body": b"x"})
        q.close()
        assert q.work(lambda job: [{"key": "output", "body": b"done"}], burst=True,
                      handle_signals=False) == 1
        q.close()
    assert q.status(job_id).state == "completed"
    assert q.output(job_id, "output").read() == b"done"
    assert faults.fired("store.put") >= 2  # it tried, and it was refused
    assert journal.read(q.object_store) == []
    warnings = [r for r in caplog.records  # (other tests' journals may warn meanwhile)
                if r.name == "remotejob.journal" and q.object_store.location in r.getMessage()]
    assert len(warnings) == 1, "a failing journal warns at most once a minute"
    assert "refused" in warnings[0].getMessage()

    faults.clear()
    q.close()
    [entry] = journal.read(q.object_store)
    assert entry.jobs == [job_id]


def test_journal_false_writes_nothing(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, journal=False)
    job_id = q.submit({"key": unique("k"), "body": b"x"})
    q.submit_many([{"body": b"a"}, {"body": b"b"}])
    q.work(lambda job: None, burst=True, handle_signals=False)
    to_cancel = q.submit({"key": unique("c"), "body": b"y"})
    q.cancel(to_cancel)
    with q:
        assert q.status(job_id).state == "completed"
    assert list(q.object_store.list(keys.JOURNAL)) == []


def test_the_journal_option_is_checked(tmp_path: Path) -> None:
    for bad in (0, -1.0, "often"):
        with pytest.raises(remotejob.ConfigError, match="journal"):
            remotejob.connect(unique("q"), home=tmp_path, journal=bad)
    assert remotejob.connect(unique("q"), home=tmp_path, journal=5).context.journal is not None
