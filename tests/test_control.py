"""Issue 13 over every backend: cancel (before take, between take and start, while running, racing
completion), progress, time limits and retry, with Python handlers in a ``remotejob.Worker`` on a
thread. The CLI and ``worker --exec`` have suites of their own (test_cli_control.py,
test_exec_control.py).

Each test tries to break one promise of the README's "Cancel, progress, time limits and retry":
a cancelled job publishes nothing and is never retried; a cancel and a completion race on one
record and exactly one wins; progress lands before the outcome; a time limit fails the attempt
and is retried; an abandoned handler's late result is discarded; a retry runs once.

Synchronisation is by events and bounded polls (``wait_until``), never by sleeping. The one
deliberate wait for time to pass (``_let_pass``) is a precondition the README states: a cancel
made more than one ``cancel_check`` interval before a job starts keeps its handler from starting.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import remotejob
from remotejob import Cancelled, JobCancelled, JobFailed, NotFound, NotRetryable, TimeLimitExceeded
from remotejob.errors import ConfigError
from tests.conftest import BackendSetup, running, unique, wait_until
from tests.faults import Crash, Faults, FaultyQueues, FaultyStore

# A simulated crash ends the thread that made the request; pytest reports that as a warning.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")

CHECK = 0.2
"""The workers' cancel_check here: how often they read the cancellation log while busy."""
GRACE = 1.0
"""The workers' cancel_grace here, unless a test needs it otherwise."""
LONG = 30.0
"""Upper bound of any wait on an event a test sets itself (never reached when all is well)."""

Assets = list[dict[str, Any]]


def connect(backend: BackendSetup, **options: Any) -> remotejob.Queue:
    options.setdefault("visibility_timeout", 3)
    options.setdefault("wait_time", 1)
    options.setdefault("max_attempts", 3)
    return backend.connect(**options)  # type: ignore[no-any-return]


def worker(q: remotejob.Queue, handler: Callable[[remotejob.Job], Any], **options: Any) -> remotejob.Worker:
    options.setdefault("handle_signals", False)
    options.setdefault("cancel_check", CHECK)
    options.setdefault("cancel_grace", GRACE)
    options.setdefault("retry_delay", 0)
    options.setdefault("grace_period", 5)
    return remotejob.Worker(q, handler, **options)


def drain(q: remotejob.Queue, handler: Callable[[remotejob.Job], Any], **options: Any) -> int:
    """One burst worker run over ``pending``."""
    return worker(q, handler, burst=True, **options).run()


def pending_gone(q: remotejob.Queue) -> bool:
    depth = q.message_queue.depth(q.queue_name("pending"))
    return depth.waiting + depth.in_flight + depth.delayed == 0


def wait_pending_gone(q: remotejob.Queue) -> None:
    wait_until(lambda: pending_gone(q), what=lambda: f"the pending queue to empty: "
               f"{q.message_queue.depth(q.queue_name('pending'))}")


def notices(q: remotejob.Queue, count: int, timeout: float = 15.0) -> dict[str, str]:
    """Take completion notices until ``count`` jobs have one (or ``timeout``); job id -> state.
    A notice may come twice; a second one must say the same."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < count and (left := deadline - time.monotonic()) > 0:
        notice = q.next("completed", timeout=min(left, 2.0))
        if notice is None:
            continue
        assert notice.state is not None
        assert seen.setdefault(notice.id, notice.state) == notice.state, "two notices disagree"
        notice.acknowledge()
    return seen


def no_output(q: remotejob.Queue, job_id: str, asset: str = "output") -> bool:
    try:
        q.output(job_id, asset)
    except NotFound:
        return True
    return False


def _let_pass(seconds: float) -> None:
    """Let ``seconds`` pass: a precondition of a promise, never a stand-in for an event."""
    until = time.monotonic() + seconds
    wait_until(lambda: time.monotonic() >= until, timeout=seconds + 5)


def _outcome(q: remotejob.Queue, job_id: str, timeout: float = 20.0) -> remotejob.JobStatus:
    """The job's status once it is done (completed, failed or cancelled)."""
    def done() -> remotejob.JobStatus | None:
        st = q.status(job_id)
        return st if st.done else None

    result: remotejob.JobStatus = wait_until(done, timeout=timeout, what=f"job {job_id}'s outcome")
    return result


def output_asset(body: bytes) -> Assets:
    return [{"key": "output", "body": body}]


# -- cancel before take, between take and start ---------------------------------------------------


