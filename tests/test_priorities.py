"""Job priorities on every backend: ``submit(..., priority="high"|"normal"|"low")`` puts a job in
its status's level queue (``<name>-<status>-high`` / ``-low``); a worker serves the levels by
weighted rounds while busy (high 6 : normal 3 : low 1, see ``remotejob/levels.py``) and by one
long poll at a time while idle, so an idle worker makes no more receives than with one queue.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from statistics import mean
from typing import Any

import pytest
from click.testing import CliRunner

import remotejob
from remotejob import keys
from remotejob.backends.base import Message, MessageQueue
from remotejob.cli.app import main as cli
from remotejob.metrics import queue_collector
from remotejob.ui.index import Index
from tests import test_iam
from tests.conftest import BackendSetup, unique, wait_until
from tests.faults import Faults, FaultyQueues, FaultyStore
from tests.test_iam import JobSystem

LEVEL_NAMES = ("high", "normal", "low")
LOG_MAX = 40
"""Receives after which a test that waits for an idle worker gives up on it."""


class Watched(FaultyQueues):
    """Queues that log every receive as ``(queue, wait_s, messages got)``, note whether two
    receives ever overlapped, and call ``after_receive`` with the log after each one."""

    def __init__(self, inner: MessageQueue, faults: Faults) -> None:
        super().__init__(inner, faults)
        self.log: list[tuple[str, float, int]] = []
        self.after_receive: Callable[[list[tuple[str, float, int]]], None] | None = None
        self.overlapped = False
        self._active = 0
        self._lock = threading.Lock()

    def receive(self, queue: str, max_messages: int = 1, wait_s: float = 0,
                visibility_s: int | None = None, cancel: threading.Event | None = None) -> list[Message]:
        with self._lock:
            self._active += 1
            self.overlapped |= self._active > 1
        try:
            got = super().receive(queue, max_messages, wait_s, visibility_s, cancel)
        finally:
            with self._lock:
                self._active -= 1
        with self._lock:
            self.log.append((queue, wait_s, len(got)))
            log = list(self.log)
        if self.after_receive is not None:
            self.after_receive(log)
        return got


def connect(backend: BackendSetup, **options: Any) -> tuple[remotejob.Queue, Faults, Watched]:
    faults = Faults()
    queues = Watched(backend.make_queues(), faults)
    options.setdefault("visibility_timeout", 2)
    options.setdefault("wait_time", 1)
    q = remotejob.connect(unique("q"), store=FaultyStore(backend.make_store(), faults), queues=queues,
                          **options)
    return q, faults, queues


def level_queue(q: remotejob.Queue, status: str, level: str) -> str:
    return keys.queue_name(q.name, status, None if level == "normal" else level)


def waiting(q: remotejob.Queue, queue: str) -> int:
    depth = q.message_queue.depth(queue)
    return depth.waiting + depth.in_flight + depth.delayed


def only(queue: str) -> Callable[..., bool]:
    """A Faults match for calls on exactly this queue (not its level queues)."""
    return lambda name, *args, **kwargs: name == queue


# -- ordering under saturation ---------------------------------------------------------------------


def test_high_runs_first_under_saturation_and_low_is_not_starved(backend: BackendSetup) -> None:
    q, _, _ = connect(backend)
    n = 12
    for level in ("low", "normal", "high"):  # the worst order: low waited longest
        q.submit_many([{"body": b"x", "level": level} for _ in range(n)], priority=level)
    ran: list[str] = []

    def handler(job: remotejob.Job) -> None:
        ran.append(job.metadata["level"])

    # one job at a time, nothing prefetched: each receive takes one message
    taken = q.work(handler, concurrency=1, prefetch=0, burst=True, handle_signals=False)

    assert taken == 3 * n and sorted(ran) == sorted(LEVEL_NAMES * n)
    position = {level: mean(i for i, got in enumerate(ran) if got == level) for level in LEVEL_NAMES}
    assert position["high"] < position["normal"] < position["low"], ran
    # While every level has jobs, each ten receives take 6 high, 3 normal, 1 low...
    assert [ran[:10].count(level) for level in LEVEL_NAMES] == [6, 3, 1], ran
    assert [ran[:20].count(level) for level in LEVEL_NAMES] == [12, 6, 2], ran
    # ... so high is done long before the rest, yet low ran before high was drained.
    last_high = max(i for i, got in enumerate(ran) if got == "high")
    assert last_high == 19 and "low" in ran[:last_high], ran


# -- the life of a job of each level ---------------------------------------------------------------


@pytest.mark.backends("aws-real-s3")  # the queue a receipt belongs to matters on SQS
def test_a_job_lives_and_dies_in_its_own_level_queue(backend: BackendSetup) -> None:
    q, faults, _ = connect(backend, max_attempts=2)
    failing = {"on": True}
    runs: dict[tuple[str, str], int] = {}

    def handler(job: remotejob.Job) -> Any:
        plan, level = job.metadata["plan"], job.metadata["level"]
        runs[plan, level] = runs.get((plan, level), 0) + 1
        if plan == "retried" and job.receive_count == 1:
            raise RuntimeError("first attempt fails")
        if plan in ("dead", "retry-me") and failing["on"]:
            raise RuntimeError("always fails")
        if plan == "pipeline":  # held past a heartbeat (then recorded inprogress), then handed on
            own = level_queue(q, "pending", level)
            wait_until(lambda: faults.count("queue.change_visibility_batch", only(own)) > 0
                       and q.status(job.id).state == "inprogress", what="a heartbeat on the job's own queue")
            job.complete(assets=[{"key": "output", "body": b"stage one"}], next_status="inprogress")
        return None

    plans = ("retried", "dead", "retry-me", "pipeline")
    ids = {(plan, level): q.submit({"body": b"x", "plan": plan, "level": level}, priority=level)
           for plan in plans for level in ("high", "low")}
    q.work(handler, concurrency=8, burst=True, retry_delay=0, dead_letter_check=None, handle_signals=False)

    letters = {letter.job: letter for letter in q.dead_letters()}
    assert set(letters) == {ids[plan, level] for plan in ("dead", "retry-me") for level in ("high", "low")}
    for level in ("high", "low"):
        st = q.status(ids["retried", level])
        assert (st.state, st.attempt) == ("completed", 2)
        assert q.status(ids["dead", level]).state == "failed"
        # dead-lettered from its own queue
        assert letters[ids["dead", level]].source == level_queue(q, "pending", level)
        # The hand-on kept its priority: it waits in the next stage's level queue.
        assert waiting(q, level_queue(q, "inprogress", level)) == 1
        handed = q.status(ids["pipeline", level])
        assert (handed.status, handed.priority) == ("inprogress", level)
    assert waiting(q, level_queue(q, "inprogress", "normal")) == 0

    # Redrive and retry send the failed jobs back to their levels; now they succeed.
    failing["on"] = False
    assert q.redrive(jobs=[ids["dead", "high"], ids["dead", "low"]]) == 2
    for level in ("high", "low"):
        assert q.retry(ids["retry-me", level]).priority == level
        assert waiting(q, level_queue(q, "pending", level)) == 2
    assert waiting(q, level_queue(q, "pending", "normal")) == 0
    q.work(handler, concurrency=4, burst=True, dead_letter_check=None, handle_signals=False)
    q.work(lambda job: None, status="inprogress", burst=True, dead_letter_check=None, handle_signals=False)

    for key, job_id in ids.items():
        assert q.status(job_id).state == "completed", key
    assert runs == {(plan, level): {"retried": 2, "dead": 3, "retry-me": 3, "pipeline": 1}[plan]
                    for plan in plans for level in ("high", "low")}
    for status in ("pending", "inprogress"):
        for level in ("high", "low"):
            assert waiting(q, level_queue(q, status, level)) == 0
            assert faults.count("queue.delete_batch", only(level_queue(q, status, level))) > 0
        # No delete, release or heartbeat ever went to the normal queue: each job's went to its own.
        for op in ("queue.delete", "queue.delete_batch", "queue.change_visibility",
                   "queue.change_visibility_batch"):
            assert faults.count(op, only(level_queue(q, status, "normal"))) == 0, (status, op)


# -- idle cost -------------------------------------------------------------------------------------


def empty_long_polls(log: list[tuple[str, float, int]]) -> int:
    """How many receives at the end of ``log`` were long polls that brought nothing."""
    count = 0
    for _, wait, got in reversed(log):
        if not (wait > 0 and got == 0):
            break
        count += 1
    return count


@pytest.mark.backends("embedded", "aws")
def test_an_idle_worker_makes_one_long_poll_at_a_time_over_its_levels(backend: BackendSetup) -> None:
    q, _, queues = connect(backend, wait_time=1)
    for level in LEVEL_NAMES:
        q.submit({"body": b"x"}, priority=level)
    worker = remotejob.Worker(q, lambda job: None, concurrency=1, handle_signals=False,
                              dead_letter_check=None)
    marks: dict[str, int] = {}

    def script(log: list[tuple[str, float, int]]) -> None:
        """Idle for 2 polls; then a low job arrives; once it is taken, idle for 3 polls: stop."""
        if len(log) > LOG_MAX:  # it never idles as it should: stop, and fail below
            worker.stop()
        elif "idle" not in marks and empty_long_polls(log) == 2:
            marks["idle"] = len(log) - 2
            q.submit({"body": b"late"}, priority="low")
            marks["sent"] = len(log)
        elif "sent" in marks and "taken" not in marks and log[-1][2]:
            marks["taken"] = len(log)
        elif "taken" in marks and empty_long_polls(log) == 3:
            marks["stop"] = len(log)
            worker.stop()

    queues.after_receive = script
    assert worker.run() == 4
    log = queues.log
    assert "stop" in marks, log
    assert not queues.overlapped  # one receive at a time
    first_idle, last_idle = log[marks["idle"]:marks["sent"]], log[marks["stop"] - 3:]
    # Idle: nothing but long polls of the full wait, one after another (one receive per wait, as
    # with one queue), the levels taken in turn...
    assert [(wait, got) for _, wait, got in first_idle + last_idle] == [(1, 0)] * 5, log
    assert {name for name, _, _ in last_idle} == {level_queue(q, "pending", lv) for lv in LEVEL_NAMES}
    # ... so a job arriving in any level is taken within as many polls as there are levels.
    assert marks["taken"] - marks["sent"] <= len(LEVEL_NAMES), log


@pytest.mark.backends("embedded", "aws")
def test_a_worker_without_priority_queues_receives_as_before(backend: BackendSetup) -> None:
    q, faults, queues = connect(backend, wait_time=1)
    q.submit_many([{"body": b"x"} for _ in range(3)])
    worker = remotejob.Worker(q, lambda job: None, concurrency=1, prefetch=0, handle_signals=False,
                              dead_letter_check=None)
    queues.after_receive = lambda log: (worker.stop() if empty_long_polls(log) == 4 or len(log) > LOG_MAX
                                        else None)

    assert worker.run() == 3

    # every receive is a long poll of the status's own queue, the last four brought nothing
    normal = level_queue(q, "pending", "normal")
    assert all((name, wait) == (normal, 1) for name, wait, _ in queues.log), queues.log
    assert [got for _, _, got in queues.log] == [1, 1, 1, 0, 0, 0, 0]
    assert not queues.overlapped
    # the only cost of priorities: one look per level for its queue at the first receive (and
    # then once a minute)
    assert faults.count("queue.depth") == 2


# -- where users look ------------------------------------------------------------------------------


@pytest.mark.backends("embedded", "aws")
def test_queue_depths_show_the_levels_where_users_look(backend: BackendSetup) -> None:
    store = backend.store_url()
    q = backend.connect(store=store, visibility_timeout=2, wait_time=1)
    q.submit_many([{"body": b"x"}, {"body": b"y"}], priority="high")
    q.submit({"body": b"z"}, priority="low")

    # remotejob stats: a row per queue, the levels' included once they exist
    where = ["--store", store, "--queues", "sqs://"] if store else []
    result = CliRunner().invoke(cli, ["--name", q.name, *where, "stats", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["queue"]: row for row in json.loads(result.output)["queues"]}
    high = rows[f"{q.name}-pending-high"]
    assert (high["waiting"], high["priority"]) == (2, "high")
    assert rows[f"{q.name}-pending-low"]["waiting"] == 1 and rows[f"{q.name}-pending"]["waiting"] == 0
    # the level's queues of every status are made at once (a worker may not create queues, and
    # must be able to hand a job on in its level); not the completion notices'
    assert rows[f"{q.name}-inprogress-high"]["waiting"] == 0
    assert f"{q.name}-completed-high" not in rows
    # Prometheus: a queue label per level
    collector = queue_collector(q.context, every_s=0)
    waiting = {sample.labels["queue"]: sample.value for family in collector.collect()
               for sample in family.samples if sample.labels.get("kind") == "waiting"}
    assert (waiting["pending-high"], waiting["pending-low"], waiting["pending"]) == (2, 1, 0)
    # the dashboard's overview: a status's depth counts its levels' jobs
    index = Index(q.context, None, refresh_s=60, rescan_s=3600)
    index.refresh()
    pending = index.depths["pending"]
    assert pending is not None and pending.waiting == 3


# -- least privilege -------------------------------------------------------------------------------


moto_iam, system, _aws_env = test_iam.moto_iam, test_iam.system, test_iam._aws_env  # its fixtures


def test_the_iam_policies_cover_the_level_queues(system: JobSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    """On moto enforcing IAM: a submitter with its printed policy creates and fills the level
    queues; a worker with its own finds them and runs their jobs."""
    # moto checks CreateQueue against resource "*" (see MOTO_UNSCOPED); the policy grants it on
    # the level queues' ARNs only, which JobSystem.user asserts
    monkeypatch.setitem(test_iam.MOTO_UNSCOPED, "submitter", ["sqs:GetQueueUrl", "sqs:CreateQueue"])
    sub = system.connect(system.user("submitter"))
    ids = [sub.submit({"body": level.encode()}, priority=level) for level in LEVEL_NAMES]
    worker = system.connect(system.user("worker"))

    assert worker.work(lambda job: None, burst=True, handle_signals=False) == 3

    assert [sub.status(job_id).state for job_id in ids] == ["completed"] * 3


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.backends("embedded")  # refused before any request
def test_an_unknown_priority_is_refused_with_the_levels(backend: BackendSetup) -> None:
    q, _, _ = connect(backend)
    for submit in (lambda: q.submit({"body": b"x"}, priority="urgent"),
                   lambda: q.submit_many([{"body": b"x"}], priority="urgent"),
                   lambda: q.trigger("some-key", priority="urgent")):
        with pytest.raises(ValueError, match="high, normal, low"):
            submit()
    normal_id = q.submit({"body": b"x"}, priority="normal")

    assert waiting(q, level_queue(q, "pending", "normal")) == 1
    assert q.status(normal_id).priority is None
