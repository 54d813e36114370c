"""The heartbeat's own rules (README: Delivery guarantees, "Heartbeats" and "The 12-hour cap"):
what it extends by, when it beats again, what a delivery found gone means, and that a prefetched
job waiting for a handler is kept invisible without being recorded ``inprogress``. Each test
failed on a mutant of ``lease.py`` that every other test let through (docs/mutation.md)."""

from __future__ import annotations

import threading
import time

import pytest

import remotejob
from remotejob.lease import CAP_MARGIN_S, Heartbeat
from remotejob.limits import MAX_VISIBILITY_S
from tests.conftest import BackendSetup, running, wait_until
from tests.faults import Faults, connect_faulty

# The heartbeat is the worker's own bookkeeping over change_visibility_batch, whose per-entry
# outcomes (gone, capped, failed) every backend reports the same way (tests/test_queue_contract.py,
# and the heartbeat tests of test_lifecycle_defects.py on moto): the embedded backend, for CI time.
pytestmark = pytest.mark.backends("embedded")


def _extensions(faults: Faults) -> list[list[tuple[str, int]]]:
    """The entries (receipt, seconds) of every visibility extension request, in order."""
    return [list(args[1]) for op, args, _ in faults.calls if op == "queue.change_visibility_batch"]


def test_the_last_extension_ends_a_minute_before_the_12_hour_cap(
    backend: BackendSetup, caplog: pytest.LogCaptureFixture
) -> None:
    q, faults = connect_faulty(backend, visibility_timeout=3, wait_time=1)
    q.submit({"body": b"a"})
    q.submit({"body": b"b"})
    near, past = q.next(timeout=10), q.next(timeout=10)
    assert near is not None and past is not None
    heartbeat = Heartbeat(q.context, 600)  # a ten-minute timeout: more than is left of the 12 hours
    now = time.monotonic()
    near.delivery.received = now - (MAX_VISIBILITY_S - CAP_MARGIN_S - 45)  # 45 s left before the margin
    past.delivery.received = now - (MAX_VISIBILITY_S - CAP_MARGIN_S + 5)  # already inside it
    for job in (near, past):
        heartbeat.hold(job)

    heartbeat._beat(near.delivery.queue, [near, past])

    [entries] = _extensions(faults)
    assert [receipt for receipt, _ in entries] == [near.receipt]  # the job inside the margin: no request
    assert 43 <= entries[0][1] <= 45  # what is left, not the full ten minutes
    assert f"job {past.id} has been held for 12 hours" in caplog.text
    assert past not in heartbeat._due and near in heartbeat._due  # let go; the other still held


def test_a_failed_extension_is_tried_again_within_a_second_and_a_good_one_a_third_of_the_timeout_later(
    backend: BackendSetup,
) -> None:
    q, faults = connect_faulty(backend, visibility_timeout=3, wait_time=1)
    q.submit({"body": b"a"})
    job = q.next(timeout=10)
    assert job is not None
    heartbeat = Heartbeat(q.context, 30)  # beats every 10 s: a retry must not wait for that
    heartbeat.hold(job)

    faults.fail_entries("queue.change_visibility_batch", [0])
    heartbeat._beat(job.delivery.queue, [job])
    assert 0 < heartbeat._due[job] - time.monotonic() <= 1.0

    heartbeat._beat(job.delivery.queue, [job])
    assert 9 <= heartbeat._due[job] - time.monotonic() <= 10
    assert [entries[0][1] for entries in _extensions(faults)] == [30, 30]


def test_a_heartbeat_that_finds_a_running_jobs_message_gone_marks_its_lease_lost(
    backend: BackendSetup, caplog: pytest.LogCaptureFixture
) -> None:
    q, faults = connect_faulty(backend, visibility_timeout=3, wait_time=1)
    q.submit({"body": b"a"})
    job = q.next(timeout=10)
    assert job is not None
    # Another consumer deleted it (as after its visibility ran out and another attempt took it).
    q.message_queue.delete(job.delivery.queue, job.receipt)
    heartbeat = Heartbeat(q.context, q.visibility_timeout)
    heartbeat.hold(job)
    heartbeat.start()
    try:
        wait_until(lambda: job.lease_lost, what="the heartbeat to find the delivery gone")
        beats = len(_extensions(faults))
        other = q.submit({"body": b"b"})
        second = q.next(timeout=10)
        assert second is not None and second.id == other
        heartbeat.hold(second)
        wait_until(lambda: len(_extensions(faults)) >= beats + 2, what="two beats of the other job")
    finally:
        heartbeat.stop()
    assert "another attempt may run it" in caplog.text
    assert all(receipt != job.receipt for entries in _extensions(faults)[beats:] for receipt, _ in entries)


def test_a_prefetched_job_is_kept_invisible_but_not_recorded_inprogress(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend, visibility_timeout=3, wait_time=1)
    ids = {q.submit({"body": b"a"}), q.submit({"body": b"b"})}
    started: list[remotejob.Job] = []
    finish = threading.Event()

    def handler(job: remotejob.Job) -> None:
        started.append(job)
        finish.wait(30)

    def waiting_beats() -> int:
        return sum(receipt != started[0].receipt for entries in _extensions(faults) for receipt, _ in entries)

    with running(remotejob.Worker(q, handler, concurrency=1, prefetch=1, handle_signals=False)):
        try:
            # One running, the other received and waiting for the handler: two extensions of the
            # waiting one (the first of a running job records it inprogress).
            wait_until(lambda: started and waiting_beats() >= 2, what="two extensions of the waiting job")
            [running_id] = [job.id for job in started]
            [waiting_id] = ids - {running_id}
            assert q.status(running_id).state == "inprogress"
            assert q.status(waiting_id).state == "pending"
        finally:
            finish.set()  # before the worker's graceful stop, which waits for the handler
        wait_until(lambda: all(q.status(job_id).state == "completed" for job_id in ids),
                   what="both jobs to complete")


def test_a_round_of_fifteen_held_jobs_is_two_requests_in_flight_at_once(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend, visibility_timeout=3, wait_time=1)
    q.submit_many([{"body": b"x"} for _ in range(15)])
    jobs = [job for _ in range(15) if (job := q.next(timeout=10)) is not None]
    assert len(jobs) == 15
    heartbeat = Heartbeat(q.context, 30)  # the next round is 10 s away: this test sees one
    for job in jobs:
        heartbeat.hold(job)
        heartbeat._due[job] = 0.0  # all due in the same round, as after a slow one
    go = threading.Event()
    faults.delay("queue.change_visibility_batch", until=go, times=2)
    heartbeat.start()
    try:
        # The round's two requests are in flight at once, not one after another (a thousand
        # held jobs are a hundred requests: in a row they could outlast a short timeout).
        wait_until(lambda: len(_extensions(faults)) == 2, what="two requests in flight at once")
    finally:
        go.set()
        heartbeat.stop()  # joins the thread, which waits for its round's requests
    requests = _extensions(faults)
    assert sorted(map(len, requests)) == [5, 10]
    assert sorted(receipt for entries in requests for receipt, _ in entries) == sorted(
        job.receipt for job in jobs)


def test_a_worker_that_returned_leaves_no_heartbeat_thread_behind(backend: BackendSetup) -> None:
    q = backend.connect(visibility_timeout=3, wait_time=1)
    q.submit({"body": b"a"})
    before = set(threading.enumerate())
    assert q.work(lambda job: None, burst=True, handle_signals=False) == 1
    assert [t.name for t in set(threading.enumerate()) - before if t.name == "remotejob-heartbeat"] == []
