"""The MessageQueue contract: every backend delivers, hides, redelivers and refuses like SQS.

Each test takes the ``backend`` fixture, so it runs on the embedded SQLite queues and on moto's
SQS. Time: the embedded queues run on a fake clock that tests move forward, so a visibility
timeout expires instantly; on SQS the timeouts are 1 s and the tests long-poll until the message
is back. Tests of what only the embedded queues can show (moto accepts stale receipts, for one)
are marked as such.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from remotejob.backends.base import MessageQueue, OutgoingMessage, QueueAttributes, QueueDepth
from remotejob.errors import BackendUnavailable, ConfigError, InvalidReceipt, NotFound, PayloadTooLarge
from tests.conftest import BackendSetup, unique

LIMIT = 256 * 1024


class FakeClock:
    """A clock that stands still until a test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Queues:
    """A backend's MessageQueue, and how a test lets time pass on it."""

    api: Any
    clock: FakeClock | None

    def make(self, *suffixes: str, attributes: QueueAttributes | None = None) -> list[str]:
        """Create queues with fresh unique names, one per suffix."""
        base = unique("c")
        names = [f"{base}-{suffix}" for suffix in suffixes]
        self.api.ensure(names, attributes or QueueAttributes())
        return names

    def let_pass(self, seconds: float) -> None:
        """Move time on (instantly on the fake clock; on SQS, the next long poll waits for it)."""
        if self.clock is not None:
            self.clock.advance(seconds)

    @property
    def until_back(self) -> float:
        """Long-poll wait that outlasts a 1 s visibility timeout on SQS."""
        return 0 if self.clock is not None else 10

    @property
    def past_expiry(self) -> float:
        """Long-poll wait that proves a message did not come back after a 1 s timeout on SQS."""
        return 0 if self.clock is not None else 3

    def drain(self, queue: str, count: int, visibility_s: int = 60) -> list[Any]:
        """Receive until ``count`` messages arrived (SQS may return fewer per call)."""
        received: list[Any] = []
        for _ in range(20):
            received += self.api.receive(queue, max_messages=10, wait_s=2, visibility_s=visibility_s)
            if len(received) >= count:
                break
        return received


@pytest.fixture
def q(backend: BackendSetup) -> Queues:
    if backend.kind == "embedded":
        from remotejob.backends.local import SqliteQueues

        clock = FakeClock()
        return Queues(SqliteQueues(backend.tmp / "queues.db", clock=clock), clock)
    return Queues(backend.make_queues(), None)


def test_queues_implement_the_protocol(backend: BackendSetup) -> None:
    queues = backend.make_queues()

    assert isinstance(queues, MessageQueue)
    assert queues.location


def test_send_receive_round_trip(backend: BackendSetup) -> None:
    queues = backend.make_queues()
    name = unique("c") + "-pending"
    queues.ensure([name], QueueAttributes())
    before = time.time()

    message_id = queues.send(name, '{"job": "héllo ☃ 𝄞"}')
    [message] = queues.receive(name, wait_s=5)

    assert message.body == '{"job": "héllo ☃ 𝄞"}'
    assert message.message_id == message_id
    assert message.receive_count == 1
    assert message.receipt
    assert before - 60 < message.sent_at < time.time() + 60, "sent_at is seconds since the epoch"
    queues.delete(name, message.receipt)


def test_receive_on_empty_queue_returns_nothing(q: Queues) -> None:
    [name] = q.make("empty")

    assert q.api.receive(name, max_messages=10, wait_s=0) == []


def test_long_poll_returns_a_message_sent_during_the_wait(q: Queues) -> None:
    [name] = q.make("poll")
    sender = threading.Timer(0.5, q.api.send, args=(name, "late"))
    sender.start()
    try:
        received = q.api.receive(name, wait_s=20)
    finally:
        sender.join()

    assert [m.body for m in received] == ["late"]


