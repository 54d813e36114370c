"""What a job's status tells without reading anything but its records: its metadata (pending,
running and finished), how big its input was, and the traceback of a handler that raised.
A dashboard's job list and job page are built from these, with no request per job beyond the
records ``status()`` reads anyway."""

from __future__ import annotations

import threading

from click.testing import CliRunner

import remotejob
from remotejob.cli import main
from tests.conftest import BackendSetup, running, unique, wait_until

LONG = 30.0


def test_status_shows_the_jobs_metadata_pending_running_and_finished(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, visibility_timeout=2)
    meta = {"owner": "ann", "kind": "report"}
    keyed = q.submit({"key": unique("k"), "body": b"stored", **meta})
    q.store("in", {"key": (stored := unique("s")), "body": b"triggered", "source": "camera"})
    q.trigger(stored)
    shared = q.submit_many([{"body": b"a", **meta}, {"body": b"b", **meta}])
    mixed = q.submit_many([{"body": b"c", "n": "1"}, {"body": b"d"}, {"body": b"e", "n": "3"}])

    expected = {keyed: meta, stored: {"source": "camera"}, shared[0]: meta, shared[1]: meta,
                mixed[0]: {"n": "1"}, mixed[1]: {}, mixed[2]: {"n": "3"}}
    for job_id, job_meta in expected.items():
        st = q.status(job_id)
        assert (st.state, st.meta) == ("pending", job_meta), job_id

    started, release = threading.Event(), threading.Event()

    def handler(job: remotejob.Job) -> None:
        job.progress(1, 2, "halfway")  # recorded at once: the job shows running
        started.set()
        assert release.wait(LONG)

    worker = remotejob.Worker(q, handler, concurrency=1, handle_signals=False, prefetch=0)
    with running(worker):
        assert started.wait(LONG)
        running_now = wait_until(lambda: [s for s in map(q.status, expected) if s.state == "inprogress"])
        [st] = running_now
        assert st.meta == expected[st.id]
        release.set()
        wait_until(lambda: all(q.status(job_id).done for job_id in expected))
    for job_id, job_meta in expected.items():
        st = q.status(job_id)
        assert (st.state, st.meta) == ("completed", job_meta), job_id


def _resize_the_picture(job: remotejob.Job) -> None:
    data = job.open().read()
    raise ValueError(f"cannot resize {len(data)} bytes")


def _cli_status(backend: BackendSetup, q: remotejob.Queue, job_id: str) -> str:
    args = ["--name", q.name]
    if backend.kind != "embedded":
        args += ["--store", q.object_store.location, "--queues", "sqs://"]
    result = CliRunner().invoke(main, [*args, "status", job_id], env=backend.env)
    assert result.exit_code == 0, result.output
    return result.output


def test_a_failing_handlers_status_carries_its_traceback_and_input_size(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, max_attempts=1)
    stored = q.submit({"key": unique("k"), "body": b"x" * 1000})  # under in/
    inline = q.submit({"body": b"tiny"})  # inline in its message
    q.work(_resize_the_picture, burst=True, handle_signals=False)

    for job_id, size in ((stored, 1000), (inline, 4)):
        st = q.status(job_id)
        assert st.state == "failed" and st.error == f"ValueError: cannot resize {size} bytes"
        assert st.traceback is not None
        assert st.traceback.startswith("Traceback (most recent call last):")
        assert "_resize_the_picture" in st.traceback
        assert st.traceback.rstrip().endswith(f"ValueError: cannot resize {size} bytes")
        assert st.input_size == size
    printed = _cli_status(backend, q, stored)
    assert "_resize_the_picture" in printed and "Traceback (most recent call last)" in printed


def test_a_huge_traceback_keeps_its_end_and_says_it_was_cut(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, max_attempts=1)
    job_id = q.submit({"body": b"x"})

    def chatty_handler(job: remotejob.Job) -> None:
        raise RuntimeError("a long story: " + "blah " * 8000 + "and the end")

    q.work(chatty_handler, burst=True, handle_signals=False)
    st = q.status(job_id)
    assert st.state == "failed" and st.traceback is not None
    assert 16 * 1024 <= len(st.traceback.encode()) <= 16 * 1024 + 100
    assert st.traceback.startswith("[the first ") and "bytes of this traceback were cut]" in st.traceback
    assert st.traceback.rstrip().endswith("blah and the end")
    assert st.error is not None and len(st.error) == 16 * 1024  # the error itself is capped as before


def test_a_completed_job_has_no_traceback(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1)
    job_id = q.submit({"body": b"fine", "who": "me"})
    q.work(lambda job: [{"key": "output", "body": job.open().read()}], burst=True, handle_signals=False)
    st = q.status(job_id)
    assert (st.state, st.traceback, st.input_size, st.meta) == ("completed", None, 4, {"who": "me"})
