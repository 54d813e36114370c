"""Periodic jobs (issue 14): ``Queue.every()``, the workers' tick servers, ``remotejob schedule``.

Most tests run a schedule on a timeline two hours in the past: the schedule is created at
``base`` (a whole hour) through ``schedules.add(..., now=base)``, and each worker's check is a
:class:`~remotejob.schedules.TickServer` ``serve(now=...)`` at a chosen moment of that timeline,
so ticks, check windows and downtimes are exact and no test waits for a clock. Every tick is then
already due in real time, so a burst worker runs the jobs at once. The test of due times runs in
real time, with ticks a second or two ahead.

Checks use a server interval of 1 s: a window of ``(now - 300 s, now + 7 s]``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result

import remotejob
from remotejob import schedules
from remotejob.cli import main
from remotejob.errors import BackendUnavailable
from remotejob.schedules import Schedule, TickServer
from tests.conftest import BackendSetup, running, unique, wait_until
from tests.faults import Crash, Faults, FaultyQueues, FaultyStore

CHECK_S = 1.0
MINUTELY = "* * * * *"
Connect = Callable[..., remotejob.Queue]


def _system(backend: BackendSetup) -> tuple[Connect, list[str]]:
    """A fresh job system: a way to connect to it (as a process of its own, optionally through
    fault wrappers), and the CLI's connection options for it."""
    name, store, queues = unique("sch"), backend.store_url(), backend.queues_url()

    def connect(faults: Faults | None = None) -> remotejob.Queue:
        q = remotejob.connect(name, store=store, queues=queues, visibility_timeout=2, wait_time=1)
        if faults is None:
            return q
        return remotejob.connect(name, store=FaultyStore(q.object_store, faults),
                                 queues=FaultyQueues(q.message_queue, faults), visibility_timeout=2,
                                 wait_time=1)

    argv = ["--name", name, *(["--store", store] if store else []), *(["--queues", queues] if queues else [])]
    return connect, argv


