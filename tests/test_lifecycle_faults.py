"""The delivery promise under faults: crash a worker at every step boundary of a job's life, lose
replies of applied requests, fail single entries of batches, and interleave attempts of one job,
then check the same invariants every time (see :func:`check_invariants`).

Every test runs a two-stage pipeline, statuses ``("a", "b", "completed")``: stage a hands each job
on to b with ``job.complete(assets=..., next_status="b")``, stage b returns its assets. One job of
each submit carries a large input (stored under ``in/``) and large outputs (staged under
``jobs/<id>/attempts/`` instead of travelling inside the record), so every step of the lifecycle
(stage, claim, publish copy, notice, hand-on, delete) is taken.

The faults come from :mod:`tests.faults`, wrappers around the real store and queues of each
backend setting; a "crash" makes every later request of that simulated process fail, as a dead
process would, and a fresh worker over the same store and queues then finishes the work.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import remotejob
from remotejob.backends.base import OutgoingMessage, QueueAttributes
from remotejob.errors import BatchPartlyFailed, UncertainResult
from tests.conftest import BackendSetup, unique
from tests.faults import Crash, Faults, FaultyQueues, FaultyStore

# A crash ends the thread that made the request (heartbeat, outbox, receiver), as it would end
# the process: pytest reports such a thread's exception as a warning, which here is the point.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

STATUSES = ("a", "b", "completed")
BIG = 80 * 1024
"""Larger than the 64 KiB of assets an attempt keeps inside its record: staged."""
BIG_INPUT = 200 * 1024
"""Larger than an inline message body: stored under ``in/``."""
SETTLE_S = 45.0


def _blob(tag: bytes, data: bytes, size: int) -> bytes:
    seed = hashlib.sha256(tag + data).digest()
    return (seed * (size // len(seed) + 1))[:size]


def stage_a_outputs(data: bytes, big: bool) -> dict[str, bytes]:
    outputs = {"mid": b"a:" + hashlib.sha256(data).digest()}
    if big:
        outputs["mid-big"] = _blob(b"a", data, BIG)
    return outputs


def stage_b_outputs(mid: bytes, big: bool) -> dict[str, bytes]:
    outputs = {"final": b"b:" + hashlib.sha256(mid).digest()}
    if big:
        outputs["final-big"] = _blob(b"b", mid, BIG)
    return outputs


def expected_outputs(data: bytes, pipeline: bool = True) -> dict[str, bytes]:
    big = len(data) >= BIG_INPUT
    first = stage_a_outputs(data, big)
    return {**first, **stage_b_outputs(first["mid"], big)} if pipeline else first


def ends_with(suffix: str) -> Callable[..., bool]:
    """A match on a queue op's queue name (its first argument)."""
    return lambda queue, *args, **kwargs: isinstance(queue, str) and queue.endswith(suffix)


