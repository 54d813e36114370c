"""remotejob's own measurements: throughput, requests per job, latency and idle cost.

Every function takes ``env``, the environment that selects a setting (``REMOTEJOB_HOME`` for the
embedded one; ``REMOTEJOB_STORE``, ``REMOTEJOB_QUEUES``, ``AWS_ENDPOINT_URL_S3``,
``AWS_ENDPOINT_URL_SQS``, credentials and region for S3/SQS), and uses a job system of a fresh
name. The requester runs in this process with ``env`` applied to ``os.environ`` (every other
``REMOTEJOB_*``/``AWS_*`` variable hidden meanwhile); the worker is a separate process,
``python -m bench.worker_main``, that sees only ``env`` among those variables.

Requests are counted with ``remotejob.backends.aws.request_counts()`` (botocore's ``before-send``
event, so retries count too): the requester's in this process, phase by phase, and the worker's
in its process, reported when it exits. ``q.init()`` (creating the bucket and queues) runs on both
sides before counting starts, so one-time setup is not charged to the jobs. On the embedded
setting nothing is counted (no HTTP).
"""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench import cpu

REPO = Path(__file__).resolve().parent.parent
"""The repository root: the worker process runs there so ``bench`` and ``remotejob`` import."""

BODY_BYTES = 100
"""The size of a small job's input body."""

READERS = 8
"""Threads the requester reads statuses with once every job is done."""

POLL_S = 0.02
"""How often the parent looks for the worker's ready file while it starts."""

READY_TIMEOUT_S = 30.0
"""How long a worker process may take to start (import, connect, ``q.init()``)."""

EXIT_GRACE_S = 10.0
"""How long a worker that wrote its result may take to exit before it is killed."""

MAX_TOPUPS = 3
"""Top-up workers a throughput run may need after redeliveries, before it fails."""

LATENCY_JITTER_S = 0.1
"""The longest random pause between two latency jobs (two cycles of the embedded queue's poll)."""

IDLE_POLL_S = 20
"""An idle worker's long poll: at most one ReceiveMessage per this many seconds is the target."""

_SCRUBBED_PREFIXES = ("REMOTEJOB_", "AWS_")
"""Inherited variables hidden from remotejob: its configuration is exactly the ``env`` given."""


class MeasurementError(RuntimeError):
    """A measurement could not be taken: a worker failed, hung, or jobs did not complete."""


# -- environment and names --------------------------------------------------------------------


def child_env(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without ``REMOTEJOB_*``/``AWS_*`` variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    base.update(env)
    base["PYTHONUNBUFFERED"] = "1"
    return base


@contextmanager
def environ(env: Mapping[str, str]) -> Iterator[None]:
    """Apply ``env`` to ``os.environ`` (hiding other ``REMOTEJOB_*``/``AWS_*``), then restore it."""
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith(_SCRUBBED_PREFIXES)]:
            del os.environ[key]
        os.environ.update(env)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def fresh_name(prefix: str) -> str:
    """A job system name no earlier run used (valid in SQS queue names)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def is_aws(env: Mapping[str, str]) -> bool:
    """True if ``env`` selects S3/SQS (requests can be counted), False for the embedded setting."""
    return env.get("REMOTEJOB_QUEUES", "").startswith("sqs://")


# -- request counts ---------------------------------------------------------------------------


def request_snapshot() -> dict[str, int]:
    """This process's HTTP requests so far, by ``SERVICE.Operation``."""
    from remotejob.backends.aws import request_counts

    return request_counts()


