"""Asyncio (issue 16): one process running a thousand async handlers at once, against threads.

    .venv/bin/python -m bench.aio [--quick] [--settings embedded,aws,aws-real-s3]
                                  [--out bench/results/aio.json] [--no-report]

merges its results into ``bench/results/latest.json`` (when a full run saved one) and renders
BENCHMARKS.md again (section "Asyncio"). The AWS settings run on servers it starts itself on
127.0.0.1: ``aws`` is S3 and SQS on moto, ``aws-real-s3`` S3 on SeaweedFS and SQS on moto.

On each setting, twice (an ``async def`` handler, then a plain ``def`` one, on a fresh job system
each time):

1. **Submit**: ``--jobs`` jobs with ``await aq.submit_many(...)`` in chunks of :data:`CHUNK`
   (:data:`CHUNKS_AT_ONCE` chunks in flight), counting ``SendMessageBatch`` requests (on AWS
   botocore's count, ``remotejob.backends.aws.request_counts``; embedded: the queue object's
   ``send_batch`` calls, counted by wrapping its methods) and the messages per request.
2. **Work**: one ``remotejob.Worker`` in this process, ``concurrency`` handlers that each sleep
   ``--sleep`` seconds (``await asyncio.sleep`` / ``time.sleep``), in burst mode (it returns once
   the queue is empty and every job ended); the visibility timeout is short enough that the
   heartbeat must extend every job (its interval, a third of it, is shorter than the sleep).
   The async worker runs on this process's event loop (``await worker.run_async()``), the
   threaded one on a thread (``worker.run()``).

Measured: jobs/s (from the first handler start to the last job's completion record), this
process's CPU seconds per job over the worker's run (``bench.cpu``: every thread, servers not
included), the peak number of handlers inside the handler at once, the process's peak thread
count (``/proc/self/status``, the sampler itself not counted), the longest single callback of the
event loop while the async worker ran (every ``asyncio.Handle._run`` timed, wall and its thread's
CPU) and the backend calls
made on the loop's thread (store and queue methods, counted by wrapping them: should be 0), the
heartbeat's visibility extensions per job, the messages received again (redelivered: a heartbeat
came too late), the warnings remotejob logged, and whether every job ran once and ended
``completed`` on its first delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import logging
import os
import re
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import remotejob
from bench import cpu, report
from tests import servers

SETTINGS = ("embedded", "aws", "aws-real-s3")
CHUNK = 100
"""Jobs per ``submit_many`` call."""
CHUNKS_AT_ONCE = 4
"""``submit_many`` calls in flight at once."""
FULL = {"jobs": 2000, "sleep": 2.0, "concurrency": 1000, "visibility": 3}
QUICK = {"jobs": 300, "sleep": 1.0, "concurrency": 300, "visibility": 2}
BUCKET = "aio-bench"
PLAN_KEYS = ("measured", "quick", "jobs", "sleep_s", "concurrency", "visibility_timeout", "command")
STORE_OPS = ("ensure", "put", "get", "head", "copy", "delete", "list")
QUEUE_OPS = ("ensure", "send", "send_batch", "receive", "delete", "delete_batch", "change_visibility",
             "change_visibility_batch", "depth", "purge")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- what is measured -------------------------------------------------------------------------


class Calls:
    """Counts the calls of a store's and a queue's methods (by wrapping them on the instances,
    so the objects keep their types), the messages sent in batches, and the calls made on one
    thread (the event loop's)."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()
        self.batch_messages = 0
        self.received = 0
        self.received_again = 0
        """Messages received with a receive count above 1 (delivered before)."""
        self.extended = 0
        """Entries of ``change_visibility_batch`` calls with a non-zero timeout (heartbeat extensions)."""
        self.heartbeat: Counter[str] = Counter()
        """Calls made by the worker's heartbeat thread, by op."""
        self.heartbeat_busy = 0.0
        self.heartbeat_longest = 0.0
        self.on_loop: Counter[str] = Counter()
        self.loop_thread: int | None = None
        self._lock = threading.Lock()

    def wrap(self, obj: Any, kind: str, names: tuple[str, ...]) -> None:
        for name in names:
            method = getattr(obj, name, None)
            if method is not None:
                setattr(obj, name, self._counted(method, f"{kind}.{name}"))

    def _counted(self, method: Callable[..., Any], op: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.ops[op] += 1
                if op == "queue.send_batch":
                    self.batch_messages += len(args[1] if len(args) > 1 else kwargs["messages"])
                elif op == "queue.change_visibility_batch":
                    entries = args[1] if len(args) > 1 else kwargs["entries"]
                    self.extended += sum(1 for _, seconds in entries if seconds)
                if self.loop_thread is not None and threading.get_ident() == self.loop_thread:
                    self.on_loop[op] += 1
            beat = threading.current_thread().name == "remotejob-heartbeat"
            start = time.perf_counter()
            result = method(*args, **kwargs)
            if beat:
                took = time.perf_counter() - start
                with self._lock:
                    self.heartbeat[op] += 1
                    self.heartbeat_busy += took
                    self.heartbeat_longest = max(self.heartbeat_longest, took)
            if op == "queue.receive":
                with self._lock:
                    self.received += len(result)
                    self.received_again += sum(1 for m in result if m.receive_count > 1)
            return result

        return counted

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.ops)

    def tallies(self) -> dict[str, int]:
        with self._lock:
            return {"received": self.received, "received_again": self.received_again,
                    "extended": self.extended, **{f"beat:{k}": v for k, v in self.heartbeat.items()}}


class Warnings(logging.Handler):
    """Counts the warnings (and worse) remotejob logs, by their first words."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        text = re.sub(r"'?\b[0-9a-f]{20,}(-\d+)?\b'?", "<id>", record.getMessage())  # job ids, receipts
        self.seen[f"{record.levelname}: {text[:70]}"] += 1

    def __enter__(self) -> Warnings:
        logging.getLogger("remotejob").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("remotejob").removeHandler(self)


class Threads:
    """The process's peak thread count while running, sampled every 50 ms (itself not counted)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-thread-sampler", daemon=True)

    @staticmethod
    def now() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
        return threading.active_count()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.now() - 1)

    def __enter__(self) -> Threads:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def describe(handle: asyncio.Handle) -> str:
    """What a handle ran: the task (and its coroutine) for a task step, else the handle."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if isinstance(task, asyncio.Task):
        return f"task {task.get_name()!r} ({getattr(task.get_coro(), '__qualname__', '?')})"
    return repr(handle)[:200]


@contextmanager
def loop_watch() -> Iterator[dict[str, Any]]:
    """Time every callback the event loops of this process run (``asyncio.Handle._run``): the
    longest, what it was, and how many took over 10 and 100 ms; and the longest garbage
    collection (any thread), which a callback may have run into."""
    original = asyncio.events.Handle._run
    out: dict[str, Any] = {"worst_s": 0.0, "worst": "", "worst_cpu_s": 0.0, "worst_cpu": "",
                           "over_10ms": 0, "over_100ms": 0, "callbacks": 0}

    def timed(handle: asyncio.Handle) -> None:
        start, start_cpu = time.perf_counter(), time.thread_time()
        try:
            original(handle)
        finally:
            took, took_cpu = time.perf_counter() - start, time.thread_time() - start_cpu
            out["callbacks"] += 1
            if took > 0.01:
                out["over_10ms"] += 1
                if took > 0.1:
                    out["over_100ms"] += 1
            if took > out["worst_s"]:
                out["worst_s"] = took
                out["worst"] = describe(handle)
            if took_cpu > out["worst_cpu_s"]:
                out["worst_cpu_s"] = took_cpu
                out["worst_cpu"] = describe(handle)

    gc_started: list[float] = []

    def collected(phase: str, info: dict[str, Any]) -> None:  # the longest garbage collection
        if phase == "start":
            gc_started[:] = [time.perf_counter()]
        elif gc_started:
            took = time.perf_counter() - gc_started[0]
            if took > out.get("worst_gc_s", 0.0):
                out["worst_gc_s"], out["worst_gc_generation"] = took, info.get("generation")

    asyncio.events.Handle._run = timed  # type: ignore[method-assign,assignment]
    gc.callbacks.append(collected)
    try:
        yield out
    finally:
        gc.callbacks.remove(collected)
        asyncio.events.Handle._run = original  # type: ignore[method-assign]


def http_counts() -> dict[str, int]:
    from remotejob.backends.aws import request_counts

    return request_counts()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0)}


# -- one run ----------------------------------------------------------------------------------


async def submit(aq: Any, jobs: int) -> list[str]:
    """``jobs`` jobs with ``submit_many``, :data:`CHUNKS_AT_ONCE` chunks of :data:`CHUNK` in flight."""
    gate = asyncio.Semaphore(CHUNKS_AT_ONCE)

    async def chunk(n: int) -> list[str]:
        async with gate:
            ids: list[str] = await aq.submit_many([{"body": b"x"}] * n)
            return ids

    sizes = [min(CHUNK, jobs - i) for i in range(0, jobs, CHUNK)]
    return [job_id for ids in await asyncio.gather(*(chunk(n) for n in sizes)) for job_id in ids]


class Handlers:
    """The async and the threaded handler: sleep, and note starts, runs and the peak in flight."""

    def __init__(self, sleep_s: float) -> None:
        self.sleep_s = sleep_s
        self.runs: Counter[str] = Counter()
        self.first_start: float | None = None
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    def _enter(self, job_id: str) -> None:
        with self._lock:
            if self.first_start is None:
                self.first_start = time.time()
            self.runs[job_id] += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def async_handler(self, job: Any) -> None:
        self._enter(job.id)
        try:
            await asyncio.sleep(self.sleep_s)
        finally:
            self._leave()

    def threaded_handler(self, job: remotejob.Job) -> None:
        self._enter(job.id)
        try:
            time.sleep(self.sleep_s)
        finally:
            self._leave()


async def one_run(connect: Callable[[], Awaitable[Any]], kind: str, plan: dict[str, Any],
                  aws: bool) -> dict[str, Any]:
    jobs, concurrency = plan["jobs"], plan["concurrency"]
    aq = await connect()
    try:
        await aq.init()
        calls = Calls()
        calls.wrap(aq.sync.object_store, "store", STORE_OPS)
        calls.wrap(aq.sync.message_queue, "queue", QUEUE_OPS)
        out: dict[str, Any] = {"kind": kind, "concurrency": concurrency, "jobs": jobs,
                               "sleep_s": plan["sleep"], "visibility_timeout": aq.visibility_timeout}

        # 1. submit
        ops0, http0, t0 = calls.snapshot(), http_counts(), time.monotonic()
        ids = await submit(aq, jobs)
        submit_s = time.monotonic() - t0
        ops1, http1 = calls.snapshot(), http_counts()
        sends = ops1["queue.send_batch"] - ops0["queue.send_batch"]
        http_sends = delta(http0, http1).get("SQS.SendMessageBatch")
        out["submit"] = {
            "seconds": round(submit_s, 3), "jobs_per_s": round(jobs / submit_s, 1),
            "send_batch_calls": sends,
            "messages_per_send": round(calls.batch_messages / sends, 2) if sends else None,
            "send_message_batch_requests": http_sends,
            "send_requests_per_job": round(((http_sends or 0) if aws else sends) / jobs, 3),
            "counted_by": "botocore (SQS.SendMessageBatch)" if aws else "queue.send_batch calls",
            "http": delta(http0, http1) if aws else None,
        }
        log(f"  {kind}: submitted {jobs} in {submit_s:.1f} s, {out['submit']['send_requests_per_job']} "
            f"send requests per job, {out['submit']['messages_per_send']} messages per send")

        # 2. work
        handlers = Handlers(plan["sleep"])
        handler: Any = handlers.async_handler if kind == "async" else handlers.threaded_handler
        options = {"concurrency": concurrency, "burst": True, "handle_signals": False,
                   "schedule_check": None, "dead_letter_check": None}
        worker = remotejob.Worker(aq if kind == "async" else aq.sync, handler, **options)
        loop = asyncio.get_running_loop()
        calls.loop_thread = threading.get_ident()
        threads_before = Threads.now()
        ops_w0, http_w0, tallies0 = calls.snapshot(), http_counts(), calls.tallies()
        beat_busy0 = calls.heartbeat_busy
        limit = plan["limit"]  # a run that would not end is stopped and reported, not waited for
        with Threads() as threads, loop_watch() as stalls, Warnings() as warnings:
            cpu0, started = cpu.snapshot(), time.monotonic()
            if kind == "async":
                run: asyncio.Future[int] = asyncio.ensure_future(worker.run_async())
            else:
                run = loop.run_in_executor(None, worker.run)
            try:
                taken = await asyncio.wait_for(asyncio.shield(run), limit)
            except TimeoutError:
                worker.stop(now=True)
                taken = await run
                out["timed_out_after_s"] = limit
            except asyncio.CancelledError:  # interrupted (Ctrl-C): do not wait for the worker's end
                worker.stop(now=True)
                raise
            run_s = time.monotonic() - started
            cpu1 = cpu.snapshot()
        calls.loop_thread = None
        ops_w = calls.snapshot() - ops_w0
        tallies = {k: v - tallies0.get(k, 0) for k, v in calls.tallies().items()}
        http_w = delta(http_w0, http_counts())

        # 3. did every job complete, once?
        statuses = await asyncio.gather(*(aq.status(job_id) for job_id in ids), return_exceptions=True)
        read = [s for s in statuses if isinstance(s, remotejob.JobStatus)]
        errors = [type(s).__name__ for s in statuses if isinstance(s, BaseException)]
        states = Counter(s.state for s in read) + Counter(errors)
        attempts = Counter(s.attempt for s in read)
        finished = [s.updated for s in read if s.state == "completed"]
        first = handlers.first_start
        wall = (max(finished) - first) if finished and first is not None else None
        used = cpu.between(cpu0, cpu1)
        out.update({
            "taken": taken,
            "run_s": round(run_s, 3),
            "wall_s": round(wall, 3) if wall is not None else None,
            "jobs_per_s": round(len(finished) / wall, 1) if wall else None,
            "cpu_s": round(used["cpu_s"], 3), "user_s": round(used["user_s"], 3),
            "sys_s": round(used["sys_s"], 3),
            "cpu_ms_per_job": round(1000 * used["cpu_s"] / jobs, 3),
            "peak_in_flight": handlers.peak,
            "threads_before": threads_before,
            "threads_peak": threads.peak,
            "loop": ({k: (round(v, 4) if isinstance(v, float) else v) for k, v in stalls.items()}
                     if kind == "async" else None),
            "backend_calls_on_loop": (dict(calls.on_loop) if kind == "async" else None),
            "states": dict(states),
            "attempts": {str(k): v for k, v in sorted(attempts.items(), key=lambda kv: str(kv[0]))},
            "runs_max": max(handlers.runs.values()) if handlers.runs else 0,
            "ran": len(handlers.runs),
            "exactly_once": (states.get("completed") == jobs and len(handlers.runs) == jobs
                             and max(handlers.runs.values()) == 1 and attempts.get(1) == jobs),
            "heartbeat_calls_per_job": round((ops_w["queue.change_visibility_batch"]
                                              + ops_w["queue.change_visibility"]) / jobs, 3),
            "extensions_per_job": round(tallies["extended"] / jobs, 3),
            "received": tallies["received"], "received_again": tallies["received_again"],
            "warnings": dict(warnings.seen.most_common(12)),
            "heartbeat_thread": {"calls": {k[5:]: v for k, v in tallies.items()
                                           if k.startswith("beat:") and v},
                                 "busy_s": round(calls.heartbeat_busy - beat_busy0, 3),
                                 "longest_call_s": round(calls.heartbeat_longest, 3)},
            "calls_per_job": {k: round(v / jobs, 3) for k, v in sorted(ops_w.items())},
            "http_per_job": ({k: round(v / jobs, 3) for k, v in http_w.items()} if aws else None),
        })
        stall = f"{out['loop']['worst_s'] * 1000:.1f} ms" if out["loop"] else "n/a"
        log(f"  {kind}: {out['jobs_per_s']} jobs/s, {out['cpu_ms_per_job']} CPU ms/job, peak {handlers.peak} "
            f"in flight, {threads.peak} threads, worst loop callback {stall}, states {dict(states)}, "
            f"exactly once: {out['exactly_once']}, received {tallies['received']} messages "
            f"({tallies['received_again']} redelivered), warnings {dict(warnings.seen)}")
        return out
    finally:
        await aq.close()


async def run_setting(setting: str, connect: Callable[[], Awaitable[Any]],
                      plan: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind in ("async", "threaded"):
        log(f"{setting}: {kind} handlers, {plan['jobs']} jobs, concurrency {plan['concurrency']}")
        started = time.monotonic()
        try:
            out[kind] = await one_run(connect, kind, plan, aws=setting != "embedded")
        except Exception as exc:  # noqa: BLE001 - one failed run is reported, the others still run
            reason = f"{type(exc).__name__}: {exc}".strip()
            log(f"{setting} {kind} FAILED: {reason}")
            out[kind] = {"error": reason, "traceback": traceback.format_exc(limit=8)}
        out[kind]["bench_s"] = round(time.monotonic() - started, 1)
    return out


# -- settings ---------------------------------------------------------------------------------


def aws_env(s3: str, sqs: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL_S3": s3, "AWS_ENDPOINT_URL_SQS": sqs,
        "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
        "AWS_REGION": servers.REGION, "AWS_DEFAULT_REGION": servers.REGION,
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK['jobs']} jobs, {QUICK['sleep']:g} s "
                        f"each, concurrency {QUICK['concurrency']}")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help="comma-separated: embedded, aws (moto), aws-real-s3 (SeaweedFS + moto SQS)")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--sleep", type=float, help="seconds each handler sleeps")
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--visibility", type=int, help="the queues' visibility timeout, seconds")
    parser.add_argument("--executor-threads", type=int, default=32)
    parser.add_argument("--limit", type=float, default=900.0,
                        help="seconds a worker may run before it is stopped (and the run reported as such)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/aio.json"))
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="Do not merge into bench/results/latest.json and BENCHMARKS.md.")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = set(chosen) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown settings: {', '.join(sorted(unknown))} (choose from {', '.join(SETTINGS)})")
    plan: dict[str, Any] = {**(QUICK if args.quick else FULL), "limit": args.limit}
    for key in ("jobs", "sleep", "concurrency", "visibility"):
        if getattr(args, key) is not None:
            plan[key] = getattr(args, key)
    begun = time.monotonic()
    result: dict[str, Any] = {
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "quick": args.quick,
        "jobs": plan["jobs"], "sleep_s": plan["sleep"], "concurrency": plan["concurrency"],
        "visibility_timeout": plan["visibility"], "executor_threads": args.executor_threads,
        "chunk": CHUNK, "chunks_at_once": CHUNKS_AT_ONCE, "cpus": os.cpu_count(),
        "command": "python -m bench.aio" + (" --quick" if args.quick else "")
                   + ("" if chosen == list(SETTINGS) else f" --settings {','.join(chosen)}")
                   + "".join(f" --{key} {getattr(args, key):g}" for key in ("jobs", "sleep", "concurrency",
                                                                           "visibility")
                             if getattr(args, key) is not None),
    }
    import remotejob.aio as aio

    started: list[servers.Server] = []
    with tempfile.TemporaryDirectory(prefix="bench-aio-") as tmp:
        root = Path(tmp)

        def connector(setting: str, s3: servers.Server | None = None,
                      sqs: servers.Server | None = None) -> Callable[[], Awaitable[Any]]:
            async def connect() -> Any:
                name = f"aio{uuid.uuid4().hex[:10]}"
                options = {"visibility_timeout": plan["visibility"], "wait_time": 2,
                           "executor_threads": args.executor_threads}
                if setting == "embedded":
                    return await aio.connect(name, store=str(root / "store"), queues=str(root / "queues.db"),
                                             **options)
                if s3 is None or sqs is None:
                    raise RuntimeError(f"{setting}: its servers were not started")
                os.environ.update(aws_env(s3.endpoint, sqs.endpoint))  # read when the clients are made
                return await aio.connect(name, store=f"s3://{BUCKET}/{name}", queues="sqs://", **options)
            return connect

        try:
            moto = weed = None
            if {"aws", "aws-real-s3"} & set(chosen):
                log("starting moto ...")
                moto = servers.start_moto()
                started.append(moto)
                servers._client("s3", moto.endpoint).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
            if "aws-real-s3" in chosen:
                log("starting SeaweedFS ...")
                weed = servers.start_seaweedfs()
                started.append(weed)
                servers._client("s3", weed.endpoint).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
            for setting in chosen:
                s3 = moto if setting == "aws" else weed
                connect = connector(setting, s3, moto)
                began = time.monotonic()
                result[setting] = asyncio.run(run_setting(setting, connect, plan))
                result[setting]["bench_s"] = round(time.monotonic() - began, 1)
                result[setting]["plan"] = {k: result[k] for k in PLAN_KEYS}
        except KeyboardInterrupt:
            result["interrupted"] = True
            log("interrupted: the settings finished so far are saved, nothing is merged")
        finally:
            for server in started:
                server.stop()
    result["wall_s"] = round(time.monotonic() - begun, 1)
    log(f"done in {result['wall_s']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.report and not result.get("interrupted") and report.merge("aio", with_earlier(result, chosen)):
        log("merged into bench/results/latest.json; BENCHMARKS.md rendered again")


def with_earlier(result: dict[str, Any], chosen: list[str]) -> dict[str, Any]:
    """``result`` plus the settings this run left out, as an earlier run saved them (each keeps
    its own ``plan``: jobs, concurrency, sleep, when measured), so that ``--settings`` can run
    one setting again without dropping the others from the report."""
    latest = report.REPO / "bench" / "results" / "latest.json"
    try:
        earlier = json.loads(latest.read_text()).get("aio") or {}
    except (OSError, ValueError):
        earlier = {}
    merged = dict(result)
    for setting in SETTINGS:
        part = earlier.get(setting)
        if setting in chosen or not isinstance(part, dict):
            continue
        merged[setting] = {"plan": {k: earlier.get(k) for k in PLAN_KEYS}, **part}
    return merged


if __name__ == "__main__":
    main()
