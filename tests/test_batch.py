"""Submitting and triggering many jobs at once, with batched sends, on every backend."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import remotejob
from remotejob import keys
from remotejob.batch import INLINE_ENVELOPE_MAX
from remotejob.errors import AlreadyExists, MetadataError, NotFound
from tests.conftest import BackendSetup

pytestmark = pytest.mark.apis("sync", "async")  # the async API passes the same tests


def _depth(q: remotejob.Queue) -> int:
    return q.message_queue.depth(keys.queue_name(q.name, "pending")).waiting


def test_submit_many_sends_in_batches_and_every_job_runs(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1)
    q.init()
    from remotejob.backends.aws import request_counts

    before = request_counts()
    ids = q.submit_many({"body": f"job {i}".encode(), "n": str(i)} for i in range(25))
    after = request_counts()

    assert len(set(ids)) == 25 and all(q.status(i).state == "pending" for i in ids)
    if backend.kind != "embedded":
        ops = ("SQS.SendMessageBatch", "SQS.SendMessage")
        sent = {op: after.get(op, 0) - before.get(op, 0) for op in ops}
        assert sent == {"SQS.SendMessageBatch": 3, "SQS.SendMessage": 0}
    seen: dict[str, str] = {}

    def record(job: remotejob.Job) -> None:
        seen[job.id] = job.metadata["n"]

    q.work(record, burst=True, concurrency=4, handle_signals=False)
    assert seen == {job_id: str(i) for i, job_id in enumerate(ids)}


def test_a_bad_item_stores_nothing(backend: BackendSetup) -> None:
    q = backend.connect()
    items = [{"body": b"fine"}, {"body": b"bad", "size": 128}, {"body": b"fine too"}]

    with pytest.raises(MetadataError, match="size"):
        q.submit_many(items)  # type: ignore[arg-type]

    assert list(q.object_store.list("in/")) == [] and list(q.object_store.list("jobs/")) == []


def test_trigger_many_needs_every_input_and_runs_each_key_once(backend: BackendSetup) -> None:
    q = backend.connect()
    for name in ("a", "b", "c"):
        q.store("in", {"key": name, "body": name.encode()})

    with pytest.raises(NotFound, match="in/missing"):
        q.trigger_many(["a", "missing"])
    assert q.trigger_many(["a", "b"]) == ["a", "b"]
    with pytest.raises(AlreadyExists, match="'b'"):
        q.trigger_many(["c", "b"])

    assert _depth(q) == 2  # a and b; nothing of the refused batch was sent
    with pytest.raises(NotFound):
        q.status("c")  # its queued record was taken back


def test_small_inputs_travel_inline_and_large_ones_are_stored(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect(wait_time=1)
    small_file = tmp_path / "small.txt"
    small_file.write_bytes(b"from a file")
    large = os.urandom(INLINE_ENVELOPE_MAX)  # too large for a message once base64-encoded
    bodies = {"bytes": b"\x00\xffsmall", "text": "Ünïcode", "file": small_file, "large": large}
    ids = {name: q.submit({"body": body, "name": name}) for name, body in bodies.items()}

    assert [info.key for info in q.object_store.list("in/")] == [f"in/{ids['large']}"]
    read: dict[str, bytes] = {}

    def keep(job: remotejob.Job) -> None:
        with job.open() as stream:
            read[job.metadata["name"]] = stream.read()
        assert job.download(tmp_path / job.id).read_bytes() == read[job.metadata["name"]]

    q.work(keep, burst=True, handle_signals=False)
    assert read == {"bytes": b"\x00\xffsmall", "text": "Ünïcode".encode(), "file": b"from a file",
                    "large": large}
    assert all(q.status(job_id).state == "completed" for job_id in ids.values())


def test_status_tells_batched_jobs_from_ids_never_submitted(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1)
    ids = q.submit_many({"body": f"{i}"} for i in range(3))
    batch_id = ids[0].rpartition("-")[0]

    assert [q.status(job_id).state for job_id in ids] == ["pending"] * 3
    assert [info.key for info in q.object_store.list("")
            if not info.key.startswith("journal/")] == [f"batches/{batch_id}"]
    for never in (f"{batch_id}-3", f"{keys.new_key()}-0"):
        with pytest.raises(NotFound, match="never submitted"):
            q.status(never)
    q.work(lambda job: None, burst=True, handle_signals=False)
    assert [q.status(job_id).state for job_id in ids] == ["completed"] * 3


def test_a_small_batched_job_costs_two_s3_requests_and_batched_sqs_calls(backend: BackendSetup) -> None:
    if backend.kind == "embedded":
        pytest.skip("counts AWS requests")
    from remotejob.backends.aws import request_counts

    q = backend.connect(wait_time=1)
    q.init()
    jobs = 30
    before = request_counts()
    ids = q.submit_many({"body": f"job {i}"} for i in range(jobs))
    started = time.monotonic()
    q.work(lambda job: None, burst=True, concurrency=8, handle_signals=False)
    ran = time.monotonic() - started
    assert [q.status(job_id).state for job_id in ids] == ["completed"] * jobs
    after = request_counts()
    made = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}

    s3 = {op: n for op, n in made.items() if op.startswith("S3.")}
    # the cancellation log: one LIST per check interval (5 s) while the worker holds jobs, not per
    # job; one for the worker's prune of the journal; the clock's first check (timers/, schedules/)
    assert 1 <= s3.pop("S3.ListObjectsV2", 0) <= 1 + ran // 5 + 1 + 1 + 2
    # the journal: at most one entry per second per process (the submitter's, the worker's)
    journal = len(list(q.object_store.list("journal/")))
    assert 1 <= journal <= 2 + ran
    assert s3 == {"S3.PutObject": 1 + jobs + journal, "S3.GetObject": jobs}  # manifest, finals, reads
    for one_at_a_time in ("SQS.SendMessage", "SQS.DeleteMessage", "SQS.ChangeMessageVisibility"):
        assert made.get(one_at_a_time, 0) == 0, made
    assert made["SQS.SendMessageBatch"] >= 3 + 3  # the jobs, then their completion notices
    notices = q.message_queue.depth(keys.queue_name(q.name, "completed"))
    assert notices.waiting + notices.in_flight == jobs