def counts_between(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """The requests made between two snapshots, zeros left out."""
    return {op: n - before.get(op, 0) for op, n in sorted(after.items()) if n - before.get(op, 0)}


def per_job(counts: Mapping[str, int], jobs: int) -> dict[str, float]:
    """Requests per job by operation, plus ``SQS`` and ``S3`` totals per job."""
    out = {op: n / jobs for op, n in counts.items()}
    for service in ("SQS", "S3"):
        out[service] = sum(n for op, n in counts.items() if op.startswith(service + ".")) / jobs
    return out


def merge_counts(*phases: Mapping[str, int]) -> dict[str, int]:
    """The sum of several phases' counts."""
    total: Counter[str] = Counter()
    for phase in phases:
        total.update(phase)
    return dict(sorted(total.items()))


# -- the worker process -----------------------------------------------------------------------


class WorkerProcess:
    """``python -m bench.worker_main`` as a context manager: started, awaited, always reaped.

    Args:
        env: the setting's environment (the worker sees only these ``REMOTEJOB_*``/``AWS_*``).
        name: the job system to serve.
        workdir: where its ready file, result file and log go.
        label: names its folder under ``workdir`` (default: ``name``).
        concurrency: handlers at once.
        max_jobs: stop after taking this many jobs (``run()`` returns once they completed).
        seconds: stop after this many seconds.
    """

    def __init__(self, env: Mapping[str, str], name: str, workdir: Path, *, label: str | None = None,
                 concurrency: int = 8, max_jobs: int | None = None, seconds: float | None = None) -> None:
        self.env, self.name = dict(env), name
        folder = workdir / (label or name)
        folder.mkdir(parents=True, exist_ok=True)
        self.ready_file, self.out_file, self.log_file = (folder / f for f in ("ready", "out.json", "log"))
        self.argv = [sys.executable, "-m", "bench.worker_main", "--name", name, "--ready",
                     str(self.ready_file), "--out", str(self.out_file), "--concurrency", str(concurrency)]
        if max_jobs is not None:
            self.argv += ["--max-jobs", str(max_jobs)]
        if seconds is not None:
            self.argv += ["--seconds", str(seconds)]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Let a worker that wrote its result exit (killed after a grace); kill any other now."""
        self.kill(grace=EXIT_GRACE_S if self.out_file.exists() else 0.0)

    def start(self, timeout: float = READY_TIMEOUT_S) -> float:
        """Start the process and wait until its worker is about to run; return that time."""
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter and module, argv built here
                self.argv, cwd=REPO, env=child_env(self.env), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        self._await(self.ready_file, timeout, "exited at start", "did not start")
        started: float = json.loads(self.ready_file.read_text())["started"]
        return started

    def _await(self, path: Path, timeout: float, exited: str, late: str) -> None:
        """Wait until the worker writes ``path``.

        Raises:
            MeasurementError: the process exited without writing it, or ``timeout`` passed (the
                process is killed).
        """
        assert self.process is not None, "start() first"  # noqa: S101 - a programming error
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process.poll() is not None:
                if path.exists():  # written just before the process exited
                    break
                raise MeasurementError(f"worker {self.name} {exited} (exit {self.process.returncode}):\n"
                                       f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise MeasurementError(f"worker {self.name} {late} in {timeout:.0f} s (killed):\n"
                                       f"{self.log_tail()}")
            time.sleep(POLL_S)

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the worker's result file (written as its ``run()`` returns) and read it.

        The process may still be exiting (interpreter teardown is not the job system's time);
        leaving the ``with`` block waits for that.

        Raises:
            MeasurementError: no result within ``timeout`` (the process is killed), or it failed.
        """
        self._await(self.out_file, timeout, "failed", "did not finish")
        doc: dict[str, Any] = json.loads(self.out_file.read_text())
        return doc

    def kill(self, grace: float = 0.0) -> None:
        """Kill the process group unless it exits within ``grace`` seconds; reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.process.pid, 9)
        except ProcessLookupError:
            pass
        self.process.wait(10)

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the worker's output, for error messages."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


# -- measurements -----------------------------------------------------------------------------


def _items(jobs: int) -> list[dict[str, Any]]:
    return [{"body": os.urandom(BODY_BYTES)} for _ in range(jobs)]


def _read_states(q: Any, ids: list[str], readers: int) -> dict[str, str]:
    """Read every job's status once, ``readers`` at a time: job id → state."""
    with ThreadPoolExecutor(readers, thread_name_prefix="bench-reader") as pool:
        return dict(zip(ids, (st.state for st in pool.map(q.status, ids)), strict=True))


def _start_worker(stack: ExitStack, env: Mapping[str, str], name: str, workdir: Path, label: str,
                  jobs: int, concurrency: int) -> WorkerProcess:
    """Start a worker for ``jobs`` deliveries; ``stack`` reaps it (after its result was read)."""
    worker = stack.enter_context(
        WorkerProcess(env, name, workdir, label=label, concurrency=concurrency, max_jobs=jobs))
    worker.start()
    return worker


def throughput(env: Mapping[str, str], jobs: int, batch: bool, workdir: Path, *, concurrency: int = 8,
               readers: int = READERS, timeout: float | None = None) -> dict[str, Any]:
    """Submit ``jobs`` small jobs, drain them with one worker process, read every status once.

    The worker (``concurrency`` handlers, ``max_jobs=jobs``) starts first and waits idle. Timing
    starts just before the first submit: ``q.submit_many(items)`` (``batch``) or ``q.submit()``
    per item, from this process. The worker exits once it has taken ``jobs`` deliveries and
    finished them; the requester then reads each job's status once (``readers`` threads). If a
    job was delivered twice, the worker's ``jobs`` deliveries leave another job untaken: a
    top-up worker (``max_jobs`` = the jobs still pending) then finishes them, inside the timing,
    and the pending ones are read again (``topups`` says how often this happened).
    ``jobs_per_s`` is ``jobs`` over first submit → the last status read seeing ``completed``;
    ``drain_jobs_per_s`` is ``jobs`` over first submit → the (last) worker's ``run()`` returning.

    Returns:
        ``jobs_per_s``, ``drain_jobs_per_s``, the phase durations (``submit_s``, ``drain_s``,
        ``read_s``, ``total_s``), ``requests`` (per phase: ``submit`` and ``reads`` counted in
        this process, ``worker`` in the worker processes; ``total``) and ``requests_per_job`` (the
        same divided by ``jobs``, with ``SQS``/``S3`` totals); None for both on the embedded
        setting; ``worker_events``: the worker's counted log records (redeliveries, retries);
        ``cpu`` (user and system CPU seconds: ``worker``, summed over the worker processes, each
        from its ready file to its ``run()`` returning; ``submit``, this process during the
        submit phase; ``reads``, this process from the worker's result to the last status read,
        top-ups included) and ``cpu_ms_per_job`` (the same in CPU milliseconds per job).

    Raises:
        MeasurementError: a worker failed or hung, or jobs did not end ``completed``.
    """
    import remotejob

    name = fresh_name("bench-tp")
    items = _items(jobs)
    timeout = timeout if timeout is not None else 60.0 + 0.1 * jobs
    with environ(env), ExitStack() as stack:
        q = remotejob.connect(name)
        q.init()
        worker = _start_worker(stack, env, name, workdir, name, jobs, concurrency)
        c0, u0, t0 = request_snapshot(), cpu.snapshot(), time.time()
        ids = q.submit_many(items) if batch else [q.submit(item) for item in items]
        c1, u1, t1 = request_snapshot(), cpu.snapshot(), time.time()
        workers = [worker.result(timeout)]
        c2, u2, t2 = request_snapshot(), cpu.snapshot(), time.time()
        states = _read_states(q, ids, readers)
        for topup in range(1, MAX_TOPUPS + 1):
            pending = [job_id for job_id, state in states.items() if state != "completed"]
            if not pending:
                break
            label = f"{name}-topup{topup}"
            extra = _start_worker(stack, env, name, workdir, label, len(pending), concurrency)
            workers.append(extra.result(timeout))
            states.update(_read_states(q, pending, readers))
        c3, u3, t3 = request_snapshot(), cpu.snapshot(), time.time()
    left = Counter(state for state in states.values() if state != "completed")
    if left:
        raise MeasurementError(f"{name}: {sum(left.values())} of {jobs} jobs not completed after "
                               f"{len(workers)} workers: {dict(left)}")
    finished = workers[-1]["finished"]
    result: dict[str, Any] = {
        "name": name, "jobs": jobs, "batch": batch, "concurrency": concurrency, "readers": readers,
        "body_bytes": BODY_BYTES, "jobs_per_s": jobs / (t3 - t0), "drain_jobs_per_s": jobs / (finished - t0),
        "submit_s": t1 - t0, "drain_s": finished - t0, "result_seen_s": t2 - t0, "read_s": t3 - t2,
        "total_s": t3 - t0, "topups": len(workers) - 1,
        "deliveries": sum(w["taken"] for w in workers),
        "worker_events": merge_counts(*(w["log_events"] for w in workers)),
        "requests": None, "requests_per_job": None,
    }
    worker_cpu = cpu.total(*(w["cpu"] for w in workers))
    submit_cpu, read_cpu = cpu.between(u0, u1), cpu.between(u2, u3)
    result["cpu"] = {"worker": worker_cpu, "submit": submit_cpu, "reads": read_cpu}
    result["cpu_ms_per_job"] = {phase: 1000 * used["cpu_s"] / jobs for phase, used in result["cpu"].items()}
    if is_aws(env):
        phases = {
            "submit": counts_between(c0, c1),
            "worker": merge_counts(*(w["requests"] for w in workers)),
            "reads": counts_between(c2, c3),
        }
        phases["total"] = merge_counts(*phases.values())
        result["requests"] = phases
        result["requests_per_job"] = {phase: per_job(counts, jobs) for phase, counts in phases.items()}
    return result


def _percentile(values: list[float], pct: int) -> float:
    """The ``pct``-th percentile (inclusive method, interpolated)."""
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1] if len(values) > 1 else values[0]


