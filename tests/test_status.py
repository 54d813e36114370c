"""status() and wait() across a job's life, and the completion notice stream."""

from __future__ import annotations

import threading

import pytest

import remotejob
from tests.conftest import BackendSetup

pytestmark = pytest.mark.apis("sync", "async")  # the async API passes the same tests


def test_states_from_submit_to_completed(backend: BackendSetup) -> None:
    q = backend.connect()
    with pytest.raises(remotejob.NotFound):
        q.status("never-submitted")
    job_id = q.submit({"body": b"x"})
    pending = q.status(job_id)
    assert pending.state == "pending"
    assert pending.status == "pending"
    assert pending.outputs == []
    job = q.next("pending", timeout=10)
    assert job is not None
    running = q.status(job_id)
    assert running.state == "inprogress"
    assert running.attempt == 1
    assert running.worker
    job.complete(assets=[{"key": "output", "body": b"done"}])
    final = q.status(job_id)
    assert final.state == "completed"
    assert final.outputs == ["output"]
    assert final.assets["output"].size == 4
    assert final.created == pytest.approx(pending.created)
    assert final.updated >= final.created
    assert q.wait(job_id, timeout=5).state == "completed"


def test_failed_job_records_error_and_wait_raises(backend: BackendSetup) -> None:
    q = backend.connect()
    job_id = q.submit({"body": b"x"})
    job = q.next("pending", timeout=10)
    assert job is not None
    job.complete(error=ValueError("bad pixel at 3,4"))
    st = q.status(job_id)
    assert st.state == "failed"
    assert st.error == "ValueError: bad pixel at 3,4"
    with pytest.raises(remotejob.JobFailed) as caught:
        q.wait(job_id, timeout=5)
    assert caught.value.error == "ValueError: bad pixel at 3,4"
    assert caught.value.job_id == job_id


def test_wait_returns_when_a_worker_completes(backend: BackendSetup) -> None:
    q = backend.connect()
    job_id = q.submit({"body": b"x"})

    def worker() -> None:
        job = q.next("pending", timeout=10)
        assert job is not None
        job.complete(assets=[{"key": "output", "body": b"ok"}])

    thread = threading.Thread(target=worker)
    thread.start()
    st = q.wait(job_id, timeout=30)
    thread.join()
    assert st.state == "completed"
    assert q.retrieve("out", f"{job_id}/output").read() == b"ok"


def test_wait_times_out_and_wait_unknown_is_not_found(backend: BackendSetup) -> None:
    q = backend.connect()
    job_id = q.submit({"body": b"x"})
    with pytest.raises(remotejob.WaitTimeout):
        q.wait(job_id, timeout=0.2)
    with pytest.raises(remotejob.NotFound):
        q.wait("never-submitted", timeout=1)


def test_completion_notices_stream_through_completed(backend: BackendSetup) -> None:
    q = backend.connect()
    ok = q.submit({"body": b"1", "filename": "one.txt"})
    bad = q.submit({"body": b"2"})
    for _ in range(2):
        job = q.next("pending", timeout=10)
        assert job is not None
        job.complete(error="boom" if job.id == bad else None)
    notices = {}
    for _ in range(2):
        notice = q.next("completed", timeout=10)
        assert notice is not None
        notices[notice.id] = notice
        with pytest.raises(ValueError):
            notice.complete()
        notice.acknowledge()
    assert notices[ok].state == "completed"
    assert notices[ok].metadata == {"filename": "one.txt"}
    assert notices[bad].state == "failed" and notices[bad].error == "boom"
    assert q.next("completed", timeout=0) is None
    assert q.status(ok).state == "completed"  # consuming a notice changes nothing


def test_second_completion_loses(backend: BackendSetup) -> None:
    q = backend.connect(visibility_timeout=1)
    job_id = q.submit({"body": b"x"})
    first = q.next("pending", timeout=10)
    assert first is not None
    first.extend(0)  # let a second worker take the same job at once
    second = q.next("pending", timeout=10)
    assert second is not None and second.id == job_id
    assert second.receive_count == 2
    second.complete(assets=[{"key": "output", "body": b"second"}])
    with pytest.raises(remotejob.AlreadyExists):
        first.complete(error="late")
    assert q.status(job_id).state == "completed"


def test_outputs_of_jobs_whose_ids_nest_never_meet(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1)
    q.submit({"key": "a", "body": b"job a"})
    q.submit({"key": "a/b", "body": b"job a/b"})
    assets = {"a": [{"key": "b/c", "body": b"from a"}], "a/b": [{"key": "c", "body": b"from a/b"}]}
    q.work(lambda job: assets[job.id], burst=True, handle_signals=False)

    assert q.output("a", "b/c").read() == b"from a" and q.output("a/b", "c").read() == b"from a/b"
    assert q.status("a").outputs == ["b/c"] and q.status("a/b").outputs == ["c"]
    assert q.retrieve("out", "a/b/c").read() == b"from a"  # a's own key; a/b's is out/a%2Fb/c