@dataclass
class Rig:
    """One job system over fault-injecting wrappers, with handlers that count their runs."""

    q: remotejob.Queue
    faults: Faults
    pipeline: bool = True
    """Stage a hands on to b; otherwise stage a completes the job."""
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    """Handler executions by (job id, stage)."""
    seen: dict[str, dict[str, str]] = field(default_factory=dict)
    """Each job id a handler ran, with its metadata."""
    lost: list[tuple[str, str, str]] = field(default_factory=list)
    """(job id, stage, error) of every input a handler could not read."""
    hold_a: Callable[[remotejob.Job], None] | None = None
    rerun_ok: set[tuple[str, str]] = field(default_factory=set)
    """(job id, stage) runs of a crashed process that did not reach their claim."""
    noticed: set[str] = field(default_factory=set)
    """Jobs whose completion notice a crashed process sent."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def name(self, status: str) -> str:
        return f"{self.q.name}-{status}"

    def read_input(self, job: remotejob.Job, stage: str) -> bytes:
        if self.faults.dead:  # a dead process runs no handler
            raise Crash("the process is dead (no handler runs)")
        with self.lock:
            self.runs[(job.id, stage)] += 1
            self.seen[job.id] = dict(job.metadata)
        try:
            with job.open() as stream:
                return stream.read()
        except remotejob.NotFound as exc:
            with self.lock:
                self.lost.append((job.id, stage, str(exc)))
            raise

    def stage_a_assets(self, job: remotejob.Job) -> list[dict[str, Any]]:
        data = self.read_input(job, "a")
        outputs = stage_a_outputs(data, job.metadata.get("big") == "1")
        return [{"key": k, "body": v} for k, v in outputs.items()]

    def stage_b_assets(self, job: remotejob.Job) -> list[dict[str, Any]]:
        mid = self.read_input(job, "b")
        outputs = stage_b_outputs(mid, job.metadata.get("big") == "1")
        return [{"key": k, "body": v} for k, v in outputs.items()]

    def handler_a(self, job: remotejob.Job) -> list[dict[str, Any]] | None:
        assets = self.stage_a_assets(job)
        if self.hold_a is not None:
            self.hold_a(job)
        if not self.pipeline:
            return assets
        job.complete(assets=assets, next_status="b", next_input="mid")
        return None

    def handler_b(self, job: remotejob.Job) -> list[dict[str, Any]]:
        return self.stage_b_assets(job)

    def worker(self, status: str, **options: Any) -> remotejob.Worker:
        handler = self.handler_a if status == "a" else self.handler_b
        options.setdefault("retry_delay", 0)
        return remotejob.Worker(self.q, handler, status=status, burst=True, handle_signals=False, **options)

    def busy(self, *statuses: str) -> int:
        """Messages left in the status queues: waiting, in flight or delayed."""
        total = 0
        for status in statuses or ("a", "b"):
            depth = self.q.message_queue.depth(self.name(status))
            total += depth.waiting + depth.in_flight + depth.delayed
        return total

    def crashing_run(self, status: str) -> None:
        """A worker on ``status`` until the armed crash fires (it must fire), then note what the
        dead process left: runs that did not reach their claim (their handler may run again) and
        notices it sent (they may repeat, as the README allows)."""
        try:
            self.worker(status).run()
        except Crash:
            pass
        assert self.faults.dead, "the crash point was never reached"
        claimed: set[tuple[str, str]] = set()
        noticed: list[str] = []
        for op, args, kwargs in list(self.faults.calls):
            if op == "store.put" and kwargs.get("if_absent"):
                parts = args[0].split("/")  # jobs/<id>/handoff-a or jobs/<id>/final
                if parts[0] == "jobs" and parts[-1] in ("handoff-a", "final"):
                    claimed.add((parts[1], "a" if parts[-1] == "handoff-a" else "b"))
            elif op in ("queue.send", "queue.send_batch") and args[0] == self.name("completed"):
                noticed += [args[1]] if op == "queue.send" else [m.body for m in args[1]]
        self.rerun_ok |= {run for run in self.runs if run not in claimed}
        self.noticed |= {job_id for job_id in self.seen if any(job_id in body for body in noticed)}
        self.faults.revive()
        self.faults.clear()

    def settle(self, statuses: tuple[str, ...] = ("a", "b")) -> None:
        """Fresh burst workers over the same queues until no message is left in the status
        queues.

        Stage a is worked until its queue is empty, in flight included, before stage b runs: a
        crashed delivery of stage a comes back (after the visibility timeout) before stage b
        finishes, the order that tests a repeated hand-on, on every backend alike."""
        deadline = time.monotonic() + SETTLE_S
        while self.busy(*statuses):
            for status in statuses:
                while self.busy(status):
                    assert time.monotonic() < deadline, f"jobs still queued after {SETTLE_S} s"
                    self.worker(status).run()  # a burst worker long-polls for what comes back


def make_rig(backend: BackendSetup, visibility: int = 1, pipeline: bool = True) -> Rig:
    faults = Faults()
    q = remotejob.connect(
        unique("q"),
        store=FaultyStore(backend.make_store(), faults),
        queues=FaultyQueues(backend.make_queues(), faults),
        statuses=STATUSES,
        visibility_timeout=visibility,
        wait_time=1,
        max_attempts=5,
    )
    q.init()
    return Rig(q, faults, pipeline)


def job_items(count: int = 3) -> list[dict[str, Any]]:
    """Small inline jobs and, last, one with a large stored input and large staged outputs."""
    items: list[dict[str, Any]] = [
        {"body": f"small input {n} {unique()}".encode(), "n": str(n), "big": "0"} for n in range(count - 1)
    ]
    items.append({"body": _blob(b"in", unique().encode(), BIG_INPUT), "n": str(count - 1), "big": "1"})
    return items


def submit(rig: Rig, items: list[dict[str, Any]]) -> dict[str, bytes]:
    ids = rig.q.submit_many(items, status="a")
    return {job_id: item["body"] for job_id, item in zip(ids, items, strict=True)}


def check_invariants(
    rig: Rig,
    jobs: Mapping[str, bytes],
    *,
    rerun_ok: Iterable[tuple[str, str]] = (),
    repeat_notice_ok: Iterable[str] = (),
) -> None:
    """The promise, as a user checks it, for ``jobs`` (id -> input):

    - each job ends with exactly one outcome, completed;
    - completed implies every listed output is readable and matches its SHA-256 (and is what the
      handlers produced);
    - each stage's handler ran once per job (twice only for a ``rerun_ok`` (job, stage) whose
      first attempt died before its claim);
    - no input was lost: no handler found its input missing;
    - no message is stranded: the status queues and the dead-letter queue are empty, and the
      completed queue held one notice per job (two at most for ``repeat_notice_ok`` jobs, whose
      worker died between notice and delete, as the README allows), each saying ``completed``.
    """
    q = rig.q
    rerun = set(rerun_ok)
    for job_id, data in jobs.items():
        status = q.status(job_id)
        assert status.state == "completed", f"job {job_id}: {status}"
        expected = expected_outputs(data, rig.pipeline)
        assert set(status.assets) == set(expected), f"job {job_id} lists {sorted(status.assets)}"
        for name, output in status.assets.items():
            try:
                with q.output(job_id, name, sha256=output.sha256) as obj:
                    body = obj.read()
            except remotejob.NotFound:
                raise AssertionError(f"job {job_id} is completed; its output {name!r} is missing") from None
            assert body == expected[name], f"job {job_id}: output {name!r} differs"
        for stage in ("a", "b") if rig.pipeline else ("a",):
            runs = rig.runs[(job_id, stage)]
            most = 2 if (job_id, stage) in rerun else 1
            assert 1 <= runs <= most, f"job {job_id}: stage {stage} handler ran {runs} times"
    assert not rig.lost, f"inputs lost: {rig.lost}"
    notices: Counter[str] = Counter()
    while q.message_queue.depth(rig.name("completed")).waiting:
        notice = q.next("completed", timeout=5)
        assert notice is not None, "a notice was counted but could not be received"
        assert notice.state == "completed", f"notice of {notice.id}: {notice.state} {notice.error}"
        notices[notice.id] += 1
        notice.acknowledge()
    repeat = set(repeat_notice_ok)
    assert set(notices) == set(jobs), f"notices for {sorted(notices)}, jobs {sorted(jobs)}"
    for job_id, count in notices.items():
        assert count <= (2 if job_id in repeat else 1), f"job {job_id}: {count} completion notices"
    for status_name in ("a", "b", "completed", "dead"):
        depth = q.message_queue.depth(rig.name(status_name))
        left = depth.waiting + depth.in_flight + depth.delayed
        assert left == 0, f"{left} message(s) stranded in {rig.name(status_name)}: {depth}"


# -- the fault layer itself --------------------------------------------------------------------


def test_fault_wrappers_inject_what_they_promise(backend: BackendSetup) -> None:
    faults = Faults()
    store = FaultyStore(backend.make_store(), faults)
    queues = FaultyQueues(backend.make_queues(), faults)
    name = unique("fq")
    store.ensure()
    queues.ensure([name], QueueAttributes(visibility_s=30, wait_s=0))

    faults.lose_reply("store.put", match="lost")
    with pytest.raises(UncertainResult):
        store.put("lost", b"1")
    assert store.get("lost").read() == b"1"  # applied, though the reply was lost

    faults.crash("store.put", when="before", match="never")
    with pytest.raises(Crash):
        store.put("never", b"2")
    assert faults.dead
    with pytest.raises(Crash):  # a dead process does nothing more, through any wrapper
        queues.depth(name)
    faults.revive()
    with pytest.raises(remotejob.NotFound):
        store.head("never")
    faults.crash("store.delete")
    with pytest.raises(Crash):
        store.delete("lost")
    faults.revive()
    with pytest.raises(remotejob.NotFound):
        store.head("lost")

    faults.fail_entries("queue.send_batch", [1], code="Throttled")
    with pytest.raises(BatchPartlyFailed) as failed:
        queues.send_batch(name, [OutgoingMessage(f"m{i}") for i in range(3)])
    assert failed.value.failed == {1: "Throttled"} and sorted(failed.value.done) == [0, 2]
    received = queues.receive(name, 10, wait_s=1)
    assert sorted(m.body for m in received) == ["m0", "m2"]
    assert sorted(m.message_id for m in received) == sorted(failed.value.done.values())

    by_body = {m.body: m for m in received}
    faults.fail_entries("queue.change_visibility_batch", [0])
    with pytest.raises(BatchPartlyFailed) as failed:
        queues.change_visibility_batch(name, [(by_body["m0"].receipt, 0), (by_body["m2"].receipt, 0)])
    assert failed.value.failed == {0: "InternalError"} and failed.value.done == {1: ""}
    assert [m.body for m in queues.receive(name, 10, wait_s=1)] == ["m2"]  # only m2 was made visible

    faults.fail("queue.purge", remotejob.BackendUnavailable("refused"), when="after", match=name)
    with pytest.raises(remotejob.BackendUnavailable):
        queues.purge(name)

    go, entered = threading.Event(), threading.Event()
    faults.delay("store.get", until=go, entered=entered)
    store.put("held", b"3")
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(store.get("held").read()))
    reader.start()
    assert entered.wait(10)
    assert not got
    go.set()
    reader.join(10)
    assert got == [b"3"]
    assert faults.count("store.put") == 3 and faults.count("store.put", match="held") == 1


# -- a crash at every step boundary --------------------------------------------------------------


class NthWrite:
    """Fires on the n-th write (put or copy) into the big job's outputs of one stage."""

    def __init__(self, n: int, names: tuple[str, ...]) -> None:
        self.n, self.names, self.prefix = n, names, ""
        self._seen = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, target: str) -> bool:
        if not self.prefix or not target.startswith(self.prefix):
            return False
        if target.removeprefix(self.prefix) not in self.names:
            return False
        with self._lock:
            return next(self._seen) == self.n


