"""The async API (``remotejob.aio``) natively: async handlers get what threaded ones get (a thousand
at once in one worker with heartbeats, retries, cancellation and the time limit as
``asyncio.CancelledError``, graceful shutdown), async and sync halves of a job system work
together, and waiting holds no thread. (The public-API contract suite runs through the async
API too: see the ``apis`` marker in tests/conftest.py and tests/aio_view.py.)

No pytest-asyncio: each test runs its coroutine with ``asyncio.run()`` (on a thread of its own),
under a timeout so a bug fails the test rather than hanging it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

import remotejob
import remotejob.aio
from remotejob import JobCancelled, JobFailed
from tests.aio_view import run_on_fresh_loop
from tests.conftest import BackendSetup, unique

T = TypeVar("T")

LONG = 30.0
"""Upper bound of any wait on something the test sets up itself (never reached when all is well)."""

Assets = list[dict[str, Any]]

WORKER_SETTINGS = ("embedded", "aws")
"""Where the async worker's tests run: what an async handler changes is the worker's side (its
steps run by ``aio.pool`` over the threaded worker's own lifecycle code), the same over any store;
SeaweedFS's S3 adds nothing here that the sync suites and the async contract suites (seed,
status, batch: all three settings) do not already show, and CI's 15 minutes are tight."""


def run(coro: Coroutine[Any, Any, T], timeout: float = 90.0) -> T:
    """Run ``coro`` on a fresh event loop; fail (not hang) past ``timeout`` seconds."""
    return run_on_fresh_loop(coro, timeout)


def options(backend: BackendSetup, **given: Any) -> dict[str, Any]:
    given.setdefault("store", backend.store_url())
    given.setdefault("queues", backend.queues_url())
    given.setdefault("visibility_timeout", 2)
    given.setdefault("wait_time", 1)
    return given


async def aconnect(backend: BackendSetup, name: str | None = None, **given: Any) -> remotejob.aio.Queue:
    """``remotejob.aio.connect()`` on this setting under a unique name."""
    return await remotejob.aio.connect(name or unique("q"), **options(backend, **given))


def worker(aq: remotejob.aio.Queue | remotejob.Queue, handler: Any, **given: Any) -> remotejob.Worker:
    given.setdefault("handle_signals", False)
    given.setdefault("retry_delay", 0)
    given.setdefault("cancel_check", 0.2)
    given.setdefault("cancel_grace", 1.0)
    return remotejob.Worker(aq, handler, **given)


async def pending_gone(aq: remotejob.aio.Queue) -> None:
    """Return once the pending queue holds no message (waiting, in flight or delayed)."""
    queues, name = aq.sync.message_queue, aq.queue_name("pending")
    async with asyncio.timeout(LONG):
        while True:
            depth = await asyncio.to_thread(queues.depth, name)
            if depth.waiting + depth.in_flight + depth.delayed == 0:
                return
            await asyncio.sleep(0.05)


async def forever() -> None:
    """Await something that never happens (until cancelled)."""
    await asyncio.Event().wait()


# -- one worker, a thousand async handlers at once -------------------------------------------------


@pytest.mark.backends("embedded")  # 1,000 jobs: moto on 2 CI cores is too slow for it
def test_a_thousand_async_handlers_run_at_once_in_one_worker_and_heartbeats_hold_them(
    backend: BackendSetup,
) -> None:
    count = 1000

    async def main() -> None:
        async with await aconnect(backend, visibility_timeout=2) as aq:
            ids = await aq.submit_many([{"body": f"job {i}".encode()} for i in range(count)])
            calls: Counter[str] = Counter()
            all_in, release = asyncio.Event(), asyncio.Event()

            async def handler(job: remotejob.aio.Job) -> Assets:
                calls[job.id] += 1
                if len(calls) == count:
                    all_in.set()
                await asyncio.wait_for(release.wait(), LONG)
                return [{"key": "output", "body": job.id.encode()}]

            w = worker(aq, handler, concurrency=count, max_jobs=count, burst=True)
            task = asyncio.create_task(w.run_async())
            await asyncio.wait_for(all_in.wait(), LONG)  # every one is in flight at once
            # a precondition: the jobs outlive their visibility timeout, so only heartbeats hold them
            await asyncio.sleep(2 * aq.visibility_timeout + 0.5)
            depth = await asyncio.to_thread(aq.sync.message_queue.depth, aq.queue_name("pending"))
            assert (depth.waiting, depth.in_flight) == (0, count), "a running job's message became visible"
            release.set()
            assert await asyncio.wait_for(task, LONG) == count

            assert calls == dict.fromkeys(ids, 1), "a job's handler ran more than once (or never)"
            states = await asyncio.gather(*(aq.status(job_id) for job_id in ids))
            assert Counter(st.state for st in states) == {"completed": count}
            assert [st.attempt for st in states] == [1] * count

    run(main(), timeout=120)


