"""A worker's outbox, on every backend: notices and deletions go ten to a request, each message is
deleted only once its notice was sent, and notices too large to share a request are split, not lost.

The outbox is driven directly here with real messages (received from a real queue) so that the
requests it makes can be counted exactly; the worker-level promises are in test_promises.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from remotejob.backends.base import OutgoingMessage, QueueAttributes
from remotejob.outbox import Finished, Outbox
from tests.conftest import BackendSetup, unique, wait_until
from tests.faults import Faults, FaultyQueues


def _received(queues: Any, name: str, count: int) -> list[Any]:
    for start in range(0, count, 10):
        queues.send_batch(name, [OutgoingMessage(f"job {i}") for i in range(start, min(count, start + 10))])
    got: list[Any] = []
    while len(got) < count:
        got += queues.receive(name, min(10, count - len(got)), 5, 60)
    return got


def _setup(backend: BackendSetup, count: int) -> tuple[Any, Faults, str, str, list[Any]]:
    faults = Faults()
    queues = FaultyQueues(backend.make_queues(), faults)
    work, notices = unique("ob-work"), unique("ob-notice")
    queues.ensure([work, notices], QueueAttributes(visibility_s=60, wait_s=1))
    return queues, faults, work, notices, _received(queues, work, count)


def _notices(queues: Any, name: str) -> list[str]:
    bodies: list[str] = []
    while batch := queues.receive(name, 10, 1, 60):
        bodies += [m.body for m in batch]
    return bodies


@pytest.mark.parametrize("jobs", [10, 12])
def test_notices_and_deletions_go_ten_to_a_request(backend: BackendSetup, jobs: int) -> None:
    queues, faults, work, notices, messages = _setup(backend, jobs)
    outbox = Outbox(queues)
    for n, message in enumerate(messages):
        outbox.put(Finished(work, message.receipt, notices, f"notice {n}"))
    outbox.close()  # never started: close sends what waits

    requests = -(-jobs // 10)
    assert faults.count("queue.send_batch", notices) == requests
    assert faults.count("queue.delete_batch") == requests
    assert sorted(_notices(queues, notices)) == sorted(f"notice {n}" for n in range(jobs))
    assert queues.depth(work).in_flight + queues.depth(work).waiting == 0


def test_a_notice_that_failed_in_its_batch_keeps_its_message(backend: BackendSetup) -> None:
    queues, faults, work, notices, messages = _setup(backend, 5)
    faults.fail_entries("queue.send_batch", [3], match=notices)
    outbox = Outbox(queues)
    for n, message in enumerate(messages):
        outbox.put(Finished(work, message.receipt, notices, f"notice {n}"))
    outbox.close()

    assert sorted(_notices(queues, notices)) == sorted(f"notice {n}" for n in (0, 1, 2, 4))
    depth = queues.depth(work)
    assert depth.in_flight + depth.waiting == 1  # job 3's message stays, to come back and notify


def test_large_notices_are_split_over_requests_not_lost(backend: BackendSetup) -> None:
    queues, faults, work, notices, messages = _setup(backend, 10)
    big = "x" * (60 * 1024)  # ten of these overflow one request's 256 KiB
    outbox = Outbox(queues)
    for n, message in enumerate(messages):
        outbox.put(Finished(work, message.receipt, notices, f"{n} {big}"))
    outbox.close()

    assert sorted(body.split()[0] for body in _notices(queues, notices)) == sorted(str(n) for n in range(10))
    assert queues.depth(work).in_flight + queues.depth(work).waiting == 0
    assert faults.count("queue.send_batch", notices) >= 3


def test_a_running_outbox_sends_ten_waiting_jobs_in_one_request_each(backend: BackendSetup) -> None:
    queues, faults, work, notices, messages = _setup(backend, 10)
    outbox = Outbox(queues, linger_s=60)  # only a full batch (or closing) sends
    outbox.start()
    try:
        for n, message in enumerate(messages):
            outbox.put(Finished(work, message.receipt, notices, f"notice {n}"))
        wait_until(lambda: faults.count("queue.delete_batch") >= 1, what="the full batch to be sent")
    finally:
        outbox.close()
    assert faults.count("queue.send_batch", notices) == 1 and faults.count("queue.delete_batch") == 1
    assert sorted(_notices(queues, notices)) == sorted(f"notice {n}" for n in range(10))