CRASH_POINTS = {  # where the process dies, and in which stage
    "after-stage-a": "a", "after-claim-a": "a", "after-publish-a-1": "a", "after-publish-a-2": "a",
    "after-hand-on": "a", "before-delete-a": "a",
    "after-stage-b": "b", "after-claim-b": "b", "after-publish-b-1": "b", "after-publish-b-2": "b",
    "after-notice": "b", "before-delete-b": "b",
}


def is_claim(suffix: str) -> Callable[..., bool]:
    return lambda key, *args, **kwargs: key.endswith(suffix) and bool(kwargs.get("if_absent"))


def arm(rig: Rig, point: str, big_id: str) -> None:
    """Arm the crash named ``point`` (see CRASH_POINTS).

    Until the crash, the stage's deletes wait (then die with the process): every job the dying
    worker finished before comes back too, whatever the timing of its outbox, so each test
    checks the same thing on every backend."""
    f = rig.faults
    segment = big_id.replace("%", "%25").replace("/", "%2F")
    if point in ("after-stage-a", "after-stage-b"):
        asset = "mid-big" if point.endswith("a") else "final-big"
        f.crash("store.put", match=lambda key, *a, **k: "/attempts/" in key and key.endswith("/" + asset))
    elif point == "after-claim-a":
        f.crash("store.put", match=is_claim("/handoff-a"))
    elif point == "after-claim-b":
        f.crash("store.put", match=is_claim("/final"))
    elif point.startswith("after-publish-"):
        _, _, stage, nth = point.split("-")
        names = ("mid", "mid-big") if stage == "a" else ("final", "final-big")
        write = NthWrite(int(nth), names)
        write.prefix = f"out/{segment}/"
        f.crash("store.put", match=lambda key, *a, **k: write(key))
        f.crash("store.copy", match=lambda source, key: write(key))
    elif point == "after-notice":
        for op in ("queue.send_batch", "queue.send"):
            f.crash(op, match=ends_with("-completed"))
    elif point == "after-hand-on":
        for op in ("queue.send_batch", "queue.send"):
            f.crash(op, match=ends_with("-b"))
    elif point in ("before-delete-a", "before-delete-b"):
        for op in ("queue.delete_batch", "queue.delete"):
            f.crash(op, when="before", match=ends_with("-" + point[-1]))
    else:
        raise AssertionError(point)
    stage = CRASH_POINTS[point]
    for op in ("queue.delete_batch", "queue.delete"):
        f.delay(op, until=f.died, seconds=10, match=ends_with("-" + stage), times=1000)




