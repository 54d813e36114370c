"""A worker process for the process-level tests: ``python -m tests.worker_proc --name ... --log ...``.

It connects to the job system named on the command line and runs :class:`remotejob.Worker` until
the worker stops, so tests can SIGKILL, SIGSTOP and SIGTERM a real worker. Every execution of the
handler appends ``start <job id> <pid> <receive count>`` once it has read the input, before it
sleeps, and ``end ...`` after (``fail ...`` when the flaky handler raises), one line at a time
with ``O_APPEND`` and an fsync, so the lines survive a SIGKILL and several processes can share
one log.

The handler's assets are a deterministic function of the job's input (:func:`expected_outputs`),
so a test can check the published bytes whichever attempt won.

``--die-in-publish`` makes the process exit (status 9) right after it wins a job's claim, before
it publishes the assets (the claim's write is applied, nothing after it).

``--handler exit|sigkill|abort`` ends the whole process on every attempt, after the ``start``
line (and the sleep): ``os._exit(DIE_STATUS)``, a SIGKILL the process sends itself, or a native
crash (``os.abort()``, SIGABRT, without a core file), as a handler that is OOM-killed or crashes a
native library would. ``--dead-letter-check SECONDS`` passes ``dead_letter_check`` to the Worker
(omitted: the Worker's default).

Exit status mirrors ``remotejob worker``: 0 when ``run()`` returns, except that a worker stopped
at once with handlers still running (``Worker.interrupted``) leaves with ``os._exit(130)`` so
those handler threads cannot keep the process alive.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import remotejob

BIG_SIZE = 200 * 1024
"""The size of the ``big`` asset: above the 64 KiB that travel inside a record, so it is staged."""
DIE_STATUS = 17
"""The exit status of ``--handler exit``."""
DEATHS = ("exit", "sigkill", "abort")
"""Handlers that end the process on every attempt."""


def expected_outputs(data: bytes) -> dict[str, bytes]:
    """The assets the handler returns for an input body: name -> bytes."""
    blocks = []
    digest = hashlib.sha256(b"big:" + data).digest()
    size = 0
    while size < BIG_SIZE:
        blocks.append(digest)
        size += len(digest)
        digest = hashlib.sha256(digest).digest()
    return {"output": data[::-1] + b"/done", "big": b"".join(blocks)[:BIG_SIZE]}


def sleep_seconds(job_id: str, low: float, high: float) -> float:
    """A duration in ``[low, high]`` derived from the job id (the same on every attempt)."""
    fraction = int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4], "big") / 2**32
    return low + (high - low) * fraction


def pause(seconds: float) -> None:
    """Sleep until ``seconds`` of wall time have passed, also counting time spent stopped (SIGSTOP):
    one long ``time.sleep()`` resumes with its whole remainder after a SIGCONT."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))


