"""The worker runtime in-process, on every backend: retries, dead letters, heartbeats, pipelines,
effectively-once completion and stopping. Process-level crashes are in test_worker_processes.py.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import signal
import threading
import time
import weakref
from typing import Any

import pytest

import remotejob
from remotejob import keys
from remotejob.errors import AlreadyExists, ConfigError, JobFailed
from tests.conftest import BackendSetup, running, unique, wait_until
from tests.faults import Crash, Faults, FaultyQueues, FaultyStore, connect_faulty


def connect(backend: BackendSetup, **options: Any) -> remotejob.Queue:
    options.setdefault("visibility_timeout", 2)
    options.setdefault("wait_time", 1)
    return backend.connect(**options)  # type: ignore[no-any-return]


def upper(job: remotejob.Job) -> list[dict[str, Any]]:
    with job.open() as stream:
        return [{"key": "output", "body": stream.read().upper()}]


def test_burst_drains_the_queue_and_returns_the_count(backend: BackendSetup) -> None:
    q = connect(backend)
    ids = [q.submit({"body": f"job {i}".encode()}) for i in range(5)]

    taken = q.work(upper, concurrency=3, burst=True, handle_signals=False)

    assert taken == 5
    for i, job_id in enumerate(ids):
        assert q.wait(job_id, timeout=5).outputs == ["output"]
        assert q.retrieve("out", f"{job_id}/output").read() == f"JOB {i}".encode()
    depth = q.message_queue.depth(keys.queue_name(q.name, "pending"))
    assert (depth.waiting, depth.in_flight) == (0, 0)


def test_max_jobs_stops_after_that_many(backend: BackendSetup) -> None:
    q = connect(backend)
    ids = [q.submit({"body": b"x"}) for _ in range(4)]

    assert q.work(upper, max_jobs=3, concurrency=2, handle_signals=False) == 3

    states = sorted(q.status(i).state for i in ids)
    assert states == ["completed", "completed", "completed", "pending"]


def test_a_lone_finished_job_is_deleted_and_notified_while_the_worker_runs_on(backend: BackendSetup) -> None:
    q = connect(backend, visibility_timeout=30)
    job_id = q.submit({"body": b"only one"})
    worker = remotejob.Worker(q, upper, handle_signals=False)
    with running(worker):
        wait_until(lambda: q.status(job_id).state == "completed", what="the job to complete")
        pending = keys.queue_name(q.name, "pending")
        wait_until(lambda: q.message_queue.depth(pending).in_flight == 0, what="its message to go")
        notice = q.next("completed", timeout=10)
        assert notice is not None and notice.id == job_id and notice.state == "completed"


@pytest.mark.parametrize("prefetch", [0, 2, None])
def test_holds_no_more_messages_than_its_slots_and_prefetch(
    backend: BackendSetup, prefetch: int | None
) -> None:
    """By default a worker holds as many waiting jobs as it has handlers (at least 2)."""
    q = connect(backend, visibility_timeout=30)
    q.submit_many([{"body": b"x"}] * 8)
    release = threading.Event()
    started: list[str] = []

    def blocked(job: remotejob.Job) -> None:
        started.append(job.id)
        release.wait(30)

    worker = remotejob.Worker(q, blocked, concurrency=3, prefetch=prefetch, handle_signals=False, burst=True)
    held = 3 + (3 if prefetch is None else prefetch)
    with running(worker):
        wait_until(lambda: len(started) == 3, what="three handlers to start")
        pending = keys.queue_name(q.name, "pending")
        wait_until(lambda: q.message_queue.depth(pending).in_flight == held, what="prefetching")
        try:
            depth = q.message_queue.depth(pending)
            assert (depth.in_flight, depth.waiting, len(started)) == (held, 8 - held, 3)
        finally:
            release.set()
        wait_until(lambda: len(started) == 8, what="all jobs to run")


def test_failing_handler_runs_max_attempts_then_fails_and_dead_letters(backend: BackendSetup) -> None:
    q = connect(backend, max_attempts=3)
    job_id = q.submit({"body": b"bad"})
    attempts: list[tuple[str, int]] = []

    def broken(job: remotejob.Job) -> None:
        attempts.append((job.message_id, job.receive_count))
        raise ValueError("cannot parse 'bad'")

    q.work(broken, burst=True, retry_delay=0, handle_signals=False)

    assert [count for _, count in attempts] == [1, 2, 3]
    assert len({message_id for message_id, _ in attempts}) == 1  # one message, retried in place
    with pytest.raises(JobFailed) as failed:
        q.wait(job_id, timeout=5)
    assert failed.value.error == "ValueError: cannot parse 'bad'"
    [dead] = q.dead_letters()
    assert dead.job == job_id and dead.status == "pending"
    assert "failed 3 attempts" in dead.reason and "cannot parse" in dead.reason
    assert q.dead_letters() != []  # listing leaves them in place

    assert q.redrive() == 1
    assert q.dead_letters() == []
    assert q.status(job_id).state == "pending"
    q.work(upper, burst=True, handle_signals=False)
    assert q.wait(job_id, timeout=5).state == "completed"
    assert q.retrieve("out", f"{job_id}/output").read() == b"BAD"


def test_retries_back_off_and_a_later_attempt_can_succeed(backend: BackendSetup) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"flaky"})
    seen: list[int] = []

    def flaky(job: remotejob.Job) -> list[dict[str, Any]]:
        seen.append(job.receive_count)
        if job.receive_count < 2:
            raise ConnectionError("upstream hiccup")
        return upper(job)

    q.work(flaky, burst=True, retry_delay=1, handle_signals=False)

    assert seen == [1, 2]
    st = q.status(job_id)
    assert st.state == "completed" and st.attempt == 2 and st.error is None
    assert q.dead_letters() == []


def test_poison_message_is_dead_lettered_and_the_worker_keeps_serving(backend: BackendSetup) -> None:
    q = connect(backend)
    q.init()
    q.message_queue.send(keys.queue_name(q.name, "pending"), '{"v": 99, "job": "x"}')
    job_id = q.submit({"body": b"fine"})

    q.work(upper, burst=True, handle_signals=False)

    assert q.wait(job_id, timeout=5).state == "completed"
    [dead] = q.dead_letters()
    assert dead.body == '{"v": 99, "job": "x"}' and "version" in dead.reason
    assert q.redrive() == 0  # not a job: it stays for a human to look at
    assert len(q.dead_letters()) == 1


def test_heartbeat_keeps_a_long_job_to_one_execution_and_shows_inprogress(backend: BackendSetup) -> None:
    q = connect(backend, visibility_timeout=1)
    job_id = q.submit({"body": b"slow"})
    executions: list[int] = []
    seen_inprogress = threading.Event()

    def slow(job: remotejob.Job) -> list[dict[str, Any]]:
        executions.append(job.receive_count)
        deadline = time.monotonic() + 5  # five visibility timeouts
        while time.monotonic() < deadline:
            if q.status(job.id).state == "inprogress":
                seen_inprogress.set()
            time.sleep(0.1)
        return upper(job)

    # Two workers compete: without heartbeats the second would take the job after 1 s.
    first = remotejob.Worker(q, slow, handle_signals=False)
    second = remotejob.Worker(q, slow, handle_signals=False)
    with running(first), running(second):
        st = q.wait(job_id, timeout=30)

    assert executions == [1]
    assert seen_inprogress.is_set()
    assert st.state == "completed" and st.attempt == 1 and st.worker


def test_short_jobs_never_record_inprogress(backend: BackendSetup) -> None:
    q = connect(backend, visibility_timeout=30)
    job_id = q.submit({"body": b"quick"})

    q.work(upper, burst=True, handle_signals=False)

    assert q.status(job_id).state == "completed"
    assert [i.key for i in q.object_store.list(f"jobs/{job_id}/")] == [f"jobs/{job_id}/final"]


def test_one_completion_notice_per_finished_job(backend: BackendSetup) -> None:
    q = connect(backend)
    ok = q.submit({"body": b"ok"})
    q.work(upper, burst=True, handle_signals=False)

    notice = q.next("completed", timeout=5)
    assert notice is not None and notice.id == ok and notice.state == "completed"
    notice.acknowledge()
    assert q.next("completed", timeout=1) is None


def test_a_late_duplicate_loses_and_the_winner_stands(backend: BackendSetup) -> None:
    q = connect(backend, visibility_timeout=30)
    job_id = q.submit({"body": b"dup"})
    zombie = q.next("pending", timeout=5)
    assert zombie is not None
    zombie.release(0)  # as if its visibility ran out while it stalled
    winner = q.next("pending", timeout=5)
    assert winner is not None and winner.receive_count == 2

    winner.complete(assets=[{"key": "output", "body": b"winner"}, {"key": "log", "body": b"w" * 100_000}])
    with pytest.raises(AlreadyExists, match="already finished"):
        zombie.complete(assets=[{"key": "output", "body": b"zombie"}, {"key": "log", "body": b"z" * 100_000}])

    st = q.status(job_id)
    assert st.state == "completed" and st.attempt == 2
    assert q.retrieve("out", f"{job_id}/output").read() == b"winner"
    assert q.retrieve("out", f"{job_id}/log").read() == b"w" * 100_000
    assert st.assets["log"].sha256 == hashlib.sha256(b"w" * 100_000).hexdigest()
    assert list(q.object_store.list(f"jobs/{job_id}/attempts/")) == []
    assert sorted(i.key for i in q.object_store.list(f"out/{job_id}/")) == [
        f"out/{job_id}/log", f"out/{job_id}/output"
    ]


def test_a_claim_whose_reply_was_lost_is_recognised_as_ours(backend: BackendSetup) -> None:
    faults = Faults()
    q = remotejob.connect(unique("q"), store=FaultyStore(backend.make_store(), faults),
                          queues=FaultyQueues(backend.make_queues(), faults), visibility_timeout=30)
    job_id = q.submit({"body": b"x"})
    faults.lose_reply("store.put", match="/final")  # applied, but the worker never hears so

    assert q.work(lambda job: [{"key": "output", "body": b"done"}], burst=True, handle_signals=False) == 1

    st = q.wait(job_id, timeout=5)
    assert st.state == "completed" and st.outputs == ["output"]
    assert q.output(job_id, "output", sha256=st.assets["output"].sha256).read() == b"done"


def test_redelivery_after_a_crash_past_the_claim_publishes_without_rerunning(backend: BackendSetup) -> None:
    faults = Faults()
    q = remotejob.connect(unique("q"), store=FaultyStore(backend.make_store(), faults),
                          queues=FaultyQueues(backend.make_queues(), faults), visibility_timeout=1,
                          wait_time=1)  # a stopped worker waits out its SQS long poll
    job_id = q.submit({"body": b"crash"})
    # The first attempt stages and claims, then dies before publishing or deleting its message.
    faults.crash("store.put", match="/final")
    runs: list[str] = []

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        runs.append(job.id)
        return [{"key": "output", "body": b"x" * 70_000}]

    with contextlib.suppress(Crash):
        q.work(handler, burst=True, handle_signals=False)
    faults.revive()
    with running(remotejob.Worker(q, handler, handle_signals=False)):
        assert q.wait(job_id, timeout=30).state == "completed"

    assert runs == [job_id]
    assert q.retrieve("out", f"{job_id}/output").read() == b"x" * 70_000
    assert list(q.object_store.list(f"jobs/{job_id}/attempts/")) == []
    notice = q.next("completed", timeout=5)
    assert notice is not None and notice.id == job_id
    depth = q.message_queue.depth(keys.queue_name(q.name, "pending"))
    assert (depth.waiting, depth.in_flight) == (0, 0)


def test_pipeline_hands_the_output_on_keeping_the_job_id(backend: BackendSetup) -> None:
    q = connect(backend, statuses=("pending", "thumbnail", "completed"))
    job_id = q.submit({"body": b"picture", "owner": "ana"})

    def resize(job: remotejob.Job) -> None:
        with job.open() as stream:
            body = stream.read()
        job.complete(assets=[{"key": "resized", "body": body + b"-resized"}], next_status="thumbnail")

    def thumbnail(job: remotejob.Job) -> list[dict[str, Any]]:
        assert job.metadata == {"owner": "ana"}
        with job.open() as stream:
            return [{"key": "thumb", "body": stream.read() + b"-thumb"}]

    q.work(resize, burst=True, handle_signals=False)
    assert q.status(job_id).state == "pending" and q.status(job_id).status == "thumbnail"
    q.work(thumbnail, status="thumbnail", burst=True, handle_signals=False)

    st = q.wait(job_id, timeout=5)
    assert st.status == "thumbnail" and sorted(st.outputs) == ["resized", "thumb"]
    assert q.retrieve("out", f"{job_id}/thumb").read() == b"picture-resized-thumb"
    assert q.retrieve("out", f"{job_id}/resized").read() == b"picture-resized"


@pytest.mark.parametrize("how", ["grace-runs-out", "second-stop"])
def test_stop_releases_unfinished_jobs_at_once(backend: BackendSetup, how: str) -> None:
    """README: running handlers get the grace period, then their jobs are made visible again at
    once; a second signal (``stop(now=True)``) cuts the grace period short. Here a ten-minute
    one: only the second stop lets the worker return."""
    if how == "second-stop" and backend.kind != "embedded":
        pytest.skip("the worker's own waiting, the same over any queue; CI time")
    q = connect(backend, visibility_timeout=60)
    job_id = q.submit({"body": b"long"})
    started, release = threading.Event(), threading.Event()

    def long(job: remotejob.Job) -> None:
        started.set()
        release.wait(30)

    grace = 0.2 if how == "grace-runs-out" else 600
    worker = remotejob.Worker(q, long, grace_period=grace, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert started.wait(20)
    worker.stop()
    if how == "second-stop":
        worker.stop(now=True)
    thread.join(20)

    assert not thread.is_alive() and worker.interrupted  # the handler still runs
    depth = q.message_queue.depth(keys.queue_name(q.name, "pending"))
    assert (depth.waiting, depth.in_flight) == (1, 0)  # visible again without waiting 60 s
    release.set()  # the released handler may still finish; the claim keeps one outcome
    q.work(upper, burst=True, handle_signals=False)
    assert q.wait(job_id, timeout=10).state == "completed"


def test_a_job_id_runs_once(backend: BackendSetup) -> None:
    q = connect(backend)
    q.store("in", {"key": "report.csv", "body": b"a,b"})
    assert q.trigger("report.csv") == "report.csv"

    with pytest.raises(AlreadyExists, match="new key"):
        q.trigger("report.csv")


def test_bad_worker_options_are_config_errors(backend: BackendSetup) -> None:
    q = connect(backend)
    with pytest.raises(ConfigError, match="concurrency"):
        remotejob.Worker(q, upper, concurrency=0)
    with pytest.raises(ConfigError, match="handler"):
        remotejob.Worker(q, "not callable")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_attempts"):
        connect(backend, max_attempts=0)
    with pytest.raises(remotejob.UnknownStatus):
        remotejob.Worker(q, upper, status="nope")


def test_an_idle_embedded_worker_stops_without_waiting_out_its_long_poll(backend: BackendSetup) -> None:
    if backend.kind != "embedded":
        pytest.skip("an SQS long poll cannot be cut short: a stopping worker waits it out")
    q, faults = connect_faulty(backend, wait_time=20)
    q.init()
    worker = remotejob.Worker(q, lambda job: None, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_until(lambda: faults.count("queue.receive") >= 1, what="the worker's first long poll")
    worker.stop()
    thread.join(10)  # half the poll: the stop cut it short
    assert not thread.is_alive()


@pytest.mark.backends("embedded")  # the worker's own arithmetic, the same over any queue
@pytest.mark.parametrize("check", [0.0, 3600.0])
def test_an_idle_worker_looks_into_the_dead_letters_at_most_every_dead_letter_check(
    backend: BackendSetup, check: float
) -> None:
    """README: an idle worker looks into the dead-letter queue at most every
    ``dead_letter_check`` seconds (one receive there): with 0, after each empty poll; with an
    hour, not in a short run, however many polls come back empty."""
    q, faults = connect_faulty(backend, wait_time=1)
    q.init()
    worker = remotejob.Worker(q, upper, dead_letter_check=check, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    pending, dead = keys.queue_name(q.name, "pending"), f"{q.name}-dead"
    wait_until(lambda: faults.count("queue.receive", match=pending) >= 4, what="four empty polls")
    worker.stop()
    thread.join(10)
    assert not thread.is_alive()
    polls, looks = faults.count("queue.receive", match=pending), faults.count("queue.receive", match=dead)
    if check:
        assert looks == 0, f"{looks} looks into the dead letters in {polls} polls"
    else:
        assert polls - 1 <= looks <= polls, f"{looks} looks into the dead letters in {polls} polls"


@pytest.mark.backends("embedded")  # the worker's own bookkeeping, the same over any queue
def test_a_worker_keeps_no_finished_job(backend: BackendSetup) -> None:
    """A long-running worker's memory does not grow with the jobs it ran: once finished (and a
    retried one once given back), no job object, with its body, stays referenced."""
    q = connect(backend, max_attempts=2)
    q.submit_many([{"body": f"job {n}".encode()} for n in range(12)])
    failing = q.submit({"body": b"fail"})
    seen: list[weakref.ref[remotejob.Job]] = []

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        seen.append(weakref.ref(job))
        if job.id == failing and job.receive_count == 1:
            raise RuntimeError("retried once")
        return upper(job)

    worker = remotejob.Worker(q, handler, concurrency=4, burst=True, retry_delay=0, handle_signals=False)
    assert worker.run() == 14
    gc.collect()
    assert len(seen) == 14 and [ref for ref in seen if ref() is not None] == []


@pytest.mark.backends("embedded")  # an SQS long poll cannot be cut short: a stopping worker waits it out
def test_a_sigterm_stops_an_idle_embedded_worker_at_once(backend: BackendSetup) -> None:
    """README: SIGTERM stops a worker gracefully, and the embedded backend cuts its long poll
    short. ``run()`` on the main thread installs the handler; the signal comes from another
    thread once the worker is polling, and ``run()`` must return within half the poll (else the
    test stops the worker itself, so a failure never hangs)."""
    q, faults = connect_faulty(backend, wait_time=20)
    q.init()
    worker = remotejob.Worker(q, lambda job: None)
    previous = signal.getsignal(signal.SIGTERM)
    returned = threading.Event()
    what: list[str] = []

    def terminate() -> None:
        deadline = time.monotonic() + 30
        while faults.count("queue.receive") < 1 and time.monotonic() < deadline:
            returned.wait(0.05)
        if signal.getsignal(signal.SIGTERM) == worker._on_signal:
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGTERM)
            what.append("signalled")
        if not returned.wait(10):  # half the poll
            what.append("still running")
            worker.stop()

    helper = threading.Thread(target=terminate, daemon=True)
    helper.start()
    try:
        assert worker.run() == 0
    finally:
        returned.set()
        helper.join(30)
    assert what == ["signalled"]
    assert signal.getsignal(signal.SIGTERM) == previous, "run() left its signal handler installed"


@pytest.mark.backends("embedded")  # the worker's own loop, the same over any queue
def test_an_unexpected_error_handing_one_message_on_does_not_stop_the_worker(backend: BackendSetup) -> None:
    """A worker outlives any one message's trouble: an error nobody expected while handing a
    message on (here the dead-letter queue's send raising a plain RuntimeError for a refused
    message) is logged, the message comes back, and the jobs received with it still run."""
    q, faults = connect_faulty(backend, visibility_timeout=1, wait_time=1)
    q.init()
    q.message_queue.send(keys.queue_name(q.name, "pending"), "not a job")
    ids = q.submit_many([{"body": f"job {n}".encode()} for n in range(3)])
    faults.fail("queue.send", RuntimeError("a bug"), match=f"{q.name}-dead")

    assert remotejob.Worker(q, upper, burst=True, handle_signals=False).run() == 3

    assert [q.status(job_id).state for job_id in ids] == ["completed"] * 3
    assert [letter.body for letter in q.dead_letters()] == ["not a job"]  # refused again, then moved