def test_received_message_is_hidden_while_in_flight(q: Queues) -> None:
    [name] = q.make("hidden")
    q.api.send(name, "once")

    [first] = q.api.receive(name, wait_s=5, visibility_s=30)

    assert q.api.receive(name, max_messages=10, wait_s=0) == []
    assert q.api.depth(name) == QueueDepth(waiting=0, in_flight=1, delayed=0)


def test_message_comes_back_after_visibility_with_a_new_receipt(q: Queues) -> None:
    [name] = q.make("back")
    q.api.send(name, "again")
    [first] = q.api.receive(name, wait_s=5, visibility_s=1)

    q.let_pass(2)
    [second] = q.api.receive(name, wait_s=q.until_back, visibility_s=30)

    assert (second.message_id, second.body) == (first.message_id, "again")
    assert (first.receive_count, second.receive_count) == (1, 2)
    assert second.receipt != first.receipt


def test_delete_with_current_receipt_removes_the_message(q: Queues) -> None:
    [name] = q.make("del")
    q.api.send(name, "done")
    [message] = q.api.receive(name, wait_s=5, visibility_s=1)

    q.api.delete(name, message.receipt)

    q.let_pass(2)
    assert q.api.receive(name, wait_s=q.past_expiry) == []
    assert q.api.depth(name) == QueueDepth(0, 0, 0)


def test_delete_batch_removes_each_delivery(q: Queues) -> None:
    [name] = q.make("delbatch")
    q.api.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(5)])
    received = q.drain(name, 5)

    q.api.delete_batch(name, [m.receipt for m in received])

    assert q.api.depth(name) == QueueDepth(0, 0, 0)
    with pytest.raises(PayloadTooLarge):
        q.api.delete_batch(name, [received[0].receipt] * 11)


def test_change_visibility_zero_makes_it_receivable_now(q: Queues) -> None:
    [name] = q.make("now")
    q.api.send(name, "retry me")
    [first] = q.api.receive(name, wait_s=5, visibility_s=30)

    q.api.change_visibility(name, first.receipt, 0)

    [again] = q.api.receive(name, wait_s=5, visibility_s=30)
    assert (again.message_id, again.receive_count) == (first.message_id, 2)


def test_change_visibility_batch_changes_each_delivery(q: Queues) -> None:
    [name] = q.make("visbatch")
    q.api.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(3)])
    held, also_held, retried = q.drain(name, 3, visibility_s=1)

    stale = q.api.change_visibility_batch(
        name, [(held.receipt, 60), (also_held.receipt, 60), (retried.receipt, 0)]
    )

    assert stale == []
    [again] = q.api.receive(name, wait_s=5, visibility_s=30)
    assert again.message_id == retried.message_id
    q.let_pass(2)
    assert q.api.receive(name, wait_s=q.past_expiry) == []
    assert q.api.depth(name).in_flight == 3
    with pytest.raises(PayloadTooLarge):
        q.api.change_visibility_batch(name, [(held.receipt, 1)] * 11)


def test_change_visibility_batch_reports_deliveries_that_are_gone(q: Queues) -> None:
    [name] = q.make("visgone")
    q.api.send_batch(name, [OutgoingMessage("kept"), OutgoingMessage("done")])
    kept, done = q.drain(name, 2)
    q.api.delete(name, done.receipt)

    stale = q.api.change_visibility_batch(name, [(kept.receipt, 60), (done.receipt, 60)])

    assert stale == [1]


def test_change_visibility_extends_the_lease(q: Queues) -> None:
    [name] = q.make("lease")
    q.api.send(name, "long job")
    [message] = q.api.receive(name, wait_s=5, visibility_s=1)

    q.api.change_visibility(name, message.receipt, 60)

    q.let_pass(2)
    assert q.api.receive(name, wait_s=q.past_expiry) == []
    assert q.api.depth(name).in_flight == 1


def test_visibility_zero_receive_hands_out_each_message_once(q: Queues) -> None:
    [name] = q.make("zero")
    q.api.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(3)])

    received = q.api.receive(name, max_messages=10, wait_s=2, visibility_s=0)

    assert len({m.message_id for m in received}) == len(received) >= 1