def test_a_job_cancelled_before_a_worker_takes_it_never_runs(backend: BackendSetup) -> None:
    q = connect(backend)
    doomed, other = q.submit({"body": b"never"}), q.submit({"body": b"runs"})

    st = q.cancel(doomed, reason="wrong file")

    assert (st.id, st.state, st.error, st.done) == (doomed, "cancelled", "wrong file", True)
    assert q.status(doomed).state == "cancelled"
    with pytest.raises(JobCancelled) as cancelled:
        q.wait(doomed, timeout=5)
    assert cancelled.value.error == "wrong file" and isinstance(cancelled.value, JobFailed)
    ran: list[str] = []

    drain(q, lambda job: ran.append(job.id))

    assert ran == [other]
    final = q.status(doomed)
    assert (final.state, final.error, final.outputs, final.progress) == ("cancelled", "wrong file", [], None)
    assert q.status(other).state == "completed" and q.status(other).progress is None
    assert pending_gone(q), "the cancelled job's message is still in its queue"
    assert notices(q, 2) == {doomed: "cancelled", other: "completed"}
    # a later worker finds nothing left to drop or run
    assert drain(q, lambda job: ran.append(job.id)) == 0 and ran == [other]


def test_a_job_cancelled_after_a_worker_took_it_but_before_its_handler_started_never_runs(
    backend: BackendSetup,
) -> None:
    q = connect(backend, visibility_timeout=5)
    ids = q.submit_many([{"body": b"one"}, {"body": b"two"}])
    ran: list[str] = []
    first_started, release = threading.Event(), threading.Event()

    def handler(job: remotejob.Job) -> Assets:
        ran.append(job.id)
        if len(ran) == 1:
            first_started.set()
            release.wait(LONG)
        return output_asset(job.id.encode())

    w = worker(q, handler, concurrency=1, prefetch=1)
    with running(w):
        try:
            assert first_started.wait(LONG), "the first handler did not start"
            pending = q.queue_name("pending")
            wait_until(lambda: q.message_queue.depth(pending).in_flight == 2,
                       what="the worker to hold the second job too (prefetched)")
            [held] = [job_id for job_id in ids if job_id != ran[0]]
            assert q.cancel(held, reason="changed my mind").state == "cancelled"
            _let_pass(3 * CHECK)  # the promise: cancelled more than one check interval before it starts
        finally:
            release.set()
        wait_until(lambda: q.status(ran[0]).state == "completed", what="the first job to complete")
        wait_pending_gone(q)

    assert ran == [ids[0] if held == ids[1] else ids[1]], "the cancelled job's handler started"
    assert q.status(held).state == "cancelled" and no_output(q, held)
    assert notices(q, 2) == {ran[0]: "completed", held: "cancelled"}


# -- cancel while running ------------------------------------------------------------------------


def test_a_running_cooperative_handler_stops_publishes_nothing_and_is_not_retried(
    backend: BackendSetup,
) -> None:
    """One handler lets job.check() raise Cancelled; the other sees job.cancelled and still
    returns assets. Neither publishes, neither runs again (max_attempts=3), progress stays."""
    q = connect(backend, max_attempts=3)
    checking = q.submit({"body": b"a", "kind": "check"})
    returning = q.submit({"body": b"b", "kind": "return"})
    runs: Counter[str] = Counter()
    started = {checking: threading.Event(), returning: threading.Event()}
    raised: dict[str, BaseException] = {}

    def handler(job: remotejob.Job) -> Assets | None:
        runs[job.id] += 1
        job.progress(5, 10, "half way")
        started[job.id].set()
        deadline = time.monotonic() + LONG
        pause = threading.Event()
        while time.monotonic() < deadline:
            if job.metadata["kind"] == "check":
                try:
                    job.check()
                except Cancelled as exc:
                    raised[job.id] = exc
                    raise
            elif job.cancelled:
                assert job.stop_reason == "cancelled"
                return output_asset(b"must not be published")
            pause.wait(0.02)  # a unit of the handler's work
        return None

    with running(worker(q, handler, concurrency=2)):
        for event in started.values():
            assert event.wait(LONG), "a handler did not start"
        assert q.status(checking).state == "inprogress"
        for job_id in (checking, returning):
            st = q.cancel(job_id, reason="stop it")
            assert (st.state, st.error) == ("cancelled", "stop it")
        wait_pending_gone(q)
        assert notices(q, 2) == {checking: "cancelled", returning: "cancelled"}

    assert runs == {checking: 1, returning: 1}, "a cancelled job ran again"
    assert isinstance(raised.get(checking), Cancelled) and not isinstance(raised[checking], TimeLimitExceeded)
    for job_id in (checking, returning):
        st = q.status(job_id)
        assert (st.state, st.error, st.outputs) == ("cancelled", "stop it", [])
        assert no_output(q, job_id), f"cancelled job {job_id} published its output"
        assert st.progress is not None and (st.progress.done, st.progress.total, st.progress.message) == (
            5, 10, "half way"), "the last progress reported was lost from the outcome"