CRASH_PAIRS = [  # one crash in stage a, then one in stage b, per test (half the set-up time)
    ("after-stage-a", "after-stage-b"),
    ("after-claim-a", "after-claim-b"),
    ("after-publish-a-1", "after-publish-b-1"),
    ("after-publish-a-2", "after-publish-b-2"),
    ("after-hand-on", "after-notice"),
    ("before-delete-a", "before-delete-b"),
]


# exactly-once rests on the create-once claim: proven on the embedded store and SeaweedFS, not on
# moto, whose conditional put is check-then-act (DESIGN.md); the queue side is moto's in both AWS settings
@pytest.mark.backends("embedded", "aws-real-s3")
@pytest.mark.parametrize(("point_a", "point_b"), CRASH_PAIRS, ids=["|".join(p) for p in CRASH_PAIRS])
def test_crash_at_each_step_then_redelivery_keeps_the_promise(
    backend: BackendSetup, point_a: str, point_b: str
) -> None:
    rig = make_rig(backend)
    jobs = submit(rig, job_items())
    big_id = next(job_id for job_id, data in jobs.items() if len(data) >= BIG_INPUT)

    arm(rig, point_a, big_id)
    rig.crashing_run("a")  # worker 1 dies in stage a
    rig.settle(("a",))  # worker 2 finishes stage a: the dead one's deliveries come back first
    arm(rig, point_b, big_id)
    rig.crashing_run("b")  # worker 3 dies in stage b
    rig.settle()  # worker 4 finishes everything

    # A stage's handler runs again only for a run a crash cut off before its claim; a notice
    # repeats only if a dead worker sent it but had not deleted the job's message.
    check_invariants(rig, jobs, rerun_ok=rig.rerun_ok, repeat_notice_ok=rig.noticed)