def test_send_batch_of_ten(q: Queues) -> None:
    [name] = q.make("batch")
    bodies = [f"job {i}" for i in range(10)]

    ids = q.api.send_batch(name, [OutgoingMessage(b) for b in bodies])

    assert len(set(ids)) == 10
    received = q.drain(name, 10)
    assert {m.message_id: m.body for m in received} == dict(zip(ids, bodies, strict=True))


def test_oversized_batches_are_refused_and_nothing_is_sent(q: Queues) -> None:
    [name] = q.make("toolarge")

    with pytest.raises(PayloadTooLarge):
        q.api.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(11)])
    with pytest.raises(PayloadTooLarge):
        q.api.send_batch(name, [OutgoingMessage("x" * (100 * 1024)) for _ in range(3)])
    with pytest.raises(ValueError):
        q.api.send_batch(name, [])

    assert q.api.depth(name) == QueueDepth(0, 0, 0)


def test_body_limits(q: Queues) -> None:
    [name] = q.make("body")

    for body in ["x" * (LIMIT + 1), "é" * (LIMIT // 2 + 1)]:
        with pytest.raises(PayloadTooLarge):
            q.api.send(name, body)
    for body in ["", "nul \x00 inside"]:
        with pytest.raises(ValueError):
            q.api.send(name, body)
    q.api.send(name, "y" * LIMIT)

    [message] = q.api.receive(name, wait_s=5)
    assert message.body == "y" * LIMIT


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda api, n: api.receive(n, max_messages=11), PayloadTooLarge),
        (lambda api, n: api.receive(n, max_messages=0), ValueError),
        (lambda api, n: api.receive(n, wait_s=21), ValueError),
        (lambda api, n: api.receive(n, visibility_s=12 * 3600 + 1), ValueError),
        (lambda api, n: api.send(n, "late", delay_s=901), ValueError),
    ],
    ids=["max-11", "max-0", "wait-21", "visibility-12h+1", "delay-901"],
)
def test_out_of_range_arguments_are_refused(q: Queues, call: Any, error: type[Exception]) -> None:
    [name] = q.make("range")

    with pytest.raises(error):
        call(q.api, name)


def test_delayed_message_waits_its_delay(q: Queues) -> None:
    [name] = q.make("delay")

    q.api.send(name, "later", delay_s=2)

    assert q.api.receive(name, wait_s=0) == []
    q.let_pass(3)
    [message] = q.api.receive(name, wait_s=q.until_back)
    assert message.body == "later"


def test_depth_counts_waiting_in_flight_and_delayed(q: Queues) -> None:
    [name] = q.make("depth")
    q.api.send(name, "a")
    q.api.send(name, "b")
    q.api.send(name, "c", delay_s=600)

    [_] = q.api.receive(name, wait_s=5, visibility_s=600)

    assert q.api.depth(name) == QueueDepth(waiting=1, in_flight=1, delayed=1)


def test_purge_empties_the_queue(q: Queues) -> None:
    [name] = q.make("purge")
    q.api.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(3)])
    q.api.receive(name, wait_s=5, visibility_s=600)

    q.api.purge(name)

    assert q.api.depth(name) == QueueDepth(0, 0, 0)
    assert q.api.receive(name, wait_s=0) == []


def test_ensure_keeps_existing_queues_as_they_are(q: Queues) -> None:
    [name] = q.make("keep", attributes=QueueAttributes(visibility_s=1))
    q.api.send(name, "kept")

    q.api.ensure([name], QueueAttributes(visibility_s=600))

    [first] = q.api.receive(name, wait_s=5)
    q.let_pass(2)
    [again] = q.api.receive(name, wait_s=q.until_back)
    assert (again.message_id, again.receive_count) == (first.message_id, 2)


