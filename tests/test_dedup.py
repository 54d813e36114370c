"""Dedup keys (issue 14) over every backend: ``submit(..., dedup_key=k)`` returns the job that
holds the key while it is queued or running, and makes a new job once it has finished.

Each test tries to break one promise of the README's "Dedup keys": one job per key while it is
unfinished, whoever submits and however the submits interleave (threads with their own
connections, a lost reply, a creator that died half-way); the key is free again once the job is
completed, failed or cancelled; the cost is what the README says. Jobs are run by burst workers,
and a handler call is the proof that a job ran.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import remotejob
from remotejob import BackendUnavailable, NotFound, dedup, keys
from tests.conftest import BackendSetup, unique, wait_until
from tests.faults import connect_faulty

LONG = 30.0
"""Upper bound of any wait on an event a test sets itself (never reached when all is well)."""
STATUSES = ("pending",)
"""One status: fewer queues to create, and no completion notices."""


def connect(backend: BackendSetup, **options: Any) -> remotejob.Queue:
    options.setdefault("visibility_timeout", 2)
    options.setdefault("wait_time", 1)
    options.setdefault("max_attempts", 1)
    options.setdefault("statuses", STATUSES)
    return backend.connect(**options)  # type: ignore[no-any-return]


def drain(q: remotejob.Queue) -> list[str]:
    """Run a burst worker over ``pending``; return the ids of the jobs its handler ran, in order.
    A job whose body is ``fail`` fails."""
    ran: list[str] = []
    lock = threading.Lock()

    def handler(job: remotejob.Job) -> None:
        with lock:
            ran.append(job.id)
        if job.open().read() == b"fail":
            raise RuntimeError("told to fail")

    remotejob.Worker(q, handler, burst=True, handle_signals=False, retry_delay=0).run()
    return ran


def test_a_second_submit_while_the_job_waits_returns_it_and_sends_nothing(backend: BackendSetup) -> None:
    q = connect(backend)
    first = q.submit({"body": b"one"}, dedup_key="report-2026-01-01")
    again = q.submit({"body": b"two"}, dedup_key="report-2026-01-01")

    assert again == first and q.status(first).state == "pending"
    assert drain(q) == [first]  # one message: the job ran once
    assert q.status(first).state == "completed"


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_submit_while_the_job_runs_returns_it(backend: BackendSetup) -> None:
    q = connect(backend)
    first = q.submit({"body": b"one"}, dedup_key="k")
    job = q.next(timeout=LONG)
    assert job is not None and job.id == first and q.status(first).state == "inprogress"

    assert q.submit({"body": b"two"}, dedup_key="k") == first
    job.complete()
    assert drain(q) == []  # the second submit sent nothing


def _finish(q: remotejob.Queue, job_id: str, how: str) -> None:
    if how == "cancelled":
        q.cancel(job_id, "not needed")  # while queued: its message stays, and is dropped unrun
        return
    job = q.next(timeout=LONG)
    assert job is not None and job.id == job_id
    job.complete(error="boom" if how == "failed" else None)


@pytest.mark.parametrize("how", ["completed", "failed", "cancelled"])
@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_finished_job_frees_its_key(backend: BackendSetup, how: str) -> None:
    q = connect(backend)
    first = q.submit({"body": b"one"}, dedup_key="k")
    _finish(q, first, how)
    assert q.status(first).state == how

    second = q.submit({"body": b"two"}, dedup_key="k")
    assert second != first and q.status(second).state == "pending"
    assert q.submit({"body": b"three"}, dedup_key="k") == second  # the new job holds the key now
    assert drain(q) == [second]
    assert q.status(second).state == "completed" and q.status(first).state == how


@pytest.mark.backends("embedded", "aws-real-s3")
def test_each_new_job_of_a_key_runs_and_old_generations_are_removed(backend: BackendSetup) -> None:
    q = connect(backend)
    ids = []
    for n in range(3):
        ids.append(q.submit({"body": b"x"}, dedup_key="k"))
        job = q.next(timeout=LONG)
        assert job is not None and job.id == ids[-1]
        job.complete(error="boom" if n == 1 else None)

    assert len(set(ids)) == 3
    assert [q.status(i).state for i in ids] == ["completed", "failed", "completed"]
    generations = [info.key for info in q.object_store.list(keys.dedup_prefix("k"))]
    assert generations == [keys.dedup_generation_key("k", n) for n in (1, 2)]  # the newest two


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_scheduled_job_holds_its_key_until_it_is_cancelled(backend: BackendSetup) -> None:
    q = connect(backend)
    first = q.submit({"body": b"one"}, delay=600, dedup_key="k")
    assert q.status(first).state == "scheduled"

    assert q.submit({"body": b"two"}, dedup_key="k") == first
    q.cancel(first)
    assert q.submit({"body": b"three"}, dedup_key="k") != first


# moto's S3 conditional put is check-then-act (docs/architecture.md): two concurrent creates of one
# key may both succeed there, which S3, SeaweedFS and the embedded store refuse. The promise rests
# on an atomic create-once, so it is proven where there is one.
@pytest.mark.backends("embedded", "aws-real-s3")
def test_concurrent_submits_from_separate_connections_make_one_job(backend: BackendSetup) -> None:
    name, store, queues = unique("q"), backend.store_url(), backend.queues_url()
    clients = [connect(backend, name=name, store=store, queues=queues) for _ in range(8)]
    with ThreadPoolExecutor(len(clients)) as pool:  # each connection ready, so the submits meet at the key
        list(pool.map(lambda q: q.init(), clients))
    barrier = threading.Barrier(len(clients))
    ids: list[str] = []
    errors: list[BaseException] = []

    def submit(q: remotejob.Queue, n: int) -> None:
        barrier.wait(LONG)
        try:
            ids.append(q.submit({"body": f"from {n}".encode()}, dedup_key="nightly"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(q, n)) for n, q in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LONG)

    assert errors == [] and len(ids) == len(clients)
    assert len(set(ids)) == 1
    assert drain(clients[0]) == ids[:1]


def _write_generation(q: remotejob.Queue, key: str, job_id: str, created: float) -> None:
    doc = {"v": 1, "key": key, "job": job_id, "token": "someone-else", "created": created}
    q.object_store.put(keys.dedup_generation_key(key, 0), json.dumps(doc).encode(),
                       content_type="application/json")


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_creator_that_died_before_submitting_holds_the_key_for_a_minute_at_most(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = connect(backend)
    monkeypatch.setattr(dedup, "WAIT_S", 0.3)  # how long a submit waits for a job being submitted
    _write_generation(q, "k", "never-sent", time.time())  # its creator died a moment ago

    with pytest.raises(BackendUnavailable, match="still being submitted"):
        q.submit({"body": b"one"}, dedup_key="k")  # no job of its own, and no id that never runs

    _write_generation(q, "k", "never-sent", time.time() - 61)  # over a minute ago
    job_id = q.submit({"body": b"two"}, dedup_key="k")
    assert job_id != "never-sent"
    assert drain(q) == [job_id]
    with pytest.raises(NotFound):
        q.status("never-sent")


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_submit_waits_for_the_job_another_submit_is_still_writing(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend, wait_time=1, visibility_timeout=2, statuses=STATUSES)
    holding, release = threading.Event(), threading.Event()
    faults.delay("store.put", until=release, seconds=LONG, match="/queued", entered=holding)
    ids: dict[str, str] = {}

    def submit(who: str) -> None:
        ids[who] = q.submit({"body": who.encode()}, dedup_key="k")

    first = threading.Thread(target=submit, args=("first",))
    first.start()
    assert holding.wait(LONG)  # the first submit won the key and is writing its job's record
    second = threading.Thread(target=submit, args=("second",))
    second.start()
    wait_until(lambda: faults.count("store.get", match="/queued"), what="the second submit to read it")
    release.set()
    first.join(LONG)
    second.join(LONG)

    assert ids["first"] == ids["second"]
    assert drain(q) == [ids["first"]]


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_lost_reply_on_the_keys_create_still_makes_one_job(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend, wait_time=1, visibility_timeout=2, statuses=STATUSES)
    faults.lose_reply("store.put", match="dedup/")

    job_id = q.submit({"body": b"one"}, dedup_key="k")
    assert faults.fired("store.put") == 1  # the create was applied, and its reply lost
    assert q.submit({"body": b"two"}, dedup_key="k") == job_id
    assert drain(q) == [job_id]


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_submit_that_sent_nothing_frees_the_key_and_one_that_may_have_sent_keeps_it(
    backend: BackendSetup,
) -> None:
    q, faults = connect_faulty(backend, wait_time=1, visibility_timeout=2, statuses=STATUSES)
    faults.fail("queue.send_batch", BackendUnavailable("the queue is down"))
    with pytest.raises(BackendUnavailable, match="the queue is down"):
        q.submit({"body": b"one"}, dedup_key="k")
    sent = q.submit({"body": b"two"}, dedup_key="k")  # at once: no job holds the key

    faults.lose_reply("queue.send_batch")
    with pytest.raises(remotejob.BatchPartlyFailed) as lost:
        q.submit({"body": b"three"}, dedup_key="other")
    maybe = lost.value.uncertain[0]
    assert q.submit({"body": b"four"}, dedup_key="other") == maybe  # it was sent: it holds its key

    assert sorted(drain(q)) == sorted([sent, maybe])


@pytest.mark.backends("embedded", "aws")
def test_cost_of_a_submit_with_a_dedup_key(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend, wait_time=1, journal=False, statuses=STATUSES)
    q.init()

    def cost(dedup_key: str) -> dict[str, int]:
        before = faults.ops()
        q.submit({"body": b"x"}, dedup_key=dedup_key)
        return {op: n for op, n in (faults.ops() - before).items() if n}

    # a new key: 1 LIST, 1 PUT (the key) on top of a keyed submit (PUT record, PUT input, send)
    assert cost("k") == {"store.list": 1, "store.put": 3, "queue.send_batch": 1}
    # the key held: 1 LIST, 1 GET (the key), the job's status (final, progress, queued): no write
    assert cost("k") == {"store.list": 1, "store.get": 4}


@pytest.mark.backends("embedded", "aws")
def test_different_keys_make_different_jobs(backend: BackendSetup) -> None:
    q = connect(backend)
    a = q.submit({"body": b"a"}, dedup_key="a")
    b = q.submit({"body": b"b"}, dedup_key="b")
    plain = [q.submit({"body": b"plain"}), q.submit({"body": b"plain"})]  # no key: no dedup

    assert len({a, b, *plain}) == 4
    assert sorted(drain(q)) == sorted([a, b, *plain])


BAD: list[tuple[Any, dict[str, Any], type[Exception], str]] = [
    (b"bytes", {"body": b"x"}, TypeError, "must be a str"),
    (7, {"body": b"x"}, TypeError, "must be a str"),
    ("", {"body": b"x"}, ValueError, "must not be empty"),
    ("\u00e9" * 513, {"body": b"x"}, ValueError, "1026 UTF-8 bytes, over 1024"),
    ("\ud800", {"body": b"x"}, ValueError, "valid Unicode"),
    ("k", {"body": b"x", "key": "mine"}, ValueError, "chooses the job id"),
    ("k", {"body": b"x", "size": 3}, remotejob.MetadataError, "size"),
    ("k", {"body": b"x"}, remotejob.UnknownStatus, "not configured"),
]


@pytest.mark.backends("embedded")  # refused before any request
def test_a_bad_dedup_submit_is_refused_having_written_nothing(backend: BackendSetup) -> None:
    q = connect(backend)
    for dedup_key, data, error, match in BAD:
        status = "nowhere" if error is remotejob.UnknownStatus else "pending"
        with pytest.raises(error, match=match):
            q.submit(data, status, dedup_key=dedup_key)

    assert list(q.object_store.list()) == []
    longest = "\u00e9" * 512  # 1,024 bytes: allowed
    assert q.submit({"body": b"x"}, dedup_key=longest) == q.submit({"body": b"y"}, dedup_key=longest)