def test_a_handler_that_ignores_its_cancel_publishes_nothing_whenever_it_returns(
    backend: BackendSetup,
) -> None:
    """``late`` returns assets once the worker has asked it to stop, ``early`` right after the
    cancel (likely before the worker heard of it), ``explicit`` calls job.complete() itself."""
    q = connect(backend, max_attempts=3)
    kinds = ("late", "early", "explicit")
    ids = {kind: q.submit({"body": kind.encode(), "kind": kind}) for kind in kinds}
    jobs: dict[str, remotejob.Job] = {}
    runs: Counter[str] = Counter()
    release = {kind: threading.Event() for kind in kinds}
    complete_raised: list[BaseException] = []

    def handler(job: remotejob.Job) -> Assets | None:
        kind = job.metadata["kind"]
        runs[kind] += 1
        jobs[kind] = job
        release[kind].wait(LONG)
        if kind == "explicit":
            try:
                job.complete(assets=output_asset(b"explicitly completed"))
            except Exception as exc:  # noqa: BLE001 - what it raises is not promised; the outcome is
                complete_raised.append(exc)
                raise
            return None
        return output_asset(b"ignored the cancel")

    with running(worker(q, handler, concurrency=3, cancel_grace=LONG)):
        try:
            wait_until(lambda: len(jobs) == 3, what="three handlers to start")
            for job_id in ids.values():
                assert q.cancel(job_id).state == "cancelled"
            release["early"].set()
            wait_until(lambda: jobs["late"].cancelled and jobs["explicit"].cancelled,
                       what="the worker to ask the handlers to stop")
        finally:
            for event in release.values():
                event.set()
        wait_pending_gone(q)

    assert runs == {kind: 1 for kind in kinds}
    for kind, job_id in ids.items():
        st = q.status(job_id)
        assert (st.state, st.outputs, st.error) == ("cancelled", [], None), kind
        assert no_output(q, job_id), f"{kind}: a cancelled job published its output"
        with pytest.raises(JobCancelled) as cancelled:
            q.wait(job_id, timeout=5)
        assert cancelled.value.error == "cancelled"


def test_cancel_racing_completion_has_exactly_one_outcome_every_round(backend: BackendSetup) -> None:
    """Rounds of three kinds: the handler returns and the cancel is made at the same moment
    (a barrier), the cancel just before the handler returns, just after."""
    q = connect(backend, visibility_timeout=5, max_attempts=3)
    rounds = 21
    gates = [threading.Barrier(2, timeout=LONG) for _ in range(rounds)]
    entered = [threading.Event() for _ in range(rounds)]
    returned = [threading.Event() for _ in range(rounds)]
    release = [threading.Event() for _ in range(rounds)]
    runs: Counter[str] = Counter()

    def handler(job: remotejob.Job) -> Assets:
        n = int(job.metadata["round"])
        runs[job.id] += 1
        entered[n].set()
        if n % 3 == 0:
            gates[n].wait()
        else:
            release[n].wait(LONG)
        returned[n].set()
        return output_asset(job.id.encode())

    outcomes: dict[str, str] = {}
    wrong: list[str] = []
    with running(worker(q, handler, concurrency=2)):
        for n in range(rounds):
            job_id = q.submit({"body": b"race", "round": str(n)})
            assert entered[n].wait(LONG), f"round {n}: the handler did not start"
            if n % 3 == 0:
                gates[n].wait()
                said = q.cancel(job_id)
            elif n % 3 == 1:
                said = q.cancel(job_id)
                release[n].set()
            else:
                release[n].set()
                returned[n].wait(LONG)
                said = q.cancel(job_id)
            final = _outcome(q, job_id)
            if said.state != final.state:
                wrong.append(f"round {n}: cancel() returned {said.state!r}, the outcome is {final.state!r}")
            if final.state == "cancelled":
                if final.outputs or not no_output(q, job_id):
                    wrong.append(f"round {n}: cancelled, yet published")
            elif final.state != "completed":
                wrong.append(f"round {n}: {final.state}: {final.error}")
            elif q.output(job_id, "output").read() != job_id.encode():
                wrong.append(f"round {n}: completed with the wrong output")
            outcomes[job_id] = final.state
        wait_pending_gone(q)
        told = notices(q, rounds)

    assert wrong == [], (f"{len(wrong)} of {rounds} rounds broke a promise ({Counter(outcomes.values())}): "
                         + "; ".join(wrong))
    assert runs == {job_id: 1 for job_id in outcomes}, "a job ran twice"
    assert told == outcomes, "a completion notice contradicts the job's outcome"


