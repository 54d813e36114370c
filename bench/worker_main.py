"""The benchmark's worker process: one ``remotejob.Worker`` with a no-op handler, measured.

``python -m bench.worker_main --name NAME --ready FILE --out FILE [--concurrency 8]
[--max-jobs N] [--seconds S]``

It connects to the job system ``NAME`` configured only by its environment (``REMOTEJOB_*`` and
``AWS_*``), runs ``q.init()`` (setup: its requests are not counted), takes a snapshot of
``request_counts()``, writes the ``--ready`` file and runs the worker until it has taken
``--max-jobs`` jobs (``run()`` returns once they are all completed) or ``--seconds`` have passed.
Then it writes ``--out``: the requests it made while working (by ``SERVICE.Operation``, setup
excluded), the CPU seconds it used meanwhile (``cpu``: ``getrusage(RUSAGE_SELF)`` from just
before the ready file to ``run()`` returning, every thread of the process), when it started and
stopped, when each job's handler was first entered (job id → ``time.time()``, for the latency
measurement), how many deliveries it took and ran, and its log records counted by template
(``log_events``: redeliveries dropped, botocore retries, warnings).
Its log (warnings, and remotejob's info) goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import remotejob
from bench import cpu
from remotejob.backends.aws import request_counts


class EventCounter(logging.Handler):
    """Counts log records by logger and message template: redeliveries, retries, warnings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("botocore") and not str(record.msg).startswith("Retry needed"):
            return  # botocore also says "Not retrying request." after every success
        key = f"{record.name}: {record.msg}"
        self.counts[key] = self.counts.get(key, 0) + 1


def quiet_logging(events: EventCounter) -> None:
    """Warnings and remotejob's info to the log file; every record counted by ``events``.

    botocore's retry decisions are counted too (at debug level, never written out): a retried
    request shows in ``request_counts()`` as two.
    """
    logging.basicConfig(level=logging.WARNING, format="worker: %(levelname)s %(name)s: %(message)s")
    logging.getLogger("remotejob").setLevel(logging.INFO)
    logging.getLogger().addHandler(events)
    retries = logging.getLogger("botocore.retries.standard")
    retries.setLevel(logging.DEBUG)
    retries.propagate = False
    retries.addHandler(events)


def counts_since(before: dict[str, int]) -> dict[str, int]:
    """Requests made since ``before`` (a ``request_counts()`` snapshot), zeros left out."""
    now = request_counts()
    return {op: n - before.get(op, 0) for op, n in sorted(now.items()) if n - before.get(op, 0)}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def run(name: str, ready: Path, concurrency: int, max_jobs: int | None,
        seconds: float | None) -> dict[str, Any]:
    """Serve ``name``'s pending queue with a no-op handler and return the measurements."""
    q = remotejob.connect(name)
    q.init()
    entered: dict[str, float] = {}
    calls: list[str] = []

    def noop(job: remotejob.Job) -> None:
        entered.setdefault(job.id, time.time())  # atomic under the GIL; the first entry counts
        calls.append(job.id)

    worker = remotejob.Worker(q, noop, concurrency=concurrency, max_jobs=max_jobs, grace_period=0)
    timer = threading.Timer(seconds, worker.stop) if seconds else None
    before = request_counts()
    cpu_before = cpu.snapshot()
    started = time.time()
    write_json(ready, {"pid": os.getpid(), "started": started})
    if timer:
        timer.start()
    try:
        taken = worker.run()
    finally:
        if timer:
            timer.cancel()
    finished = time.time()
    cpu_used = cpu.between(cpu_before, cpu.snapshot())
    return {
        "cpu": cpu_used,
        "taken": taken,
        "started": started,
        "finished": finished,
        "requests": counts_since(before),
        "handler_calls": len(calls),
        "distinct_jobs": len(entered),
        "first_entry": min(entered.values(), default=None),
        "last_entry": max(entered.values(), default=None),
        "entered": entered,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the worker, write the result file."""
    parser = argparse.ArgumentParser(prog="python -m bench.worker_main", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the job system's name")
    parser.add_argument("--ready", type=Path, required=True, help="written once the worker starts")
    parser.add_argument("--out", type=Path, required=True, help="the result JSON, written at exit")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-jobs", type=int, help="stop after taking this many jobs")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)
    events = EventCounter()
    quiet_logging(events)
    result = run(args.name, args.ready, args.concurrency, args.max_jobs, args.seconds)
    result["log_events"] = events.counts
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