def test_unknown_queue_is_not_found(q: Queues) -> None:
    [real] = q.make("real")
    q.api.send(real, "x")
    [message] = q.api.receive(real, wait_s=5)
    missing = unique("c") + "-missing"

    calls = [
        lambda: q.api.send(missing, "x"),
        lambda: q.api.send_batch(missing, [OutgoingMessage("x")]),
        lambda: q.api.receive(missing, wait_s=0),
        lambda: q.api.depth(missing),
        lambda: q.api.purge(missing),
        lambda: q.api.delete(missing, message.receipt),
    ]
    for call in calls:
        with pytest.raises(NotFound, match=missing):
            call()


def test_malformed_receipt_is_invalid(q: Queues) -> None:
    [name] = q.make("receipt")
    q.api.send(name, "x")

    with pytest.raises(InvalidReceipt):
        q.api.delete(name, "not-a-receipt")
    with pytest.raises(InvalidReceipt):
        q.api.change_visibility(name, "not-a-receipt", 0)


def test_redrive_moves_a_message_to_the_dead_letter_queue(q: Queues) -> None:
    [dead] = q.make("dead")
    [source] = q.make(
        "pending", attributes=QueueAttributes(visibility_s=1, dead_letter=dead, max_receive_count=2)
    )
    message_id = q.api.send(source, "poison")

    counts = []
    for _ in range(2):
        [message] = q.api.receive(source, wait_s=q.until_back or 5)
        counts.append(message.receive_count)
        q.let_pass(2)

    assert counts == [1, 2]
    assert q.api.receive(source, wait_s=q.past_expiry) == []
    [moved] = q.api.receive(dead, wait_s=5)
    assert (moved.message_id, moved.body) == (message_id, "poison")
    assert q.api.depth(source) == QueueDepth(0, 0, 0)


# -- what only the embedded queues can show ----------------------------------------------------


@pytest.fixture
def local(q: Queues, backend: BackendSetup) -> Queues:
    if backend.kind != "embedded":
        pytest.skip("embedded queues only")
    return q


def test_stale_receipt_deletes_nothing_and_cannot_change_visibility(local: Queues) -> None:
    # moto accepts any old receipt of a message (see docs/architecture.md), so this holds only here.
    [name] = local.make("stale")
    local.api.send(name, "x")
    [first] = local.api.receive(name, visibility_s=1)
    local.let_pass(2)
    [second] = local.api.receive(name, visibility_s=60)

    local.api.delete(name, first.receipt)

    assert local.api.depth(name).in_flight == 1
    with pytest.raises(InvalidReceipt, match="received again"):
        local.api.change_visibility(name, first.receipt, 0)
    local.api.delete(name, second.receipt)
    local.api.delete(name, second.receipt)
    assert local.api.depth(name) == QueueDepth(0, 0, 0)


def test_retention_drops_old_messages(local: Queues) -> None:
    [name] = local.make("old", attributes=QueueAttributes(retention_s=60))
    local.api.send(name, "stale")

    local.let_pass(61)

    assert local.api.depth(name) == QueueDepth(0, 0, 0)
    assert local.api.receive(name) == []


def test_ensure_creates_a_queue_and_its_dead_letter_queue_together(local: Queues) -> None:
    base = unique("c")
    source, dead = f"{base}-pending", f"{base}-dead"
    local.api.ensure([source, dead], QueueAttributes(visibility_s=1, dead_letter=dead, max_receive_count=1))
    local.api.send(source, "x")
    local.api.receive(source)
    local.let_pass(2)

    assert local.api.receive(source) == []
    [moved] = local.api.receive(dead)
    assert moved.body == "x"


def test_redrive_policy_needs_an_existing_dead_letter_queue(local: Queues) -> None:
    name = unique("c")
    with pytest.raises(NotFound, match="nowhere"):
        local.api.ensure([name], QueueAttributes(dead_letter="nowhere", max_receive_count=3))
    with pytest.raises(ConfigError):
        local.api.ensure([name], QueueAttributes(dead_letter=name))
    with pytest.raises(ConfigError):
        local.api.ensure(["bad name!"], QueueAttributes())


