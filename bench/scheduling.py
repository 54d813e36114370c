"""When and in what order (issue 14): how late delayed jobs start, what they cost in requests,
how priorities share a saturated worker, and what a dedup key and a periodic tick cost.

    .venv/bin/python -m bench.scheduling [--jobs 200] [--out bench/results/scheduling.json] [--no-report]

merges its results into ``bench/results/latest.json`` (when a full run saved one) and renders
BENCHMARKS.md again (section "Scheduling"). Runs on the embedded setting and on a moto server it
starts itself (SQS and S3 over HTTP on 127.0.0.1).

1. **Lateness**: ``--jobs`` jobs with due times spread over the next seconds, once held by the
   queue itself (``delay`` within the queue's own limit) and once parked in the store (the limit
   lowered to 10 s so the parking path runs in seconds, and the workers' ``schedule_check`` to
   2 s: a fifth of the limit, where the defaults, 60 s of 15 minutes, are a fifteenth). An idle worker
   (concurrency 8) runs them; lateness = the handler's start - the job's due time. Early starts
   and runs per job are counted (they must be 0 and 1).
2. **Requests per job** over a job's whole life (submit, dispatch, run, outcome, one status
   read), counted by wrapping the store and the queues: a job without delay, one held by the
   queue, one parked, one submitted with a dedup key, a periodic job's tick.
3. **Priorities**: 3 x N jobs (N high, N normal, N low) waiting before one worker (concurrency 1,
   no prefetch) starts: each level's mean position in the run order and when its last job ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import remotejob
from bench import report
from tests import servers
from tests.faults import Faults, FaultyQueues, FaultyStore

SPREAD_S = 8.0
"""Due times are spread over this many seconds after a lead of :data:`LEAD_S`."""
LEAD_S = 12.0
PARKED_LIMIT_S = 10
"""The queue's own delay limit in the parked runs (SQS's is 900 s): every job is parked first."""
CHECK_S = 2.0
"""The clock's check in the parked runs: a fifth of the limit (by default 60 s, a fifteenth)."""


