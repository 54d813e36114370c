"""remotejob never blocks the event loop: during a run of the async API (submit, store and
retrieve, status and wait, next and complete, cancel, an async worker on a fresh connection,
closing), no store or queue call ever runs on the loop's thread, and no event-loop callback of
remotejob's takes more than a few milliseconds of CPU.

The first is deterministic: the store and the queues are wrapped (as tests/faults.py wraps them)
to record the thread of every call, and of every read of a body. The second measures each
callback's CPU time on the loop's thread (CPU, not wall time, so a loaded machine does not
make it flaky; the garbage collector is paused meanwhile for the same reason).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import os
import threading
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import remotejob
import remotejob.aio
from remotejob.backends.base import StoredObject
from tests.aio_view import run_on_fresh_loop
from tests.conftest import BackendSetup, unique
from tests.faults import Faults, FaultyQueues, FaultyStore

# What a loop callback of remotejob's may spend on the CPU at once: a few ms.
CPU_LIMIT_S = 0.005

PACKAGE = os.path.dirname(remotejob.__file__) + os.sep
ROOT = os.path.dirname(os.path.dirname(remotejob.__file__)) + os.sep

# The AWS setting with real S3 adds nothing here: which thread a call runs on, and what runs on
# the loop, do not depend on the S3 server.
pytestmark = pytest.mark.backends("embedded", "aws")


class ThreadLog(Faults):
    """Faults with no rules: records which thread made each call (``threads``), and where a
    call on ``loop_thread`` came from (``on_loop``)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[tuple[str, int]] = []
        self.loop_thread: int | None = None
        self.on_loop: list[str] = []

    def invoke(self, op: str, real: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.note(op)
        return super().invoke(op, real, args, kwargs)

    def note(self, op: str) -> None:
        self.threads.append((op, threading.get_ident()))
        if threading.get_ident() == self.loop_thread:
            callers = [f"{frame.filename.removeprefix(ROOT)}:{frame.lineno} {frame.name}"
                       for frame in traceback.extract_stack(limit=14)[:-3]]
            self.on_loop.append(f"{op} from " + " < ".join(reversed(callers)))


class _RecordedBody(io.RawIOBase):
    """A stored body whose every read is recorded as ``store.read``."""

    def __init__(self, inner: Any, log: ThreadLog) -> None:
        super().__init__()
        self._inner = inner
        self._log = log

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._log.note("store.read")
        data = self._inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._log.note("store.close")
            self._inner.close()
        super().close()


class RecordingStore(FaultyStore):
    """Records the thread of every store call, and of every read of a body it returns."""

    def get(self, key: str) -> StoredObject:
        stored = super().get(key)
        assert isinstance(self.faults, ThreadLog)
        body = io.BufferedReader(_RecordedBody(stored.open(), self.faults))
        return StoredObject(stored.info, body)


async def workload(aq: remotejob.aio.Queue, fresh: Callable[[], Awaitable[remotejob.aio.Queue]],
                   tmp: Path) -> None:
    """A run of the async API on ``aq``; the jobs run on an async worker of ``fresh()``, a
    connection to the same job system whose first call is ``work()``."""
    await aq.init()
    key = await aq.store("in", {"body": b"stored input", "filename": "s.txt"})
    async with aq.retrieve("in", key) as stored:
        assert await stored.read() == b"stored input" and stored.metadata == {"filename": "s.txt"}
    large = bytes(range(256)) * 1024  # 256 KiB: stored, read in several chunks
    ids = await aq.submit_many([{"body": f"job {i}".encode()} for i in range(12)] + [{"body": large}])
    ids.append(await aq.trigger(key))
    doomed = await aq.submit({"body": b"doomed"})
    assert (await aq.status(ids[0])).state == "pending"
    assert (await aq.cancel(doomed, reason="not needed")).state == "cancelled"

    job = await aq.next(timeout=10)
    assert job is not None and job.id in ids
    async with job.open() as body:
        first = await body.read()
    await job.progress(1, 2, "half way")
    await job.extend(5)
    assert (await job.complete(assets=[{"key": "output", "body": first.upper()}])).state == "completed"

    async def handler(job: remotejob.aio.Job) -> list[dict[str, Any]]:
        copy = await job.download(tmp / f"input-{job.id}")
        async with job.open() as body:
            data = await body.read()
        assert copy.read_bytes() == data
        await job.progress(1, 1)
        return [{"key": "output", "body": data[::-1]}]

    waits = asyncio.gather(*(aq.wait(job_id, timeout=60, poll=0.2) for job_id in ids))
    async with await fresh() as worker_side:
        taken = await worker_side.work(handler, burst=True, concurrency=4, handle_signals=False)
    assert taken >= len(ids) - 1
    assert [st.state for st in await asyncio.wait_for(waits, 60)] == ["completed"] * len(ids)

    big = ids[len(ids) - 2]
    async with aq.output(big, "output") as out:
        chunks = [chunk async for chunk in out]
    assert b"".join(chunks) in (large[::-1], large.upper())
    saved = await (await aq.output(ids[1], "output")).save(tmp / "saved")
    assert saved.read_bytes() in (b"1 boj", b"JOB 1")
    assert await aq.dead_letters() == []
    with pytest.raises(remotejob.JobCancelled):
        await aq.wait(doomed, timeout=10)


def test_no_store_or_queue_call_ever_runs_on_the_event_loop_thread(
    backend: BackendSetup, tmp_path: Path
) -> None:
    log = ThreadLog()
    store = RecordingStore(backend.make_store(), log)
    queues = FaultyQueues(backend.make_queues(), log)
    name = unique("q")

    def connect() -> remotejob.aio.Queue:
        sync = remotejob.connect(name, store=store, queues=queues, visibility_timeout=2, wait_time=1)
        return remotejob.aio.Queue(sync)

    async def fresh() -> remotejob.aio.Queue:
        return connect()

    async def main() -> int:
        log.loop_thread = threading.get_ident()
        async with connect() as aq:
            await workload(aq, fresh, tmp_path)
        return threading.get_ident()

    loop_thread = run_on_fresh_loop(main(), 90)

    ops = Counter(op for op, _ in log.threads)
    assert {"store.put", "store.get", "store.read", "queue.send_batch", "queue.receive"} <= set(ops), ops
    on_loop = Counter(op for op, thread in log.threads if thread == loop_thread)
    assert not on_loop, f"backend calls on the event loop's thread: {dict(on_loop)} (of {dict(ops)}): " + (
        "; ".join(log.on_loop))


# -- the CPU a loop callback takes -----------------------------------------------------------------


def _frames(callback: Any) -> list[str]:
    """Where a callback's code is: for a task's step, every coroutine of the chain it is
    suspended in (``file:function``); else the function's."""
    task = getattr(callback, "__self__", None)
    found: list[str] = []
    if isinstance(task, asyncio.Task):
        coro: Any = task.get_coro()
        while coro is not None:
            code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
            if code is None:
                break
            found.append(f"{code.co_filename}:{code.co_qualname}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        return found
    while isinstance(callback, functools.partial):
        callback = callback.func
    code = getattr(getattr(callback, "__func__", callback), "__code__", None)
    return [f"{code.co_filename}:{code.co_qualname}" if code is not None else repr(callback)]


def test_no_remotejob_callback_takes_more_than_a_few_ms_of_cpu_on_the_loop(
    backend: BackendSetup, tmp_path: Path
) -> None:
    loop_thread = -1  # the loop's, once main() runs on it
    spent: list[tuple[float, list[str]]] = []
    run = asyncio.events.Handle._run

    def timed(handle: asyncio.Handle) -> None:
        if threading.get_ident() != loop_thread:
            run(handle)
            return
        callback = handle._callback  # type: ignore[attr-defined]
        before = _frames(callback)
        start = time.thread_time()
        try:
            run(handle)
        finally:
            took = time.thread_time() - start
            spent.append((took, before + [f for f in _frames(callback) if f not in before]))

    name = unique("q")
    options: dict[str, Any] = {"store": backend.store_url(), "queues": backend.queues_url(),
                               "visibility_timeout": 2, "wait_time": 1}

    async def fresh() -> remotejob.aio.Queue:
        return await remotejob.aio.connect(name, **options)

    async def main() -> None:
        nonlocal loop_thread
        loop_thread = threading.get_ident()
        async with await fresh() as aq:
            await workload(aq, fresh, tmp_path)

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
    gc.disable()
    try:
        run_on_fresh_loop(main(), 90)
    finally:
        gc.enable()
        asyncio.events.Handle._run = run  # type: ignore[method-assign]

    ours = [(took, where) for took, where in spent if any(PACKAGE in frame for frame in where)]
    assert len(ours) > 100, f"only {len(ours)} callbacks of remotejob's were timed"
    slow = sorted(((took, where) for took, where in ours if took > CPU_LIMIT_S), key=lambda s: s[0],
                  reverse=True)
    assert not slow, "remotejob held the event loop: " + "; ".join(
        f"{took * 1000:.1f} ms CPU in {' > '.join(where)}" for took, where in slow[:5])
