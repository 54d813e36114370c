"""Delayed and scheduled jobs (``submit(..., delay=/at=)``): a job never starts before it is due,
jobs start in due order, ``status()`` says ``scheduled`` until then, a cancel holds, and a job
parked in the store (due later than the queue can delay a message) runs once however often it is
dispatched: by two workers at once, by a dispatch whose timer could not be deleted, by a worker
that died between sending and deleting.

The queue's own delay limit (15 minutes on SQS) is lowered to a second or two through
``q.context.max_delay_s``, so the parking path runs in seconds; the worker's clock checks every
0.1-0.2 s.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import remotejob
from remotejob.cli import main
from remotejob.errors import BackendUnavailable
from tests.conftest import BackendSetup, running, unique, wait_until
from tests.faults import Faults, FaultyQueues, FaultyStore

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

KEY = "k1:" + "d" * 32


class Recorder:
    """A handler that notes when each job started, and how often."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.order: list[str] = []
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, job: remotejob.Job) -> list[dict[str, Any]]:
        now = time.time()
        with self.lock:
            self.started.setdefault(job.id, now)
            self.order.append(job.id)
            self.calls[job.id] += 1
        return [{"key": "out", "body": job.open().read()}]


def _connect(backend: BackendSetup, max_delay_s: int = 1, **options: Any) -> remotejob.Queue:
    options.setdefault("visibility_timeout", 5)
    options.setdefault("wait_time", 1)
    q: remotejob.Queue = backend.connect(**options)
    q.context.max_delay_s = max_delay_s
    return q


def _worker(q: remotejob.Queue, handler: Recorder, **options: Any) -> remotejob.Worker:
    options.setdefault("schedule_check", 0.2)
    return remotejob.Worker(q, handler, handle_signals=False, **options)


def _parked(q: remotejob.Queue) -> list[str]:
    return [info.key for info in q.object_store.list("timers/")]


def test_scheduled_jobs_say_so_and_never_start_before_they_are_due(backend: BackendSetup) -> None:
    q = _connect(backend, max_delay_s=4)
    q.store("in", {"body": b"stored", "key": (stored := unique("s"))})
    before = time.time()
    short = q.submit({"body": b"short"}, delay=3.0)                      # held by the queue itself
    parked = q.submit({"body": b"parked"}, delay=timedelta(seconds=4.5))  # parked in the store
    keyed = q.submit({"body": b"keyed", "key": unique("k")},
                     at=datetime.now(UTC) + timedelta(seconds=3))
    many = q.submit_many([{"body": b"m1"}, {"body": b"m2"}], delay=3.0)
    triggered = q.trigger(stored, delay=3.0)
    ids = [short, parked, keyed, *many, triggered]
    dues = {}
    for job_id in ids:
        st = q.status(job_id)
        assert st.due is not None and before < st.due < time.time() + 4.5
        if time.time() < st.due:  # read before it was due (a loaded machine may take longer)
            assert st.state == "scheduled", (job_id, st)
        dues[job_id] = st.due
    assert len(_parked(q)) == 1  # the parked submit is one timer; the others are in their queue

    recorder = Recorder()
    with running(_worker(q, recorder, concurrency=4)):
        for job_id in ids:
            assert q.wait(job_id, timeout=30).state == "completed"
    for job_id in ids:
        assert recorder.started[job_id] >= dues[job_id], f"{job_id} started before it was due"
        assert recorder.calls[job_id] == 1
    assert q.retrieve("out", f"{parked}/out").read() == b"parked"
    assert _parked(q) == []


# The embedded queue only: SQS gives what is visible in no particular order, and on a loaded CI
# machine (moto and SeaweedFS beside three other test processes on two cores) the AWS setting
# took c before b twice, b and c being 2.5 s apart. Nothing promises an order among jobs that are
# due at once; never-early holds on every setting (the test above).
@pytest.mark.backends("embedded")
def test_jobs_start_in_the_order_they_are_due(backend: BackendSetup) -> None:
    q = _connect(backend, max_delay_s=3)
    base = datetime.now(UTC) + timedelta(seconds=1)
    due = {"d": 5.0, "a": None, "c": 3.5, "b": 2.0}  # d and c are parked at first, b waits in the queue
    ids = {name: q.submit({"body": name.encode(), "key": unique(name)},
                          at=None if offset is None else base + timedelta(seconds=offset))
           for name, offset in due.items()}
    recorder = Recorder()
    with running(_worker(q, recorder, concurrency=1, prefetch=0)):
        for job_id in ids.values():
            q.wait(job_id, timeout=30)
    by_id = {job_id: name for name, job_id in ids.items()}
    assert [by_id[job_id] for job_id in recorder.order] == ["a", "b", "c", "d"]


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_cancelled_scheduled_job_never_runs(backend: BackendSetup) -> None:
    q = _connect(backend, max_delay_s=2)
    in_queue = q.submit({"body": b"doomed"}, delay=1.0)
    parked = q.submit({"body": b"doomed too"}, delay=3.0)
    later = q.submit({"body": b"later"}, delay=4.0)  # due after both: once it ran, they had their turn
    for doomed in (in_queue, parked):
        assert q.cancel(doomed, "not needed").state == "cancelled"
    recorder = Recorder()
    with running(_worker(q, recorder)):
        q.wait(later, timeout=30)
    for doomed in (in_queue, parked):
        assert doomed not in recorder.calls
        st = q.status(doomed)
        assert (st.state, st.error) == ("cancelled", "not needed")