# -- lost replies and partly failed batches ------------------------------------------------------


def test_claims_whose_reply_was_lost_stand_and_run_nothing_twice(backend: BackendSetup) -> None:
    rig = make_rig(backend)
    jobs = submit(rig, job_items())
    rig.faults.lose_reply("store.put", match=is_claim("/handoff-a"))
    rig.faults.lose_reply("store.put", match=is_claim("/final"))

    rig.settle()

    assert rig.faults.fired() == 2
    check_invariants(rig, jobs)


def _ids_by_n(rig: Rig) -> dict[str, str]:
    return {meta["n"]: job_id for job_id, meta in rig.seen.items()}


def test_submit_whose_send_reply_was_lost_leaves_its_jobs_runnable(backend: BackendSetup) -> None:
    rig = make_rig(backend)
    items = job_items()
    keyed = unique("k")
    items[0]["key"] = keyed  # a keyed job too: its input and record must not be undone
    rig.faults.lose_reply("queue.send_batch", match=ends_with("-a"))
    try:
        ids: list[str] | None = rig.q.submit_many(items, status="a")
    except remotejob.BackendUnavailable:
        ids = None  # the caller may be told that it is unknown whether they were sent

    rig.settle()

    by_n = _ids_by_n(rig)
    assert sorted(by_n) == [item["n"] for item in items], "every sent job ran"
    assert by_n["0"] == keyed
    if ids is not None:
        assert ids == [by_n[item["n"]] for item in items]
    check_invariants(rig, {by_n[item["n"]]: item["body"] for item in items})