# -- retries, cancellation, the time limit ---------------------------------------------------------


@pytest.mark.backends(*WORKER_SETTINGS)
def test_an_async_handler_is_retried_and_after_max_attempts_fails_and_is_dead_lettered(
    backend: BackendSetup,
) -> None:
    async def main() -> None:
        async with await aconnect(backend, max_attempts=2) as aq:
            flaky = await aq.submit({"body": b"flaky"})
            broken = await aq.submit({"body": b"broken"})
            attempts: list[tuple[str, int]] = []

            async def handler(job: remotejob.aio.Job) -> Assets:
                attempts.append((job.id, job.receive_count))
                await asyncio.sleep(0)  # a real await between the start and the raise
                if job.id == broken or job.receive_count == 1:
                    raise ValueError(f"attempt {job.receive_count} of {job.id}")
                return [{"key": "output", "body": b"second time lucky"}]

            assert await aq.work(handler, burst=True, retry_delay=0, handle_signals=False) == 4

            assert sorted(attempts) == sorted([(flaky, 1), (flaky, 2), (broken, 1), (broken, 2)])
            st = await aq.wait(flaky, timeout=10)
            assert (st.state, st.attempt, st.error, st.outputs) == ("completed", 2, None, ["output"])
            async with aq.output(flaky, "output") as out:
                assert await out.read() == b"second time lucky"
            with pytest.raises(JobFailed) as failed:
                await aq.wait(broken, timeout=10)
            assert not isinstance(failed.value, JobCancelled)
            assert failed.value.error == f"ValueError: attempt 2 of {broken}"
            [dead] = await aq.dead_letters()
            assert dead.job == broken and "failed 2 attempts" in dead.reason

    run(main())


@pytest.mark.backends(*WORKER_SETTINGS)
def test_a_cancel_reaches_a_running_async_handler_as_cancelled_error_and_it_is_not_retried(
    backend: BackendSetup,
) -> None:
    async def main() -> None:
        async with await aconnect(backend, max_attempts=3) as aq:
            job_id = await aq.submit({"body": b"long"})
            runs: Counter[str] = Counter()
            started, saw_cancel = asyncio.Event(), asyncio.Event()

            async def handler(job: remotejob.aio.Job) -> Assets:
                runs[job.id] += 1
                await job.progress(1, 2, "half way")
                started.set()
                try:
                    await forever()
                except asyncio.CancelledError:
                    saw_cancel.set()
                    raise
                return [{"key": "output", "body": b"never"}]

            w = worker(aq, handler, grace_period=5)
            task = asyncio.create_task(w.run_async())
            try:
                await asyncio.wait_for(started.wait(), LONG)
                st = await aq.cancel(job_id, reason="not needed")
                assert (st.state, st.error) == ("cancelled", "not needed")
                await asyncio.wait_for(saw_cancel.wait(), LONG)
                with pytest.raises(JobCancelled) as cancelled:
                    await aq.wait(job_id, timeout=10)
                assert cancelled.value.error == "not needed"
                await pending_gone(aq)  # its message is gone: no attempt follows
            finally:
                w.stop()
                assert await asyncio.wait_for(task, LONG) == 1

            assert runs == {job_id: 1}, "the cancelled job ran again"
            final = await aq.status(job_id)
            assert (final.state, final.error, final.outputs) == ("cancelled", "not needed", [])
            assert final.progress is not None and final.progress.message == "half way"
            with pytest.raises(remotejob.NotFound):
                await aq.output(job_id, "output")

    run(main())


@pytest.mark.backends(*WORKER_SETTINGS)
def test_an_async_handler_past_its_time_limit_is_cancelled_and_the_attempt_fails_and_is_retried(
    backend: BackendSetup,
) -> None:
    async def main() -> None:
        async with await aconnect(backend, max_attempts=2) as aq:
            hangs = await aq.submit({"body": b"always hangs"}, time_limit=0.5)
            once = await aq.submit({"body": b"hangs once"}, time_limit=0.5)
            runs: list[tuple[str, int]] = []
            cancelled: Counter[str] = Counter()

            async def handler(job: remotejob.aio.Job) -> Assets:
                runs.append((job.id, job.receive_count))
                assert job.time_limit == 0.5
                if job.id == once and job.receive_count == 2:
                    return [{"key": "output", "body": b"in time"}]
                try:
                    await forever()
                except asyncio.CancelledError:
                    cancelled[job.id] += 1
                    raise
                return []

            await aq.work(handler, burst=True, concurrency=2, retry_delay=0, cancel_check=0.2,
                          cancel_grace=1.0, handle_signals=False)

            assert sorted(runs) == sorted([(hangs, 1), (hangs, 2), (once, 1), (once, 2)])
            assert cancelled == {hangs: 2, once: 1}
            with pytest.raises(JobFailed) as failed:
                await aq.wait(hangs, timeout=10)
            assert not isinstance(failed.value, JobCancelled)
            assert "TimeLimitExceeded" in failed.value.error and "time limit of 0.5 s" in failed.value.error
            st = await aq.wait(once, timeout=10)
            assert (st.state, st.attempt, st.outputs) == ("completed", 2, ["output"])
            assert [letter.job for letter in await aq.dead_letters()] == [hangs]

    run(main())