def _base() -> float:
    """A whole hour two hours ago: the timeline's start."""
    return float((int(time.time()) // 3600) * 3600 - 7200)


def _minutes(base: float, *minutes: int) -> list[float]:
    return [base + 60 * m for m in minutes]


def _add(q: remotejob.Queue, base: float, name: str = "tick", cron: str = MINUTELY,
         **options: Any) -> Schedule:
    """A schedule created at ``base`` on the timeline."""
    return schedules.add(q.context, name, cron, options.pop("data", {"body": b"tick"}), now=base, **options)


def _ids(s: Schedule, ticks: Iterable[float]) -> set[str]:
    return {s.tick_id(t) for t in ticks}


def _existing(q: remotejob.Queue, ids: Iterable[str]) -> set[str]:
    """The job ids among ``ids`` that exist (a user's ``status()`` finds them)."""
    found = set()
    for job_id in ids:
        try:
            q.status(job_id)
        except remotejob.NotFound:
            continue
        found.add(job_id)
    return found


def _work(q: remotejob.Queue, check: Callable[[remotejob.Job], None] | None = None) -> Counter[str]:
    """Run a burst worker (it serves no schedule itself) until the queue is empty; return how
    often its handler ran each job."""
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        with lock:
            calls[job.id] += 1
        if check is not None:
            check(job)
        return [{"key": "output", "body": b"done"}]

    remotejob.Worker(q, handler, burst=True, schedule_check=None).run()
    return calls


# -- one job per tick ---------------------------------------------------------------------------


# moto's S3 conditional put is check-then-act, so concurrent creators may both win there: the
# once-per-tick property is proven on the stores whose create-once is atomic.
@pytest.mark.backends("embedded", "aws-real-s3")
def test_many_servers_make_one_job_per_tick(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    s = _add(q, base)
    servers = [TickServer(connect().context, CHECK_S) for _ in range(5)]
    barrier = threading.Barrier(len(servers))
    sent: list[int] = []

    def serve(server: TickServer) -> None:
        barrier.wait()
        sent.append(server.serve(now=base + 300))

    threads = [threading.Thread(target=serve, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    expected = _ids(s, _minutes(base, 1, 2, 3, 4, 5))
    assert len(sent) == 5 and sum(sent) == 5, f"each tick is sent once in all: {sent}"
    assert _work(q) == dict.fromkeys(expected, 1)
    assert {q.status(job_id).state for job_id in expected} == {"completed"}
    assert all(server.serve(now=base + 300) == 0 for server in servers)


# As above: once per tick is proven where create-once is atomic.
@pytest.mark.backends("embedded", "aws-real-s3")
def test_workers_serve_a_schedule_with_their_clocks(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    s = q.every("live", cron="* * * * * *", data={"body": b"x"})  # every second
    first = [s.tick_id(t) for t in s.next_ticks(3, after=datetime.fromtimestamp(s.updated, UTC))]
    calls: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(job: remotejob.Job) -> None:
        with lock:
            calls[job.id] += 1

    def ran() -> bool:
        with lock:
            return all(calls[job_id] for job_id in first)

    with contextlib.ExitStack() as stack:  # three workers, each with its clock thread
        for _ in range(3):
            stack.enter_context(running(remotejob.Worker(connect(), handler, schedule_check=0.5)))
        wait_until(ran, what=f"the ticks {first} to run")
    assert set(first) <= set(calls) and set(calls.values()) == {1}, calls
    assert all(job_id.startswith("live@") for job_id in calls)


@pytest.mark.backends("embedded", "aws")
def test_a_tick_whose_server_died_before_sending_is_sent_by_another(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    s = _add(q, base)
    faults = Faults()
    faults.crash("queue.send", when="before")
    with pytest.raises(Crash):
        TickServer(connect(faults).context, CHECK_S).serve(now=base + 60)
    first = s.tick_id(base + 60)
    assert q.status(first).state == "pending"  # created, never sent

    other = TickServer(q.context, CHECK_S)
    assert other.serve(now=base + 90) == 0, "a tick created 30 s ago may still be on its way"
    assert other.serve(now=base + 125) == 2  # the stuck tick (65 s old), and the next one

    assert _work(q) == dict.fromkeys(_ids(s, _minutes(base, 1, 2)), 1)
    assert q.status(first).state == "completed"


# The duplicate is dropped by the once-claim of the tick's first delivery, a create-once record:
# atomic on the embedded store and SeaweedFS, check-then-act on moto's S3.
@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_tick_sent_twice_runs_once(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    s = _add(q, base)
    first = s.tick_id(base + 60)
    crashed = Faults()
    crashed.crash("queue.send", when="before")
    with pytest.raises(Crash):
        TickServer(connect(crashed).context, CHECK_S).serve(now=base + 60)
    # a server sends the stuck tick but cannot mark it sent; another then sends it again
    unmarked, later = Faults(), Faults()
    unmarked.fail("store.put", BackendUnavailable("the store is down"),
                  match=lambda key, *_, **kw: key.endswith("/queued") and not kw.get("if_absent"))
    TickServer(connect(unmarked).context, CHECK_S).serve(now=base + 125)
    TickServer(connect(later).context, CHECK_S).serve(now=base + 125)

    def sends(faults: Faults) -> int:
        return faults.count("queue.send", match=lambda _queue, body, **_: f'"job":"{first}"' in body)

    assert (sends(unmarked), sends(later)) == (1, 1), "the tick's message was sent twice"
    assert _work(q) == dict.fromkeys(_ids(s, _minutes(base, 1, 2)), 1)
    assert q.status(first).state == "completed"


# -- missed ticks -------------------------------------------------------------------------------


@pytest.mark.parametrize(("missed", "late"), [("latest", [6]), ("all", [2, 3, 4, 5, 6]), ("skip", [])])
@pytest.mark.backends("embedded")  # the policies are arithmetic over create-once records
def test_missed_ticks_follow_the_policy(backend: BackendSetup, missed: str, late: list[int]) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    s = _add(q, base, missed=missed)
    assert TickServer(q.context, CHECK_S).serve(now=base + 60) == 1
    # every worker stops for 10 minutes; one starts again at minute 11: the ticks after minute
    # 6 (5 minutes of grace) run under every policy, the earlier ones as the policy says
    restarted = TickServer(connect().context, CHECK_S)
    recent = [7, 8, 9, 10, 11]
    assert restarted.serve(now=base + 11 * 60) == len(late) + len(recent)

    expected = _ids(s, _minutes(base, 1, *late, *recent))
    assert _existing(q, _ids(s, _minutes(base, *range(1, 12)))) == expected
    assert TickServer(connect().context, CHECK_S).serve(now=base + 11 * 60) == 0, "a missed tick runs once"
    assert _work(q) == dict.fromkeys(expected, 1)


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_changed_schedule_runs_no_earlier_tick_and_a_removed_one_none(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    s = _add(q, base)
    changed = _add(q, base + 600, cron="*/2 * * * *")  # every even minute from minute 10 on
    assert (changed.created, changed.updated) == (base, base + 600)

    assert TickServer(q.context, CHECK_S).serve(now=base + 20 * 60) == 4
    # the latest missed tick (minute 14) and those of the last 5 minutes (16, 18, 20); none of
    # the old schedule's, nor before the change
    assert _existing(q, _ids(s, _minutes(base, *range(0, 22)))) == _ids(s, _minutes(base, 14, 16, 18, 20))

    assert q.unschedule("tick") is True
    assert TickServer(q.context, CHECK_S).serve(now=base + 30 * 60) == 0
    assert _existing(q, _ids(s, _minutes(base, *range(21, 31)))) == set()


# -- due times and costs ------------------------------------------------------------------------


@pytest.mark.backends("embedded", "aws-real-s3")
def test_no_tick_starts_before_it_is_due(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    q.context.max_delay_s = 6  # the check window reaches 6 s ahead
    s = q.every("soon", cron="*/2 * * * * *", data={"body": b"x"})  # every 2 seconds
    now = time.time()
    assert TickServer(q.context, CHECK_S).serve(now=now) >= 3
    ticks = [t.timestamp() for t in s.next_ticks(10, after=datetime.fromtimestamp(s.updated, UTC))
             if t.timestamp() <= now + 6]
    ahead = 0
    for tick in ticks:
        if tick > time.time() + 1:  # still ahead while its status is read
            st = q.status(s.tick_id(tick))
            assert (st.state, st.due) == ("scheduled", tick)
            ahead += 1
    assert ahead, "some ticks were ahead of now"

    worker = remotejob.Worker(q, lambda job: None, schedule_check=None)
    with running(worker):
        done = wait_until(lambda: all(q.status(s.tick_id(t)).done for t in ticks), what="every tick ran")
    assert done
    for tick in ticks:
        st = q.status(s.tick_id(tick))
        assert st.state == "completed" and st.started is not None
        assert st.started >= tick, f"tick {s.tick_id(tick)} started {tick - st.started:.3f} s early"


@pytest.mark.backends("embedded", "aws")
def test_a_server_reads_each_tick_once(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    _add(q, base)
    faults = Faults()
    server = TickServer(connect(faults).context, CHECK_S)
    assert server.serve(now=base + 60) == 1

    def requests(now: float) -> dict[str, int]:
        before = faults.ops(), faults.count("store.get", "jobs/"), faults.count("store.put", "jobs/")
        sent = server.serve(now=now)
        after = faults.ops(), faults.count("store.get", "jobs/"), faults.count("store.put", "jobs/")
        return {"sent": sent, "list": after[0]["store.list"] - before[0]["store.list"],
                "get schedule": faults.count("store.get", "schedules/"),
                "get record": after[1] - before[1], "put record": after[2] - before[2],
                "send": after[0]["queue.send"] - before[0]["queue.send"]}

    # a check with nothing new: one LIST; the schedule (unchanged) and the tick are not read again
    assert requests(base + 62) == {"sent": 0, "list": 1, "get schedule": 1, "get record": 0,
                                   "put record": 0, "send": 0}
    # a new tick: one GET (not there), one PUT to create it, one send, one PUT to mark it sent
    assert requests(base + 120) == {"sent": 1, "list": 1, "get schedule": 1, "get record": 1,
                                    "put record": 2, "send": 1}
    # another server sees each tick once: one GET each, then nothing
    other_faults = Faults()
    other = TickServer(connect(other_faults).context, CHECK_S)
    assert other.serve(now=base + 120) == 0
    assert other.serve(now=base + 121) == 0
    assert other_faults.count("store.get", "jobs/") == 2
    assert other_faults.count("store.put", "jobs/") == other_faults.count("queue.send") == 0


# -- the API --------------------------------------------------------------------------------------


@pytest.mark.backends("embedded", "aws-real-s3")
def test_every_replaces_lists_and_removes(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    s = q.every("report", cron="0 2 * * *", data={"body": b"x", "kind": "daily"}, missed="skip",
                time_limit=30, priority="high")
    assert (s.name, s.cron, s.missed, s.meta, s.time_limit, s.priority) == (
        "report", "0 2 * * *", "skip", {"kind": "daily"}, 30.0, "high")
    assert q.schedules() == [s] and connect().schedule("report") == s
    jan1 = datetime(2026, 1, 1, tzinfo=UTC)
    assert s.next_ticks(2, after=jan1) == [jan1.replace(hour=2), jan1.replace(day=2, hour=2)]
    assert s.tick_id(jan1.replace(hour=2)) == "report@20260101T020000Z"

    again = q.every("report", cron="0 2 * * *", data={"body": b"x", "kind": "daily"}, missed="skip",
                    time_limit=30, priority="high")
    assert again == s, "an identical schedule is left as it was"
    changed = q.every("report", cron="30 2 * * *", data={"body": b"y"})
    assert (changed.cron, changed.created, changed.meta, changed.missed) == (
        "30 2 * * *", s.created, {}, "latest")
    assert changed.updated >= s.updated
    assert q.schedules() == [changed]

    assert q.unschedule("report") is True
    assert q.unschedule("report") is False
    assert q.schedules() == []
    with pytest.raises(remotejob.NotFound, match="report"):
        q.schedule("report")


@pytest.mark.backends("embedded", "aws-real-s3")
def test_a_tick_carries_the_schedules_input_metadata_and_priority(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    base = _base()
    big = os.urandom(200 * 1024)  # beyond what a schedule keeps inline: stored once, copied per tick
    s_big = _add(q, base, "big", data={"body": big, "who": "me"}, time_limit=60)
    s_small = _add(q, base, "small", data={"body": b"small input"}, priority="high")
    assert q.retrieve("in", "big@input").read() == big
    assert TickServer(q.context, CHECK_S).serve(now=base + 60) == 2
    big_id, small_id = s_big.tick_id(base + 60), s_small.tick_id(base + 60)
    assert q.status(small_id).priority == "high"
    seen: dict[str, tuple[bytes, dict[str, str]]] = {}

    def check(job: remotejob.Job) -> None:
        with job.open() as stream:
            seen[job.id] = (stream.read(), dict(job.metadata))

    assert _work(q, check) == {big_id: 1, small_id: 1}
    assert seen[big_id] == (big, {"who": "me"})
    assert seen[small_id][0] == b"small input"

    assert q.unschedule("big") is True
    with pytest.raises(remotejob.NotFound):
        q.retrieve("in", "big@input")
    assert q.status(big_id).state == "completed"


@pytest.mark.backends("embedded")  # validation happens before any request
def test_invalid_schedules_are_refused_with_the_fix(backend: BackendSetup) -> None:
    connect, _ = _system(backend)
    q = connect()
    data = {"body": b"x"}
    for cron in ("0 25 * * *", "@daily", "* * *", "0 0 31 2 *"):
        with pytest.raises(ValueError, match="cron expression") as info:
            q.every("x", cron=cron, data=data)
        assert repr(cron) in str(info.value)
    for name in ("", "a.b", "a/b", "nightly report", "x" * 81, "é"):
        with pytest.raises(ValueError, match="schedule name .* use 1-80 letters"):
            q.every(name, cron=MINUTELY, data=data)
    with pytest.raises(ValueError, match="missed must be one of latest, all, skip"):
        q.every("x", cron=MINUTELY, data=data, missed="sometimes")
    with pytest.raises(ValueError, match="drop 'key'"):
        q.every("x", cron=MINUTELY, data={"body": b"x", "key": "mine"})
    with pytest.raises(remotejob.UnknownStatus):
        q.every("x", cron=MINUTELY, data=data, status="nope")
    with pytest.raises(ValueError, match="priority"):
        q.every("x", cron=MINUTELY, data=data, priority="urgent")
    with pytest.raises(ValueError, match="time_limit"):
        q.every("x", cron=MINUTELY, data=data, time_limit=0)
    assert q.schedules() == [], "nothing was written"
    s = q.every("x" * 80, cron=MINUTELY)  # the longest name; no data: an empty input
    with pytest.raises(ValueError, match="aware"):
        s.next_ticks(1, after=datetime(2026, 1, 1))  # noqa: DTZ001 - the naive datetime refused


# -- the command line ---------------------------------------------------------------------------


def _cli(argv: list[str], *args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, [*argv, *args], input=stdin)


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, \
        f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}\n{result.exception!r}"
    return result


def _error_line(result: Result) -> str:
    assert result.exit_code == 2, f"exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("remotejob: error:"), result.stderr
    return lines[0]


# The command line passes its options to the API, proven on every setting above.
@pytest.mark.backends("embedded", "aws-real-s3")
def test_cli_add_ls_show_rm(backend: BackendSetup, tmp_path: Any) -> None:
    connect, argv = _system(backend)
    (tmp_path / "report.json").write_text('{"days": 7}')

    added = _ok(_cli(argv, "schedule", "add", "nightly", "--cron", "0 2 * * *", str(tmp_path / "report.json"),
                     "--meta", "kind=daily", "--missed", "skip", "--priority", "low", "--json"))
    doc = json.loads(added.stdout)
    assert (doc["name"], doc["cron"], doc["missed"], doc["meta"], doc["priority"]) == (
        "nightly", "0 2 * * *", "skip", {"kind": "daily", "filename": "report.json"}, "low")
    assert doc["next"][0]["time"].endswith("T02:00:00Z")
    _ok(_cli(argv, "schedule", "add", "hourly", "--cron", "0 * * * *", "-", stdin=b"from stdin"))
    assert connect().schedule("hourly").input_size == len(b"from stdin")

    listed = [json.loads(line) for line in _ok(_cli(argv, "schedule", "ls", "--json")).stdout.splitlines()]
    assert [d["name"] for d in listed] == ["hourly", "nightly"]
    table = _ok(_cli(argv, "schedule", "ls")).stdout
    assert "nightly" in table and "0 2 * * *" in table

    shown = json.loads(_ok(_cli(argv, "schedule", "show", "nightly", "-n", "3", "--json")).stdout)
    assert [t["job"] for t in shown["next"]] == [
        f"nightly@{datetime.fromisoformat(t['time']):%Y%m%dT%H%M%SZ}" for t in shown["next"]]
    assert len(shown["next"]) == 3
    assert "nightly@" in _ok(_cli(argv, "schedule", "show", "nightly")).stdout

    bad = _cli(argv, "schedule", "add", "x", "--cron", "0 25 * * *")
    assert "cron expression '0 25 * * *'" in _error_line(bad)
    assert _ok(_cli(argv, "schedule", "rm", "nightly")).stdout.strip() == "removed nightly"
    assert "no schedule nightly" in _error_line(_cli(argv, "schedule", "rm", "nightly"))
    assert "no schedule 'nightly'" in _error_line(_cli(argv, "schedule", "show", "nightly"))
    assert [s.name for s in connect().schedules()] == ["hourly"]