class ExecutionLog:
    """Appends whole lines to a file shared by several processes, durably."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def line(self, *words: object) -> None:
        os.write(self.fd, (" ".join(map(str, words)) + "\n").encode())
        os.fsync(self.fd)


def make_handler(args: argparse.Namespace) -> Callable[[remotejob.Job], list[dict[str, Any]]]:
    log = ExecutionLog(args.log)
    pid = os.getpid()

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        with job.open() as stream:  # the first read also builds the S3 client: before "start"
            data = stream.read()
        log.line("start", job.id, pid, job.receive_count)
        seconds = args.sleep if args.sleep_max is None else sleep_seconds(job.id, args.sleep, args.sleep_max)
        pause(seconds)
        if args.handler in DEATHS:
            die(args.handler, job)
        if args.handler == "flaky" and job.receive_count <= args.fail_attempts:
            log.line("fail", job.id, pid, job.receive_count)
            raise RuntimeError(f"flaky: attempt {job.receive_count} fails on purpose")
        log.line("end", job.id, pid, job.receive_count)
        return [{"key": name, "body": body} for name, body in expected_outputs(data).items()]

    return handler


def die(how: str, job: remotejob.Job) -> None:
    """End this process from inside a handler, as ``--handler`` says."""
    logging.getLogger("worker_proc").warning("handler dying (%s) on job %s, delivery %d", how, job.id,
                                             job.receive_count)
    sys.stderr.flush()
    if how == "exit":
        os._exit(DIE_STATUS)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    else:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash, not a core file per attempt
        os.abort()
    time.sleep(60)  # a signal to oneself may land a moment after os.kill() returns
    os._exit(99)  # never reached unless the signal was lost: fail the test's exit-code check


class DieAfterClaim:
    """A store that ends this process right after a create-once ``final`` record is written (a
    won claim), before anything is published, as a worker that crashes there would."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.location = inner.location

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def put(self, key: str, body: Any, *args: Any, if_absent: bool = False, **kwargs: Any) -> Any:
        info = self._inner.put(key, body, *args, if_absent=if_absent, **kwargs)
        if if_absent and key.endswith("/final"):
            logging.getLogger("worker_proc").warning("dying after the claim %s", key)
            sys.stderr.flush()
            os._exit(9)
        return info


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.worker_proc", description=__doc__)
    parser.add_argument("--name", required=True, help="the job system's name")
    parser.add_argument("--store", default=None, help="store URL (omit for the embedded default)")
    parser.add_argument("--queues", default=None, help="queues URL (omit for the embedded default)")
    parser.add_argument("--visibility", type=int, default=2)
    parser.add_argument("--wait-time", type=int, default=1)
    parser.add_argument("--max-attempts", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--retry-delay", type=float, default=0.0)
    parser.add_argument("--handler", choices=("sleep", "flaky", *DEATHS), default="sleep",
                        help="sleep: complete; flaky: fail the first attempts; exit, sigkill, abort: "
                             "end the process on every attempt")
    parser.add_argument("--sleep", type=float, default=0.0,
                        help="seconds each execution sleeps (the low end with --sleep-max)")
    parser.add_argument("--sleep-max", type=float, default=None,
                        help="sleep between --sleep and this, derived from the job id")
    parser.add_argument("--fail-attempts", type=int, default=1,
                        help="flaky: attempts up to this receive count raise after sleeping")
    parser.add_argument("--log", required=True, help="executions log, appended to")
    parser.add_argument("--die-in-publish", action="store_true",
                        help="exit at once (status 9) when a claim this process won starts publishing")
    parser.add_argument("--dead-letter-check", type=float, default=None, metavar="SECONDS",
                        help="the Worker's dead_letter_check (omitted: its default)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    # A SIGTERM that arrives while this process still starts up (imports, connect) must stop it
    # as the worker's own handler would, not kill it: tests stop workers they have just started.
    started: list[remotejob.Worker] = []
    early_stop: list[int] = []

    def stop_early(signum: int, frame: object) -> None:
        early_stop.append(signum)
        if started:
            started[0].stop()

    signal.signal(signal.SIGTERM, stop_early)
    signal.signal(signal.SIGINT, stop_early)
    args = parse(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s worker_proc[{os.getpid()}] %(name)s %(levelname)s %(message)s",
    )
    q = remotejob.connect(
        args.name, store=args.store, queues=args.queues, visibility_timeout=args.visibility,
        wait_time=args.wait_time, max_attempts=args.max_attempts,
    )
    if args.die_in_publish:
        q.context.store = DieAfterClaim(q.context.store)
    options: dict[str, Any] = {}
    if args.dead_letter_check is not None:
        options["dead_letter_check"] = args.dead_letter_check
    worker = remotejob.Worker(
        q, make_handler(args), concurrency=args.concurrency, grace_period=args.grace,
        retry_delay=args.retry_delay, max_retry_delay=max(args.retry_delay, 900.0), **options,
    )
    started.append(worker)
    if early_stop:
        worker.stop()
    logging.getLogger("worker_proc").info("ready pid=%d", os.getpid())
    taken = worker.run()
    logging.getLogger("worker_proc").info("run() returned: took %d job(s), interrupted=%s", taken,
                                          worker.interrupted)
    if worker.interrupted:
        sys.stderr.flush()
        os._exit(130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