def test_a_year_long_delay_is_parked_in_one_object_and_costs_no_send(backend: BackendSetup) -> None:
    faults = Faults()
    q = backend.connect(store=FaultyStore(backend.make_store(), faults),
                        queues=FaultyQueues(backend.make_queues(), faults), wait_time=1)
    q.init()
    before = faults.ops()
    year = timedelta(days=365)
    ids = q.submit_many([{"body": f"job {i}".encode()} for i in range(25)], delay=year)
    ops = faults.ops() - before
    assert ops["store.put"] == 2  # the batch's manifest and one timer holding all 25 messages
    assert not any(op.startswith("queue.") for op in ops), ops
    assert all(q.status(job_id).state == "scheduled" for job_id in ids)
    assert abs(q.status(ids[0]).due - (time.time() + year.total_seconds())) < 60  # type: ignore[operator]
    recorder = Recorder()
    with running(_worker(q, recorder, schedule_check=0.1)) as _:
        wait_until(lambda: faults.count("store.list", match="timers/") >= 2, what="two clock checks")
    assert len(_parked(q)) == 1 and not recorder.calls  # not due: it stays parked


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_dispatch_repeated_because_its_timer_stayed_runs_the_job_once(backend: BackendSetup) -> None:
    faults = Faults()
    q = _connect(backend, store=FaultyStore(backend.make_store(), faults),
                 queues=FaultyQueues(backend.make_queues(), faults))
    job = q.submit({"body": b"once"}, delay=1.5)
    faults.fail("store.delete", BackendUnavailable("timer delete refused"), match="timers/", times=2)
    recorder = Recorder()
    with running(_worker(q, recorder, schedule_check=0.1)):
        q.wait(job, timeout=30)
        wait_until(lambda: not _parked(q), what="the timer to be deleted at last")
        sent = faults.count("queue.send_batch", match=q.queue_name("pending"))
        assert sent == 3, "each dispatch whose delete failed sent the job again"
        wait_until(lambda: _empty(q), what="the extra copies to be dropped")
    assert recorder.calls[job] == 1
    assert q.status(job).state == "completed"


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_worker_dying_between_sending_and_deleting_a_timer_loses_nothing(backend: BackendSetup) -> None:
    faults = Faults()
    store, queues = FaultyStore(backend.make_store(), faults), FaultyQueues(backend.make_queues(), faults)
    q = _connect(backend, store=store, queues=queues)
    jobs = q.submit_many([{"body": f"j{i}".encode()} for i in range(3)], delay=1.2)
    faults.crash("queue.send_batch", when="after", match=q.queue_name("pending"))
    recorder = Recorder()
    dying = _worker(q, recorder, schedule_check=0.1)
    with running(dying):
        wait_until(lambda: faults.fired("queue.send_batch"), what="the crash after the send")
    faults.revive()
    assert len(_parked(q)) == 1  # it died before deleting the timer
    fresh = _connect(backend, store=store, queues=queues)
    with running(_worker(fresh, recorder, schedule_check=0.1)):
        for job in jobs:
            assert fresh.wait(job, timeout=30).state == "completed"
        wait_until(lambda: _empty(fresh), what="the duplicate copies to be dropped")
    assert all(recorder.calls[job] == 1 for job in jobs), recorder.calls


