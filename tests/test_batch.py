"""Submitting and triggering many jobs at once, with batched sends, on every backend."""

from __future__ import annotations

import pytest

import remotejob
from remotejob import keys
from remotejob.errors import AlreadyExists, MetadataError, NotFound
from tests.conftest import BackendSetup


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