def test_submit_with_one_failed_entry_undoes_only_that_job(backend: BackendSetup) -> None:
    rig = make_rig(backend)
    items = job_items(4)
    failed_key, kept_key = unique("k"), unique("k")
    items[1]["key"] = failed_key
    items[3]["key"] = kept_key  # the big one: its input is stored under in/
    rig.faults.fail_entries("queue.send_batch", [1], match=ends_with("-a"))
    with pytest.raises(remotejob.BackendUnavailable):
        rig.q.submit_many(items, status="a")

    # The failed entry's job is not half-written: no record, no input, and it can be submitted again.
    with pytest.raises(remotejob.NotFound):
        rig.q.status(failed_key)
    with pytest.raises(remotejob.NotFound):
        rig.q.retrieve("in", failed_key)
    assert rig.q.submit(items[1], status="a") == failed_key

    rig.settle()

    by_n = _ids_by_n(rig)
    assert sorted(by_n) == ["0", "1", "2", "3"]
    assert by_n["1"] == failed_key and by_n["3"] == kept_key
    check_invariants(rig, {by_n[item["n"]]: item["body"] for item in items})


def test_a_failed_heartbeat_entry_does_not_stop_the_other_jobs_heartbeats(backend: BackendSetup) -> None:
    rig = make_rig(backend, pipeline=False)  # one stage: what is checked is the heartbeat alone
    jobs = submit(rig, job_items(2))
    both_running = threading.Barrier(3, timeout=20)
    go = threading.Event()
    receipts: dict[str, str] = {}

    def hold(job: remotejob.Job) -> None:
        with rig.lock:
            receipts[job.id] = job.receipt
        both_running.wait()
        go.wait(20)

    rig.hold_a = hold
    failing: list[str] = []  # the receipt whose every extension fails, once both jobs run
    hits: list[int] = []

    def pick(entries: list[tuple[str, int]]) -> list[int]:
        chosen = [i for i, (receipt, _) in enumerate(entries) if receipt in failing]
        hits.extend(chosen)
        return chosen

    rig.faults.fail_entries("queue.change_visibility_batch", pick, match=ends_with("-a"), times=10_000)
    worker = rig.worker("a", concurrency=2, prefetch=0)
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        both_running.wait()
        failing_id, healthy = sorted(receipts)
        failing.append(receipts[failing_id])
        # Long-poll for longer than the visibility timeout (1 s) while both handlers run: only
        # the job whose extensions fail may come back.
        again = rig.q.next("a", timeout=3)
        assert hits, "no heartbeat tried to extend the failing job"
        if again is not None:
            assert again.id == failing_id, "a job whose heartbeat succeeded was delivered again"
            again.release()
    finally:
        go.set()
        runner.join(30)
    rig.faults.clear()
    rig.hold_a = None

    rig.settle()

    # The redelivery taken above ran no handler. Its job's notice may repeat: the first attempt's
    # delete named a receipt that was stale by then, so the message came back once more.
    check_invariants(rig, jobs, repeat_notice_ok={failing_id})


# -- interleaved attempts (property-based) ------------------------------------------------------