@pytest.mark.backends("embedded", "aws-real-s3")
def test_many_workers_dispatching_at_once_run_each_parked_job_once(backend: BackendSetup) -> None:
    q = _connect(backend, max_delay_s=1)
    ids = q.submit_many([{"body": f"p{i}".encode()} for i in range(6)], delay=1.5)  # one timer
    ids += [q.submit({"body": f"s{i}".encode()}, delay=1.5) for i in range(6)]  # six: sent 8 at a time
    assert len(_parked(q)) == 7
    recorder = Recorder()
    workers = [_worker(_connect(backend, store=q.object_store, queues=q.message_queue, name=q.name),
                       recorder, schedule_check=0.05, concurrency=2) for _ in range(3)]
    with running(workers[0]), running(workers[1]), running(workers[2]):
        for job_id in ids:
            assert q.wait(job_id, timeout=30).state == "completed"
        wait_until(lambda: _empty(q), what="every copy to be taken")
    assert sorted(recorder.calls) == sorted(ids)
    assert set(recorder.calls.values()) == {1}


@pytest.mark.backends("embedded")  # signing is above the protocols
def test_parked_jobs_keep_their_signature_checks(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", KEY)
    q = _connect(backend, max_delay_s=1)
    forged = q.submit({"body": b"pay 10"}, delay=1.5)
    [timer] = _parked(q)
    doc = json.loads(q.object_store.get(timer).read())
    doc["messages"] = [m.replace(base64.b64encode(b"pay 10").decode(), base64.b64encode(b"pay 99").decode())
                       for m in doc["messages"]]
    q.object_store.put(timer, json.dumps(doc).encode())  # someone with write access to the store
    good = q.submit({"body": b"signed"}, delay=2)
    recorder = Recorder()
    with running(_worker(q, recorder, schedule_check=0.1)):
        assert q.wait(good, timeout=30).state == "completed"
    assert forged not in recorder.calls
    assert _parked(q) == [timer]  # refused, and left for an operator to look at
    assert q.rejected == Counter()


@pytest.mark.backends("embedded", "aws")
def test_delays_are_checked_before_anything_is_written(backend: BackendSetup) -> None:
    q = _connect(backend)
    with pytest.raises(ValueError, match="naive datetime"):
        q.submit({"body": b"x"}, at=datetime(2030, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError, match="not both"):
        q.submit({"body": b"x"}, delay=5, at=datetime.now(UTC))
    with pytest.raises(ValueError, match="delay must be"):
        q.submit({"body": b"x"}, delay=-1)
    with pytest.raises(TypeError, match="delay must be"):
        q.submit({"body": b"x"}, delay="2h")  # type: ignore[arg-type]
    assert list(q.object_store.list("")) == []
    # a time in the past means at once
    job = q.submit({"body": b"now"}, at=datetime.now(UTC) - timedelta(hours=1))
    assert q.status(job).state == "pending"


def _empty(q: remotejob.Queue) -> bool:
    depth = q.message_queue.depth(q.queue_name("pending"))
    return depth.waiting == depth.in_flight == depth.delayed == 0



# -- the command line: submit's options pass through to submit() (proven above) ---------------


@pytest.mark.backends("embedded")
def test_cli_submit_takes_delay_at_priority_and_dedup_key(backend: BackendSetup, tmp_path: Path) -> None:
    q = _connect(backend)
    argv = ["--name", q.name]  # the embedded default, as q
    report = tmp_path / "report.json"
    report.write_text("{}")

    def submit(*args: str) -> Result:
        return CliRunner().invoke(main, [*argv, "submit", str(report), *args])

    before = time.time()
    delayed = submit("--delay", "2h")
    assert delayed.exit_code == 0, delayed.output
    st = q.status(delayed.stdout.strip())
    assert st.state == "scheduled" and before + 7200 <= (st.due or 0) <= time.time() + 7200
    at = submit("--at", "2030-01-02T03:04:05Z")
    assert q.status(at.stdout.strip()).due == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    high = submit("--priority", "high")
    assert q.status(high.stdout.strip()).priority == "high"
    first, again = submit("--dedup-key", "r1"), submit("--dedup-key", "r1")
    assert first.stdout.strip() and first.stdout == again.stdout

    naive = submit("--at", "2030-01-02T03:04")
    assert naive.exit_code == 2 and "has no zone" in naive.stderr
    bogus = submit("--delay", "soon")
    assert bogus.exit_code == 2 and "90s, 15m, 2h" in bogus.stderr
    both = submit("--delay", "1h", "--at", "2030-01-02T03:04Z")
    assert both.exit_code == 2 and "not both" in both.stderr
    two = CliRunner().invoke(main, [*argv, "submit", str(report), str(report), "--dedup-key", "k"])
    assert two.exit_code == 2 and "one FILE" in two.stderr