def test_database_folder_is_created_and_named_in_location(local: Queues, tmp_path: Path) -> None:
    from remotejob.backends.local import SqliteQueues

    path = tmp_path / "deep" / "er" / "queues.db"
    queues = SqliteQueues(path)
    queues.ensure(["x"], QueueAttributes())

    assert path.exists()
    assert queues.location == f"sqlite://{path}"


def test_unusable_database_is_backend_unavailable(local: Queues, tmp_path: Path) -> None:
    from remotejob.backends.local import SqliteQueues

    with pytest.raises(BackendUnavailable, match=str(tmp_path)):
        SqliteQueues(tmp_path).ensure(["x"], QueueAttributes())


def test_threads_receiving_concurrently_get_each_message_once(local: Queues) -> None:
    [name] = local.make("threads")
    for start in range(0, 40, 10):
        local.api.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(start, start + 10)])
    got: list[str] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        while batch := local.api.receive(name, max_messages=3, visibility_s=600):
            got.extend(m.body for m in batch)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(got) == sorted(f"m{i}" for i in range(40))


def _drain_in_process(path: str, queue: str, barrier: Any, results: Any) -> None:
    from remotejob.backends.local import SqliteQueues

    queues = SqliteQueues(path)
    received: list[str] = []
    barrier.wait()
    while batch := queues.receive(queue, max_messages=3, visibility_s=600):
        for message in batch:
            received.append(message.body)
            queues.delete(queue, message.receipt)
    results.put(received)


def test_two_processes_receive_each_message_exactly_once(local: Queues, backend: BackendSetup) -> None:
    from remotejob.backends.local import SqliteQueues

    path = backend.tmp / "shared.db"
    queues = SqliteQueues(path)
    name = unique("c") + "-pending"
    queues.ensure([name], QueueAttributes())
    for start in range(0, 50, 10):
        queues.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(start, start + 10)])
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    workers = [
        context.Process(target=_drain_in_process, args=(str(path), name, barrier, results)) for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    received = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)

    assert [worker.exitcode for worker in workers] == [0, 0]
    everything = received[0] + received[1]
    assert sorted(everything) == sorted(f"m{i}" for i in range(50))
    assert queues.depth(name) == QueueDepth(0, 0, 0)


def _receive_in_forked_child(queues: Any, queue: str, results: Any) -> None:
    batch = queues.receive(queue, max_messages=10, visibility_s=600)
    for message in batch:
        queues.delete(queue, message.receipt)
    results.put([message.body for message in batch])


def test_forked_process_can_keep_using_the_parents_queues(local: Queues, backend: BackendSetup) -> None:
    from remotejob.backends.local import SqliteQueues

    queues = SqliteQueues(backend.tmp / "forked.db")
    name = unique("c") + "-pending"
    queues.ensure([name], QueueAttributes())
    queues.send(name, "to the child")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_receive_in_forked_child, args=(queues, name, results))

    child.start()
    received = results.get(timeout=60)
    child.join(timeout=60)

    assert received == ["to the child"]
    assert child.exitcode == 0
    queues.send(name, "parent still works")
    assert [m.body for m in queues.receive(name)] == ["parent still works"]


def _open_fresh(path: str, gate: Any) -> None:
    from remotejob.backends.local import SqliteQueues

    gate.wait(30)
    queues = SqliteQueues(path)
    queues.ensure(["race-pending"], QueueAttributes())
    queues.send("race-pending", "x")


def test_processes_opening_a_fresh_database_at_once_all_succeed(local: Queues, tmp_path: Path) -> None:
    # Switching a new file to WAL can be refused with "database is locked" without SQLite's
    # busy handler; every process must still get through.
    for round_ in range(3):
        path = str(tmp_path / f"fresh-{round_}.db")
        ctx = multiprocessing.get_context("fork")  # a spawned process imports the suite: ~2 s each
        gate = ctx.Event()
        procs = [ctx.Process(target=_open_fresh, args=(path, gate)) for _ in range(6)]
        for proc in procs:
            proc.start()
        gate.set()  # all six open the new file at once
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * 6
        from remotejob.backends.local import SqliteQueues

        assert SqliteQueues(path).depth("race-pending").waiting == 6