class Starts:
    """A handler that notes when each job started, and how often."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.order: list[str] = []
        self.runs: Counter[str] = Counter()
        self.lock = threading.Lock()

    def __call__(self, job: remotejob.Job) -> None:
        now = time.time()
        with self.lock:
            self.started.setdefault(job.id, now)
            self.order.append(job.id)
            self.runs[job.id] += 1


@contextmanager
def worker(q: remotejob.Queue, handler: Callable[[remotejob.Job], None], **options: Any) -> Iterator[None]:
    w = remotejob.Worker(q, handler, handle_signals=False, **options)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        w.stop()
        thread.join(60)


def wait_all(q: remotejob.Queue, ids: list[str], timeout: float = 120.0) -> None:
    for job_id in ids:
        q.wait(job_id, timeout=timeout, poll=0.2)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def lateness(connect: Callable[..., remotejob.Queue], jobs: int, parked: bool) -> dict[str, Any]:
    q = connect(wait_time=20)
    if parked:
        q.context.max_delay_s = PARKED_LIMIT_S
    starts = Starts()
    with worker(q, starts, concurrency=8, schedule_check=CHECK_S):
        time.sleep(1.0)  # the worker is idle and long-polling before the first submit
        base = time.time() + LEAD_S
        ids, due = [], {}
        for i in range(jobs):
            when = base + SPREAD_S * i / jobs
            job_id = q.submit({"body": b"x"}, delay=when - time.time())
            ids.append(job_id)
            due[job_id] = when
        wait_all(q, ids)
    late = [starts.started[j] - due[j] for j in ids]
    return {
        "jobs": jobs, "parked": parked, "p50_s": round(statistics.median(late), 3),
        "p99_s": round(percentile(late, 99), 3), "max_s": round(max(late), 3),
        "early": sum(v < 0 for v in late), "runs_max": max(starts.runs.values()),
    }


def per_job_requests(connect: Callable[..., remotejob.Queue], kind: str, jobs: int = 20) -> dict[str, Any]:
    """Requests per job of ``kind`` over its life (submit, dispatch, run, outcome, one status
    read), by service; the workers' fixed LISTs (cancellation log, timers, schedules, journal)
    and receives are reported apart, as they do not grow with the jobs."""
    faults = Faults()
    base = connect(wait_time=1)
    q = remotejob.Queue(base.name, FaultyStore(base.object_store, faults),
                        FaultyQueues(base.message_queue, faults), wait_time=1)
    q.init()
    if kind == "parked":
        q.context.max_delay_s = 1
    starts = Starts()
    before = faults.ops()
    if kind == "tick":
        q.every("bench-tick", cron="*/2 * * * * *", data={"body": b"tick"})  # every 2 s
    with worker(q, starts, concurrency=4, schedule_check=0.5):
        ids: list[str] = []
        if kind == "tick":
            while len(starts.runs) < jobs // 4:
                time.sleep(0.1)
            q.unschedule("bench-tick")
            ids = list(starts.runs)
        for i in range(jobs if kind != "tick" else 0):
            data = {"body": b"x"}
            if kind == "plain":
                ids.append(q.submit(data))
            elif kind == "in-queue":
                ids.append(q.submit(data, delay=0.5))
            elif kind == "parked":
                ids.append(q.submit(data, delay=1.5))
            elif kind == "dedup":
                ids.append(q.submit(data, dedup_key=f"k{i}"))
        wait_all(base, ids)  # through the unwrapped queue: not counted
        pending = base.queue_name("pending")
        while base.message_queue.depth(pending).in_flight or base.message_queue.depth(pending).waiting:
            time.sleep(0.2)  # the outbox deletes finished jobs' messages after their notices
        for job_id in ids:
            q.status(job_id)  # the requester's one read
    ops = faults.ops() - before
    n = len(ids)
    fixed = ("store.list", "queue.receive", "queue.depth", "queue.ensure", "store.ensure")
    s3 = sum(v for k, v in ops.items() if k.startswith("store.") and k not in fixed)
    sqs = sum(v for k, v in ops.items() if k.startswith("queue.") and k not in fixed)
    return {"jobs": n, "s3_per_job": round(s3 / n, 2), "sqs_per_job": round(sqs / n, 2),
            "fixed": {k: ops.get(k, 0) for k in fixed if ops.get(k)},
            "by_op": {k: round(v / n, 2) for k, v in sorted(ops.items()) if k not in fixed}}


def priorities(connect: Callable[..., remotejob.Queue], per_level: int) -> dict[str, Any]:
    q = connect(wait_time=1)
    level_of: dict[str, str] = {}
    for level in ("low", "normal", "high"):
        for job_id in q.submit_many([{"body": b"x"}] * per_level, priority=level):
            level_of[job_id] = level
    starts = Starts()
    with worker(q, starts, concurrency=1, prefetch=0, schedule_check=None):
        wait_all(q, list(level_of))
    position: dict[str, list[int]] = {"high": [], "normal": [], "low": []}
    for i, job_id in enumerate(starts.order):
        position[level_of[job_id]].append(i)
    total = len(starts.order)
    return {level: {"mean_position": round(statistics.mean(p) / total, 3),
                    "first": round(min(p) / total, 3), "last": round(max(p) / total, 3)}
            for level, p in position.items()}


def run_setting(name: str, connect: Callable[..., remotejob.Queue], jobs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["lateness_in_queue"] = lateness(connect, jobs, parked=False)
    out["lateness_parked"] = lateness(connect, jobs, parked=True)
    out["requests"] = {kind: per_job_requests(connect, kind)
                       for kind in ("plain", "in-queue", "parked", "dedup", "tick")}
    out["priorities"] = priorities(connect, 30 if name == "embedded" else 20)
    print(name, json.dumps(out, indent=1), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench/results/scheduling.json"))
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="Do not merge into bench/results/latest.json and BENCHMARKS.md.")
    parser.add_argument("--setting", choices=["embedded", "moto", "both"], default="both")
    args = parser.parse_args()
    result: dict[str, Any] = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "parked_limit_s": PARKED_LIMIT_S, "check_s": CHECK_S, "spread_s": SPREAD_S}
    counter = iter(range(10**6))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.setting in ("embedded", "both"):
            def embedded(**options: Any) -> remotejob.Queue:
                return remotejob.connect(f"s{next(counter)}", store=str(root / "store"),
                                         queues=str(root / "queues.db"), **options)
            result["embedded"] = run_setting("embedded", embedded, args.jobs)
        if args.setting in ("moto", "both"):
            for var, value in (("AWS_ACCESS_KEY_ID", servers.ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY",
                               servers.SECRET_KEY), ("AWS_DEFAULT_REGION", servers.REGION)):
                os.environ[var] = value
            server = servers.start_moto()
            try:
                bucket = f"sched-bench-{int(time.time())}"
                servers._client("s3", server.endpoint).create_bucket(Bucket=bucket)  # type: ignore[attr-defined]

                def moto(**options: Any) -> remotejob.Queue:
                    n = next(counter)
                    return remotejob.connect(f"s{n}", store=f"s3://{bucket}/s{n}", queues="sqs://",
                                             endpoint_url=server.endpoint, **options)
                result["moto"] = run_setting("moto", moto, min(args.jobs, 100))
            finally:
                server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.report:
        report.merge("scheduling", result)


if __name__ == "__main__":
    main()