def test_cancel_while_the_winner_publishes_reports_the_completion(backend: BackendSetup) -> None:
    """A completion has claimed the final record and is publishing its outputs when the cancel
    comes: the job completed first, so cancel() must say ``completed`` (not ``inprogress``)."""
    store, queues = backend.make_store(), backend.make_queues()
    name = unique("q")
    options: dict[str, Any] = {"visibility_timeout": 5, "wait_time": 1, "max_attempts": 3}
    q = remotejob.connect(name, store=store, queues=queues, **options)
    faults = Faults()
    on_worker = remotejob.connect(name, store=FaultyStore(store, faults), queues=FaultyQueues(queues, faults),
                                  **options)
    publishing, publish = threading.Event(), threading.Event()
    faults.delay("store.put", match="out/", until=publish, entered=publishing)
    job_id = q.submit({"body": b"x"})

    with running(worker(on_worker, lambda job: output_asset(b"published"))):
        try:
            assert publishing.wait(LONG), "the worker did not publish"
            said = q.cancel(job_id, reason="too late")
        finally:
            publish.set()
        final = q.wait(job_id, timeout=LONG)

    assert final.state == "completed" and q.output(job_id, "output").read() == b"published"
    assert said.state == "completed", f"cancel() of a job that completed first returned {said.state!r}"


def test_cancel_of_unknown_finished_and_cancelled_jobs(backend: BackendSetup) -> None:
    q = connect(backend, max_attempts=1)
    good = q.submit({"body": b"good", "kind": "good"})
    bad = q.submit({"body": b"bad", "kind": "bad"})

    def handler(job: remotejob.Job) -> Assets:
        if job.metadata["kind"] == "bad":
            raise ValueError("bad input")
        return output_asset(b"fine")

    drain(q, handler)
    with pytest.raises(NotFound):
        q.cancel(unique("job"))
    with pytest.raises(TypeError):
        q.cancel(good, reason=42)  # type: ignore[arg-type]
    for job_id, state in ((good, "completed"), (bad, "failed")):
        before = q.status(job_id)
        said = q.cancel(job_id, reason="too late")
        assert said.state == state and said == before
        assert q.status(job_id) == before, f"cancel changed a {state} job"
    assert q.output(good, "output").read() == b"fine"
    assert q.status(bad).error == "ValueError: bad input"

    queued = q.submit({"body": b"q", "kind": "good"})
    first = q.cancel(queued, reason="first reason")
    again = q.cancel(queued, reason="second reason")
    assert (first.state, again.state) == ("cancelled", "cancelled")
    assert again.error == "first reason" and q.status(queued).error == "first reason"
    ran: list[str] = []
    drain(q, lambda job: ran.append(job.id))
    assert ran == [] and q.cancel(queued).state == "cancelled"
    assert notices(q, 3)[queued] == "cancelled"


def test_a_huge_or_unsendable_cancel_reason_is_kept_in_part_and_its_notice_still_goes(
    backend: BackendSetup,
) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"x"})
    reason = "why " * 5000 + "\udc80 lone surrogate"  # 20 KiB, and text SQS refuses as it is

    said = q.cancel(job_id, reason=reason)

    assert said.state == "cancelled" and said.error is not None
    assert len(said.error) == 16 * 1024 and reason.startswith(said.error)
    ran: list[str] = []
    drain(q, lambda job: ran.append(job.id))
    assert ran == [] and notices(q, 1)[job_id] == "cancelled"


# -- progress ------------------------------------------------------------------------------------


def test_progress_is_visible_while_running_and_the_last_report_lands_with_the_outcome(
    backend: BackendSetup,
) -> None:
    q = connect(backend, visibility_timeout=5)
    job_id = q.submit({"body": b"p"})
    steps = [threading.Event() for _ in range(3)]
    reached = [threading.Event() for _ in range(3)]

    def handler(job: remotejob.Job) -> Assets:
        job.progress(1, 4, "first")  # the first report is written at once
        reached[0].set()
        steps[0].wait(LONG)
        job.progress(2, 4, "second")  # well within 3 s of the first: coalesced
        reached[1].set()
        steps[1].wait(LONG)
        job.progress(3, 4, "third")
        job.progress(4, 4, "last")  # coalesced; the outcome must carry it
        return output_asset(b"done")

    def progress() -> tuple[float, float | None, str | None] | None:
        p = q.status(job_id).progress
        return None if p is None else (p.done, p.total, p.message)

    with running(worker(q, handler)):
        try:
            assert reached[0].wait(LONG)
            wait_until(lambda: progress() == (1, 4, "first"), what=lambda: f"progress 1/4, saw {progress()}")
            st = q.status(job_id)
            assert st.state == "inprogress" and st.progress is not None and st.progress.fraction == 0.25
            assert st.progress.updated > 0
            with pytest.raises(NotRetryable):
                q.retry(job_id)  # running
            steps[0].set()
            assert reached[1].wait(LONG)
            # coalesced, but written by the worker once due, while the handler still runs
            wait_until(lambda: progress() == (2, 4, "second"), timeout=15,
                       what=lambda: f"the coalesced report to be written, saw {progress()}")
            assert q.status(job_id).state == "inprogress"
        finally:
            for event in steps:
                event.set()
        final = q.wait(job_id, timeout=LONG)

    assert final.progress is not None, "the outcome lost the progress"
    assert (final.progress.done, final.progress.total, final.progress.message) == (4, 4, "last")
    assert final.progress.fraction == 1.0