def latency(env: Mapping[str, str], n: int, workdir: Path, *, concurrency: int = 8,
            timeout: float = 30.0, jitter_s: float = LATENCY_JITTER_S) -> dict[str, Any]:
    """Submit → handler start on an idle worker, one job at a time, over ``n`` jobs.

    A worker process (``concurrency`` handlers) starts and long-polls the empty queue. For each
    job this process notes ``time.time()``, calls ``q.submit()`` and ``q.wait()``s for it to
    complete before the next; the worker's handler notes ``time.time()`` on entry (reported by
    job id when the worker exits). One warm-up job runs first and is not counted.

    Between jobs it pauses a random 0 to ``jitter_s`` seconds, so that submissions land at
    random points of a polling worker's cycle, as independent requesters' would: submitting
    right after ``q.wait()`` saw the previous job done could phase-lock to the cycle (the
    embedded queue looks for other processes' messages every 10 ms).

    Returns:
        ``p50_ms``, ``p95_ms``, ``mean_ms``, ``max_ms`` of submit-call start → handler entry,
        ``submit_call_p50_ms`` (how long ``q.submit()`` itself took), and ``roundtrip_p50_ms``/
        ``roundtrip_p95_ms`` of submit-call start → ``q.wait()`` seeing it completed (``q.wait()``
        polls quickly at first: 20 ms, then 1.5× longer each time).

    Raises:
        MeasurementError: the worker failed or hung, or a job did not complete in ``timeout``.
    """
    import remotejob

    name = fresh_name("bench-lat")
    submitted: dict[str, float] = {}
    submit_calls: list[float] = []
    roundtrips: list[float] = []
    with environ(env), WorkerProcess(env, name, workdir, concurrency=concurrency, max_jobs=n + 1) as worker:
        q = remotejob.connect(name)
        q.init()
        worker.start()
        for i in range(n + 1):
            time.sleep(random.uniform(0.0, jitter_s))  # noqa: S311 - arrival jitter, not secrecy
            t0 = time.time()
            job_id = q.submit({"body": os.urandom(BODY_BYTES)})
            t1 = time.time()
            try:
                q.wait(job_id, timeout=timeout)
            except remotejob.WaitTimeout:
                raise MeasurementError(f"{name}: job {i} did not complete in {timeout:.0f} s:\n"
                                       f"{worker.log_tail()}") from None
            if i:  # the first is the warm-up
                submitted[job_id] = t0
                submit_calls.append((t1 - t0) * 1000)
                roundtrips.append((time.time() - t0) * 1000)
        done = worker.result(timeout)
    delays = [(done["entered"][job_id] - t0) * 1000 for job_id, t0 in submitted.items()]
    return {
        "name": name, "n": n, "concurrency": concurrency, "jitter_s": jitter_s,
        "p50_ms": statistics.median(delays), "p95_ms": _percentile(delays, 95),
        "mean_ms": statistics.fmean(delays), "max_ms": max(delays),
        "submit_call_p50_ms": statistics.median(submit_calls),
        "roundtrip_p50_ms": statistics.median(roundtrips), "roundtrip_p95_ms": _percentile(roundtrips, 95),
    }