# -- graceful shutdown -----------------------------------------------------------------------------


@pytest.mark.backends(*WORKER_SETTINGS)
def test_stop_lets_async_handlers_finish_within_the_grace_and_releases_the_job_of_one_that_does_not(
    backend: BackendSetup,
) -> None:
    async def main() -> None:
        async with await aconnect(backend, visibility_timeout=5) as aq:
            quick = await aq.submit({"body": b"quick"})
            stuck = await aq.submit({"body": b"stuck"})
            started = {quick: asyncio.Event(), stuck: asyncio.Event()}
            finish_quick, stuck_cancelled = asyncio.Event(), asyncio.Event()

            async def handler(job: remotejob.aio.Job) -> Assets:
                started[job.id].set()
                if job.id == quick:
                    await asyncio.wait_for(finish_quick.wait(), LONG)
                    return [{"key": "output", "body": b"finished in the grace"}]
                try:
                    await forever()
                except asyncio.CancelledError:
                    stuck_cancelled.set()
                    raise
                return []

            w = worker(aq, handler, concurrency=2, grace_period=1.0)
            task = asyncio.create_task(w.run_async())
            for event in started.values():
                await asyncio.wait_for(event.wait(), LONG)
            w.stop()
            finish_quick.set()  # after the stop: it finishes within the grace period
            assert await asyncio.wait_for(task, LONG) == 2
            assert stuck_cancelled.is_set(), "the handler past the grace was not cancelled"

            assert (await aq.status(quick)).state == "completed"
            assert (await aq.status(stuck)).state != "completed"
            again: list[tuple[str, int]] = []

            async def second(job: remotejob.aio.Job) -> Assets:
                again.append((job.id, job.receive_count))
                return [{"key": "output", "body": b"done by the next worker"}]

            # released at once (visible again, not held until its 5 s visibility timeout ends)
            depth = await asyncio.to_thread(aq.sync.message_queue.depth, aq.queue_name("pending"))
            assert (depth.waiting, depth.in_flight) == (1, 0)
            assert await aq.work(second, burst=True, handle_signals=False) == 1
            assert again == [(stuck, 2)]
            st = await aq.wait(stuck, timeout=10)
            assert (st.state, st.attempt) == ("completed", 2)
            async with aq.output(stuck, "output") as out:
                assert await out.read() == b"done by the next worker"

    run(main())


# -- the async and the sync API on one job system --------------------------------------------------


@pytest.mark.backends(*WORKER_SETTINGS)
def test_an_async_submitter_and_a_sync_worker_work_together(backend: BackendSetup) -> None:
    name, opts = unique("q"), options(backend)

    async def main() -> None:
        async with await remotejob.aio.connect(name, **opts) as aq:
            job_id = await aq.submit({"body": b"from async", "filename": "a.txt"})
            q = remotejob.connect(name, **opts)

            def upper(job: remotejob.Job) -> Assets:
                assert job.metadata == {"filename": "a.txt"}
                with job.open() as body:
                    return [{"key": "output", "body": body.read().upper()}]

            taken = asyncio.create_task(asyncio.to_thread(q.work, upper, burst=True, handle_signals=False))
            st = await aq.wait(job_id, timeout=LONG, poll=0.2)
            assert await asyncio.wait_for(taken, LONG) == 1
            assert (st.state, st.outputs) == ("completed", ["output"])
            async with aq.output(job_id, "output") as out:
                assert await out.read() == b"FROM ASYNC"
            q.close()

    run(main())