# -- time limits ---------------------------------------------------------------------------------


def test_a_job_past_its_time_limit_fails_and_is_retried_up_to_max_attempts(backend: BackendSetup) -> None:
    q = connect(backend, max_attempts=2)
    job_id = q.submit({"body": b"slow"}, time_limit=0.5)
    seen: list[tuple[int, float | None]] = []
    raised: list[BaseException] = []

    def handler(job: remotejob.Job) -> Assets:
        seen.append((job.receive_count, job.time_limit))
        pause = threading.Event()
        deadline = time.monotonic() + LONG
        while time.monotonic() < deadline:
            try:
                job.check()
            except TimeLimitExceeded as exc:
                assert job.cancelled and job.stop_reason == "time-limit"
                raised.append(exc)
                raise
            pause.wait(0.02)
        return output_asset(b"never")

    drain(q, handler)

    assert seen == [(1, 0.5), (2, 0.5)], "not retried up to max_attempts, or the limit was lost"
    assert len(raised) == 2 and all(isinstance(e, Cancelled) for e in raised)
    with pytest.raises(JobFailed) as failed:
        q.wait(job_id, timeout=5)
    assert not isinstance(failed.value, JobCancelled)
    assert "TimeLimitExceeded" in failed.value.error and "time limit of 0.5 s" in failed.value.error
    assert no_output(q, job_id)
    assert [letter.job for letter in q.dead_letters()] == [job_id]


def test_the_workers_time_limit_applies_to_jobs_without_one_and_a_jobs_own_wins(
    backend: BackendSetup,
) -> None:
    q = connect(backend, max_attempts=1)
    with pytest.raises(ValueError):
        q.submit({"body": b"x"}, time_limit=0)
    with pytest.raises(ValueError):
        q.submit({"body": b"x"}, time_limit=-1)
    with pytest.raises(ValueError):
        q.submit_many([{"body": b"x"}], time_limit=float("nan"))
    with pytest.raises(ConfigError):
        worker(q, lambda job: None, time_limit=0)
    ids = {
        "default": q.submit({"body": b"1", "kind": "loop"}),  # the worker's 1 s
        "shorter": q.submit({"body": b"2", "kind": "loop"}, time_limit=0.3),
        "longer": q.submit({"body": b"3", "kind": "run-1.5s"}, time_limit=LONG),
        "returns-late": q.submit({"body": b"4", "kind": "return-when-told"}, time_limit=0.3),
    }
    limits: dict[str, float | None] = {}

    def handler(job: remotejob.Job) -> Assets | None:
        limits[job.id] = job.time_limit
        pause = threading.Event()
        kind = job.metadata["kind"]
        start = time.monotonic()
        while time.monotonic() - start < LONG:
            if kind == "loop":
                job.check()
            elif kind == "return-when-told" and job.cancelled:
                return output_asset(b"after the limit")  # the attempt is failed all the same
            elif kind == "run-1.5s":
                job.check()
                if time.monotonic() - start > 1.5:  # past the worker's default: its own limit rules
                    return output_asset(b"in time")
            pause.wait(0.02)
        return None

    drain(q, handler, concurrency=4, time_limit=1.0, cancel_grace=5)

    assert limits == {ids["default"]: 1.0, ids["shorter"]: 0.3, ids["longer"]: LONG, ids["returns-late"]: 0.3}
    st = {name: q.status(job_id) for name, job_id in ids.items()}
    assert st["longer"].state == "completed", st["longer"].error
    assert q.output(ids["longer"], "output").read() == b"in time"
    for name, limit in (("default", "1"), ("shorter", "0.3"), ("returns-late", "0.3")):
        error = st[name].error or ""
        assert st[name].state == "failed", f"{name}: {st[name].state}"
        assert f"time limit of {limit} s" in error and error.startswith("TimeLimitExceeded"), error
        assert no_output(q, ids[name]), f"{name} published past its time limit"


def test_a_cancel_after_the_time_limit_struck_decides_the_outcome(backend: BackendSetup) -> None:
    """A job past its limit, asked to stop, is cancelled before its handler stops: the cancel's
    outcome stands (not a failed attempt that is retried)."""
    q = connect(backend, max_attempts=2)
    job_id = q.submit({"body": b"x"}, time_limit=0.5)
    jobs: list[remotejob.Job] = []
    limited, release = threading.Event(), threading.Event()

    def handler(job: remotejob.Job) -> None:
        jobs.append(job)
        wait_until(lambda: job.stop_reason == "time-limit", what="the time limit to strike")
        limited.set()
        release.wait(LONG)
        job.check()

    try:
        with running(worker(q, handler, cancel_grace=LONG)):
            assert limited.wait(LONG)
            assert q.cancel(job_id, reason="cancelled late").state == "cancelled"
            wait_until(lambda: jobs[0].stop_reason == "cancelled", what="the cancel to reach the handler")
            release.set()
            wait_pending_gone(q)
    finally:
        release.set()

    assert len(jobs) == 1, "a cancelled job was retried"
    st = q.status(job_id)
    assert (st.state, st.error) == ("cancelled", "cancelled late")