def start_idle(env: Mapping[str, str], seconds: float, workdir: Path) -> WorkerProcess:
    """Start a worker on an empty queue that stops itself after ``seconds``; see :func:`idle`.

    The caller must :func:`finish_idle` (or ``kill()``) it. Nothing in this process is touched,
    so other measurements may run meanwhile.
    """
    worker = WorkerProcess(env, fresh_name("bench-idle"), workdir, concurrency=8, seconds=seconds)
    try:
        worker.start()
    except BaseException:
        worker.kill()
        raise
    return worker


def finish_idle(worker: WorkerProcess, seconds: float) -> dict[str, Any]:
    """Wait for an idle worker from :func:`start_idle` and report its requests."""
    try:
        done = worker.result(seconds + 2 * IDLE_POLL_S + 15)
    finally:
        worker.close()
    elapsed = done["finished"] - done["started"]
    receives = done["requests"].get("SQS.ReceiveMessage", 0)
    allowed = math.ceil(elapsed / IDLE_POLL_S)  # one poll starting every 20 s, the first at 0 s
    return {
        "applicable": True, "name": worker.name, "seconds": elapsed, "status_queues": 1,
        "requests": done["requests"], "worker_events": done["log_events"],
        "receives": receives, "allowed": allowed, "receives_per_20s": receives * IDLE_POLL_S / elapsed,
        "meets_target": receives <= allowed,
    }


def idle(env: Mapping[str, str], seconds: float, workdir: Path) -> dict[str, Any]:
    """The requests of a worker serving one empty status queue for ``seconds``.

    The worker process runs ``q.init()`` (not counted), then its ``Worker`` for ``seconds`` and
    stops (a receive still in flight then is counted: its request was sent). ``allowed`` is
    ``ceil(elapsed / 20)``: one long poll starting every 20 s, the first at once; the target is
    met if ``receives <= allowed``. ``receives_per_20s`` is the plain rate. On the embedded
    setting (SQLite, no requests) it reports ``applicable: False``.
    """
    if not is_aws(env):
        return {"applicable": False, "reason": "the embedded queue makes no requests (SQLite polls)"}
    return finish_idle(start_idle(env, seconds, workdir), seconds)