@pytest.mark.backends(*WORKER_SETTINGS)
def test_a_sync_submitter_and_an_async_worker_work_together_and_its_assets_stream_back(
    backend: BackendSetup,
) -> None:
    name, opts = unique("q"), options(backend)
    q = remotejob.connect(name, **opts)
    body = bytes(range(256)) * 400  # 100 KiB: stored, not inline, and read in several chunks
    job_id = q.submit({"body": body, "filename": "in.bin"})

    async def main() -> None:
        async with await remotejob.aio.connect(name, **opts) as aq:

            async def handler(job: remotejob.aio.Job) -> Assets:
                assert job.metadata == {"filename": "in.bin"}
                async with job.open() as stream:
                    data = await stream.read()
                return [{"key": "output", "filename": "out.bin", "body": data[::-1]},
                        {"key": "log", "body": f"read {len(data)} bytes"}]

            assert await aq.work(handler, burst=True, handle_signals=False) == 1
            async with aq.output(job_id, "output") as out:
                assert out.size == len(body) and out.content_type == "application/octet-stream"
                chunks = [chunk async for chunk in out]
            assert b"".join(chunks) == body[::-1]
            assert await (await aq.output(job_id, "log")).read() == f"read {len(body)} bytes".encode()

    run(main())
    st = q.wait(job_id, timeout=10)
    assert sorted(st.outputs) == ["log", "output"]
    assert q.output(job_id, "output").read() == body[::-1]
    q.close()


# -- waiting holds no thread -----------------------------------------------------------------------


# thread use does not depend on the backend (status reads run in the pool on each), and 200 jobs
# on moto cost ~15 s on 2 cores
@pytest.mark.backends("embedded")
def test_two_hundred_waits_hold_no_thread_each_and_all_return_when_a_worker_runs(
    backend: BackendSetup,
) -> None:
    count, pool = 200, 8

    async def main() -> None:
        baseline = threading.active_count()
        async with await aconnect(backend, executor_threads=pool, visibility_timeout=10) as aq:
            ids = await aq.submit_many([{"body": f"{i}".encode()} for i in range(count)])
            waits = [asyncio.create_task(aq.wait(job_id, timeout=120, poll=0.5)) for job_id in ids]
            peak = threading.active_count()
            for _ in range(20):  # a window of ~2 s: every wait polls its status several times
                await asyncio.sleep(0.1)
                peak = max(peak, threading.active_count())
            assert not any(task.done() for task in waits), [t.exception() for t in waits if t.done()]
            assert peak < baseline + pool + 20, f"{peak - baseline} threads for {count} waits"
            # and the pool is not held by them: the connection still serves other calls
            late = await asyncio.wait_for(aq.submit({"body": b"late"}), LONG)
            assert (await asyncio.wait_for(aq.status(late), LONG)).state == "pending"
            waits.append(asyncio.create_task(aq.wait(late, timeout=120, poll=0.5)))
            ids.append(late)

            async def handler(job: remotejob.aio.Job) -> None:
                await asyncio.sleep(0)

            assert await aq.work(handler, burst=True, concurrency=50, handle_signals=False) >= count + 1
            done = await asyncio.wait_for(asyncio.gather(*waits), LONG)
            assert [st.state for st in done] == ["completed"] * (count + 1)
            assert [st.id for st in done] == ids

    run(main(), timeout=150)


@pytest.mark.backends("embedded")  # the connection's own state, the same on every setting
def test_a_closed_connection_says_so(backend: BackendSetup) -> None:
    async def main() -> None:
        async with await aconnect(backend) as aq:
            job_id = await aq.submit({"body": b"x"})
        with pytest.raises(RuntimeError, match="closed: connect again"):
            await aq.status(job_id)

    run(main())


@pytest.mark.backends("embedded")  # thin awaited wrappers: what they call is tested on every setting
def test_retry_redrive_purge_and_schedules_are_awaitable_too(backend: BackendSetup) -> None:
    async def main() -> None:
        async with await aconnect(backend, max_attempts=1) as aq:
            job_id = await aq.submit({"body": b"fails once"})

            async def fail(job: remotejob.aio.Job) -> None:
                raise RuntimeError("broken")

            assert await aq.work(fail, burst=True) == 1
            with pytest.raises(JobFailed):
                await aq.wait(job_id, timeout=LONG)
            assert [letter.job for letter in await aq.dead_letters()] == [job_id]
            assert (await aq.retry(job_id)).state == "pending"
            assert await aq.redrive() == 0  # the retry sent it again; its dead letter stays out of it

            async def succeed(job: remotejob.aio.Job) -> Assets:
                return [{"key": "output", "body": b"fine"}]

            assert await aq.work(succeed, burst=True) == 1
            assert (await aq.wait(job_id, timeout=LONG)).state == "completed"

            await aq.submit({"body": b"never runs"})
            await aq.purge("pending")
            assert await aq.next(timeout=0) is None

            schedule = await aq.every("nightly", cron="0 2 * * *")
            assert [s.name for s in await aq.schedules()] == ["nightly"]
            assert (await aq.schedule("nightly")).cron == schedule.cron
            assert await aq.unschedule("nightly") is True
            assert await aq.schedules() == []

    run(main())