def test_a_handler_that_ignores_its_time_limit_is_abandoned_and_its_late_result_discarded(
    backend: BackendSetup,
) -> None:
    q = connect(backend, max_attempts=1, visibility_timeout=5)
    job_id = q.submit({"body": b"stuck"}, time_limit=0.5)
    started, release, returned = threading.Event(), threading.Event(), threading.Event()
    threads: list[threading.Thread] = []
    runs: list[str] = []

    def handler(job: remotejob.Job) -> Assets:
        runs.append(job.id)
        threads.append(threading.current_thread())
        started.set()
        release.wait(LONG)  # ignores job.cancelled entirely
        returned.set()
        return output_asset(b"too late")

    try:
        with running(worker(q, handler, cancel_grace=0.5)):
            assert started.wait(LONG)
            failed = _outcome(q, job_id)
            assert not returned.is_set()
            release.set()
            assert returned.wait(LONG)
    finally:
        release.set()
    threads[0].join(LONG)  # the pool's thread ends once the discarded result was dealt with
    assert not threads[0].is_alive()

    assert runs == [job_id]
    st = q.status(job_id)
    assert st == failed, "the late return changed the recorded outcome"
    assert st.state == "failed" and st.error is not None and "time limit of 0.5 s" in st.error, st.error
    assert "cancel" not in st.error, f"nobody cancelled this job, yet its error says so: {st.error!r}"
    assert st.outputs == [] and no_output(q, job_id), "the abandoned handler's late result was published"
    assert pending_gone(q)


def test_an_abandoned_handler_does_not_keep_the_worker_from_its_other_jobs(backend: BackendSetup) -> None:
    """"The worker goes on without it": with one handler slot, a job taken after the stuck one
    was abandoned must still run, not wait (invisible to every other worker) behind it."""
    q = connect(backend, max_attempts=1, visibility_timeout=3)
    stuck = q.submit({"body": b"stuck", "kind": "stuck"}, time_limit=0.5)
    release = threading.Event()
    stuck_started = threading.Event()

    def handler(job: remotejob.Job) -> Assets:
        if job.metadata["kind"] == "stuck":
            stuck_started.set()
            release.wait(LONG)
        return output_asset(job.metadata["kind"].encode())

    try:
        with running(worker(q, handler, concurrency=1, cancel_grace=0.5)):
            assert stuck_started.wait(LONG)
            wait_until(lambda: q.status(stuck).done, what="the stuck job to be abandoned")
            after = q.submit({"body": b"next", "kind": "next"})
            try:
                st = _outcome(q, after, timeout=10)
            except AssertionError as exc:
                depth = q.message_queue.depth(q.queue_name("pending"))
                raise AssertionError(f"{exc}; the next job is {q.status(after).state}, the pending queue "
                                     f"{depth} (in flight: held by the worker, not run)") from None
            assert st.state == "completed"
            assert not release.is_set()
    finally:
        release.set()


# -- retry ---------------------------------------------------------------------------------------


def test_retry_of_a_failed_job_runs_it_again_under_the_same_id(backend: BackendSetup) -> None:
    q = connect(backend, max_attempts=1)
    job_id = q.submit({"body": b"flaky", "n": "7"})
    runs: list[tuple[str, str, bytes]] = []

    def handler(job: remotejob.Job) -> Assets:
        with job.open() as stream:
            runs.append((job.id, job.metadata["n"], stream.read()))
        if len(runs) == 1:
            raise ConnectionError("upstream hiccup")
        return output_asset(b"second time lucky")

    drain(q, handler)
    failed = q.status(job_id)
    assert failed.state == "failed" and failed.run == 0 and failed.history == []

    again = q.retry(job_id)

    assert (again.id, again.state, again.run) == (job_id, "pending", 1)
    [earlier] = again.history
    assert isinstance(earlier, remotejob.Attempt)
    assert earlier.state == "failed" and earlier.error is not None and "upstream hiccup" in earlier.error
    assert earlier.attempt == 1 and earlier.worker is not None
    drain(q, handler)
    final = q.wait(job_id, timeout=10)
    assert (final.state, final.run) == ("completed", 1)
    assert [a.state for a in final.history] == ["failed"]
    assert runs == [(job_id, "7", b"flaky")] * 2, "the retry did not carry the original input and metadata"
    assert q.output(job_id, "output").read() == b"second time lucky"
    with pytest.raises(NotRetryable):
        q.retry(job_id)  # completed
    told: list[str] = []
    while len(told) < 2 and (notice := q.next("completed", timeout=5)) is not None:
        told.append(str(notice.state))
        notice.acknowledge()
    assert sorted(told) == ["completed", "failed"], "each run sends its own notice"