class Attempts:
    """Attempts of one job driven by hand: two deliveries of stage a (the second after the first
    one's visibility ran out, so both may hold the job at once), and one of stage b that can be
    paused between staging its outputs and claiming its outcome."""

    def __init__(self, rig: Rig, a1_dies_before_delete: bool) -> None:
        self.rig = rig
        self.a1_dies = a1_dies_before_delete
        self.jobs: dict[str, remotejob.Job | None] = {}
        self.done: set[str] = set()
        self.b_go = threading.Event()
        self.b_thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    def enabled(self) -> list[str]:
        steps = []
        held = self.jobs
        if "A1.recv" not in self.done:
            return ["A1.recv"]
        if held.get("A1") is not None and "A1.complete" not in self.done:
            steps.append("A1.complete")
        a1_deleted = "A1.complete" in self.done and not self.a1_dies and "A2.recv" not in self.done
        if "A2.recv" not in self.done and not a1_deleted:
            steps.append("A2.recv")
        if held.get("A2") is not None and "A2.complete" not in self.done:
            steps.append("A2.complete")
        if "B1.recv" not in self.done and {"A1.complete", "A2.complete"} & self.done:
            steps.append("B1.recv")
        if held.get("B1") is not None and "B1.stage" not in self.done:
            steps.append("B1.stage")
        if "B1.stage" in self.done and "B1.finish" not in self.done:
            steps.append("B1.finish")
        return steps

    def do(self, step: str) -> None:
        self.done.add(step)
        actor, action = step.split(".")
        q, faults = self.rig.q, self.rig.faults
        if action == "recv":
            status = "a" if actor.startswith("A") else "b"
            # A2 comes once A1's visibility (1 s) ran out; None if there is nothing to take.
            job = q.next(status, timeout=2.5)
            self.jobs[actor] = job
            if job is not None and actor == "B1":
                job.extend(60)  # B1 may pause: nobody else takes stage b meanwhile
        elif actor in ("A1", "A2") and action == "complete":
            job = self.jobs[actor]
            assert job is not None
            if actor == "A1" and self.a1_dies:
                for op in ("queue.delete", "queue.delete_batch"):
                    faults.crash(op, when="before", match=ends_with("-a"))
            try:
                assets = self.rig.stage_a_assets(job)
                job.complete(assets=assets, next_status="b", next_input="mid")
            except (Crash, remotejob.AlreadyExists):
                pass
            faults.revive()
            faults.clear()
        elif step == "B1.stage":
            job = self.jobs["B1"]
            assert job is not None
            entered = threading.Event()
            faults.delay("store.put", until=self.b_go, seconds=30, match=is_claim("/final"), entered=entered)
            self.b_thread = threading.Thread(target=self._complete_b, args=(job, entered))
            self.b_thread.start()
            entered.wait(30)  # staged; its claim waits for B1.finish (or it failed before)
        elif step == "B1.finish":
            self.b_go.set()
            assert self.b_thread is not None
            self.b_thread.join(30)
            job = self.jobs["B1"]
            if self.errors and job is not None:  # as a worker would: it comes back, now
                job.release()

    def _complete_b(self, job: remotejob.Job, entered: threading.Event) -> None:
        try:
            job.complete(assets=self.rig.stage_b_assets(job))
        except remotejob.AlreadyExists:
            pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test's assertions
            self.errors.append(exc)
        finally:
            entered.set()


# Each example takes seconds (visibility timeouts run out): few examples, and no shrinking.
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), a1_dies=st.booleans())
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_interleaved_attempts_and_a_redelivered_earlier_stage_keep_the_promise(
    backend: BackendSetup, data: st.DataObject, a1_dies: bool
) -> None:
    rig = make_rig(backend)
    items = job_items(1)  # one job, with a stored input and staged outputs
    jobs = submit(rig, items)
    (job_id,) = jobs
    attempts = Attempts(rig, a1_dies)
    while steps := attempts.enabled():
        attempts.do(data.draw(st.sampled_from(steps), label="step"))
    rig.faults.revive()
    rig.faults.clear()

    rig.settle()

    two_a = attempts.jobs.get("A2") is not None and "A2.complete" in attempts.done
    check_invariants(rig, jobs, rerun_ok={(job_id, "a")} if two_a else set())
    assert not attempts.errors, f"stage b's complete() failed: {attempts.errors!r}"