def test_retry_of_a_cancelled_job_needs_its_message_dropped_then_runs_it(backend: BackendSetup) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"later"})
    ran: list[str] = []
    with pytest.raises(NotFound):
        q.retry(unique("job"))
    with pytest.raises(NotRetryable):
        q.retry(job_id)  # pending
    q.cancel(job_id, reason="not now")
    with pytest.raises(NotRetryable):
        q.retry(job_id)  # its message is still queued: no worker has dropped it yet
    # the same Queue (and so the same knowledge of the cancellation log) serves both runs
    drain(q, lambda job: ran.append(job.id))
    assert ran == [] and pending_gone(q)

    again = q.retry(job_id)

    assert (again.state, again.run) == ("pending", 1)
    assert [(a.state, a.error) for a in again.history] == [("cancelled", "not now")]
    with pytest.raises(NotRetryable):
        q.retry(job_id)  # pending again
    def run(job: remotejob.Job) -> Assets:
        ran.append(job.id)
        return output_asset(b"ran")

    drain(q, run)
    final = q.wait(job_id, timeout=10)
    assert ran == [job_id], "the retried run was dropped as cancelled, or ran twice"
    assert (final.state, final.run, [a.state for a in final.history]) == ("completed", 1, ["cancelled"])


def test_two_retries_at_once_send_one_run(backend: BackendSetup) -> None:
    q = connect(backend, max_attempts=1)
    job_id = q.submit({"body": b"once"})
    runs: list[str] = []

    def handler(job: remotejob.Job) -> Assets:
        runs.append(job.id)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return output_asset(b"ok")

    drain(q, handler)
    assert q.status(job_id).state == "failed"
    other = remotejob.connect(q.name, store=q.object_store, queues=q.message_queue, visibility_timeout=3,
                              wait_time=1, max_attempts=1)  # a second process, as it were
    gate = threading.Barrier(2, timeout=LONG)
    results: list[Any] = []

    def retry(queue: remotejob.Queue) -> None:
        gate.wait()
        try:
            results.append(queue.retry(job_id))
        except Exception as exc:  # noqa: BLE001 - collected and checked below
            results.append(exc)

    threads = [threading.Thread(target=retry, args=(queue,)) for queue in (q, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(LONG)

    won = [r for r in results if isinstance(r, remotejob.JobStatus)]
    lost = [r for r in results if not isinstance(r, remotejob.JobStatus)]
    assert len(won) == 1 and len(lost) == 1, results
    assert isinstance(lost[0], NotRetryable), repr(lost[0])
    drain(q, handler)
    assert runs == [job_id, job_id], "two retries at once ran the job twice"
    final = q.wait(job_id, timeout=10)
    assert (final.state, final.run, len(final.history)) == ("completed", 1, 1)


def test_a_redrive_after_a_retry_does_not_run_the_job_twice(backend: BackendSetup) -> None:
    """A job that failed its last attempt is in the dead-letter queue; retry() sends it again.
    A redrive then must not send the old dead letter as a second run of the same job."""
    q = connect(backend, max_attempts=1)
    job_id = q.submit({"body": b"x"})
    runs: list[str] = []

    def handler(job: remotejob.Job) -> Assets:
        runs.append(job.id)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        return output_asset(b"ok")

    drain(q, handler)
    assert [letter.job for letter in q.dead_letters()] == [job_id]
    q.retry(job_id)

    q.redrive()
    drain(q, handler)

    assert q.wait(job_id, timeout=10).state == "completed"
    assert runs == [job_id, job_id], f"the job ran {len(runs)} times: the redrive sent a second run"


# -- redrive and dead letters --------------------------------------------------------------------


@pytest.mark.backends("embedded", "aws-real-s3")  # above the protocols; moto's SQS is on both AWS settings
def test_redrive_leaves_a_cancelled_jobs_dead_letter_alone(backend: BackendSetup) -> None:
    """The real path to a cancelled job's dead letter: a consumer takes the job and dies
    (q.next() and nothing more), the job is cancelled, and the queue moves the message to the
    dead-letter queue on its next receive (max_attempts=1)."""
    q = connect(backend, max_attempts=1, visibility_timeout=1)
    job_id = q.submit({"body": b"taken, then lost"})
    taken = q.next("pending", timeout=10)
    assert taken is not None and taken.id == job_id  # ...and its consumer dies here
    assert q.cancel(job_id, reason="stop").state == "cancelled"

    # once visible again, a receive finds it received max_attempts times: the queue dead-letters it
    assert q.next("pending", timeout=4) is None
    letters = wait_until(lambda: [letter for letter in q.dead_letters() if letter.job == job_id],
                         timeout=10, what="the queue to dead-letter the job")
    assert len(letters) == 1

    assert q.redrive() == 0
    assert [letter.job for letter in q.dead_letters()] == [job_id], "redrive moved a cancelled job's letter"
    assert pending_gone(q)
    st = q.status(job_id)
    assert (st.state, st.error) == ("cancelled", "stop")


# -- faults --------------------------------------------------------------------------------------


def _pair(backend: BackendSetup, **options: Any) -> tuple[remotejob.Queue, remotejob.Queue, Faults]:
    """Two processes of one job system: a healthy one, and one whose requests go through faults."""
    store, queues = backend.make_store(), backend.make_queues()
    name = unique("q")
    options.setdefault("visibility_timeout", 3)
    options.setdefault("wait_time", 1)
    faults = Faults()
    q = remotejob.connect(name, store=store, queues=queues, **options)
    faulty = remotejob.connect(name, store=FaultyStore(store, faults), queues=FaultyQueues(queues, faults),
                               **options)
    return q, faulty, faults


def test_a_cancel_that_crashed_before_its_log_entry_still_stands_and_a_second_cancel_repairs_it(
    backend: BackendSetup,
) -> None:
    q, faulty, faults = _pair(backend)
    job_id = q.submit({"body": b"x"})
    faults.crash("store.put", match="/final")  # the final record is created, then the process dies

    with pytest.raises(Crash):
        faulty.cancel(job_id, reason="crashed midway")

    assert faults.fired("store.put") == 1
    st = q.status(job_id)
    assert (st.state, st.error) == ("cancelled", "crashed midway")
    again = q.cancel(job_id)
    assert (again.state, again.error) == ("cancelled", "crashed midway")
    ran: list[str] = []
    drain(q, lambda job: ran.append(job.id))
    assert ran == [], "the job ran although its cancel was repaired before any worker took it"
    assert pending_gone(q)
    assert notices(q, 1) == {job_id: "cancelled"}


def test_a_cancel_whose_claim_reply_was_lost_still_wins_and_reaches_workers(backend: BackendSetup) -> None:
    q, faulty, faults = _pair(backend)
    job_id = q.submit({"body": b"x"})
    faults.lose_reply("store.put", match="/final")

    said = faulty.cancel(job_id, reason="lost reply")

    assert (said.state, said.error) == ("cancelled", "lost reply") and faults.fired() == 1
    ran: list[str] = []
    drain(q, lambda job: ran.append(job.id))
    assert ran == [] and pending_gone(q)
    assert q.status(job_id).state == "cancelled"


# -- cost ----------------------------------------------------------------------------------------


def test_jobs_nobody_cancels_cost_no_more_s3_requests_than_before(backend: BackendSetup) -> None:
    """README "Performance and cost": a small job submitted with submit_many costs 1 PUT (its
    final record) + 1 GET (the requester's status read), plus one manifest per batch. The
    cancellation log adds one LIST per cancel_check interval (5 s by default) per busy worker,
    and nothing per job."""
    if backend.kind == "embedded":
        pytest.skip("counts AWS requests")
    from remotejob.backends.aws import request_counts

    q = backend.connect(wait_time=1, visibility_timeout=5)
    q.init()
    jobs = 20
    before = request_counts()
    ids = q.submit_many({"body": f"job {i}"} for i in range(jobs))
    w = remotejob.Worker(q, lambda job: None, burst=True, concurrency=4, handle_signals=False)  # defaults
    started = time.monotonic()
    w.run()
    elapsed = time.monotonic() - started
    assert [q.status(job_id).state for job_id in ids] == ["completed"] * jobs
    after = request_counts()
    made = {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}

    s3 = {op: n for op, n in made.items() if op.startswith("S3.")}
    lists = s3.pop("S3.ListObjectsV2", 0)
    journal = len(list(q.object_store.list("journal/")))  # at most one entry per second per process
    assert 1 <= journal <= 2 + elapsed
    assert s3 == {"S3.PutObject": 1 + jobs + journal, "S3.GetObject": jobs}, made  # manifest, finals, reads
    # the cancellation log's, one for the worker's prune of the journal, and the clock's first
    # check (one of timers/, one of schedules/; then one of each per minute)
    assert 1 <= lists <= 5 + int(elapsed / 5.0), f"{lists} LISTs in a {elapsed:.1f} s run of {jobs} jobs"
    for per_job in ("SQS.SendMessage", "SQS.DeleteMessage", "SQS.ChangeMessageVisibility"):
        assert made.get(per_job, 0) == 0, made
