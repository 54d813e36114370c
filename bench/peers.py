"""Peer systems for the benchmark, run on the same local servers as remotejob.

Each public function starts what it measures (worker or consumer in a separate process), runs
``jobs`` no-op jobs through it, stops everything it started and returns a plain dict:

``{"system", "jobs", "seconds", "jobs_per_s", "requests", "requests_per_job", "versions", ...}``

- :func:`celery_sqs`: Celery 5 on the SQS broker (optionally with the S3 result backend).
- :func:`celery_latency`: submit → task start latency of an idle Celery worker on SQS.
- :func:`huey_sqlite`: huey's ``SqliteHuey`` (results stored) with an 8-thread consumer, every
  result read back.
- :func:`boto3_floor`: raw boto3 SendMessageBatch / ReceiveMessage + DeleteMessageBatch.

Requests are counted in every process that talks to the servers: a ``before-send`` botocore
hook on every client created while counting is on (one count per HTTP attempt, retries
included), plus a wrapper of kombu's ``AsyncSQSConnection.make_request`` (the Celery worker
receives through kombu's own pycurl client, which botocore only signs and never sends). Worker
processes write their counts to a file when they stop. The hooks are process-wide while a
function runs (so run one peer at a time); checked against moto's own request recorder, they
agree exactly.

CPU is ``getrusage(RUSAGE_SELF)`` (user + system seconds, every thread) in the process that did
the work: the worker's or consumer's from the start of the measured run (the mark task, the
warm-up task) to its last task, the submitter's around its submit loop and its result reads.
``python -m bench.peers --jobs 200`` runs them all against a fresh moto server
and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import cpu  # noqa: E402 - needs the repo on sys.path
from tests.servers import ACCESS_KEY, REGION, SECRET_KEY  # noqa: E402 - needs the repo on sys.path

_POLL = 0.002  # seconds between looks at a local file the worker writes
_CELERY_TASK = "bench.noop"
_CELERY_MARK = "bench.mark"
_HUEY_TASK = "bench.noop"
_HUEY_WARMUP = "bench.warmup"


# --------------------------------------------------------------------------- request counting


class RequestCounter:
    """Thread-safe counts of HTTP requests by ``SERVICE.Operation``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, op: str) -> None:
        """Count one request of operation ``op``."""
        with self._lock:
            self._counts[op] += 1

    def snapshot(self) -> dict[str, int]:
        """The counts so far."""
        with self._lock:
            return dict(self._counts)


COUNTER = RequestCounter()
_patch_lock = threading.Lock()
_patch_depth = 0
_originals: dict[str, Any] = {}


def _diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {op: n - before.get(op, 0) for op, n in after.items()}
    return {op: n for op, n in sorted(out.items()) if n}


def _install_counting() -> None:
    """Count the requests of every botocore client created from now on, and kombu's async SQS."""
    global _patch_depth
    with _patch_lock:
        _patch_depth += 1
        if _patch_depth > 1:
            return
        import botocore.session

        original_create = botocore.session.Session.create_client
        _originals["create_client"] = original_create

        def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
            client = original_create(self, *args, **kwargs)
            service = client.meta.service_model.service_id.replace(" ", "")

            def before_send(event_name: str, **_: Any) -> None:
                COUNTER.add(f"{service}.{event_name.rsplit('.', 1)[-1]}")

            client.meta.events.register("before-send", before_send)
            return client

        botocore.session.Session.create_client = create_client  # type: ignore[method-assign]
        try:
            from kombu.asynchronous.aws.sqs.connection import AsyncSQSConnection
        except ImportError:
            return
        original_make: Any = AsyncSQSConnection.make_request
        _originals["make_request"] = original_make

        def make_request(self: Any, operation_name: str, *args: Any, **kwargs: Any) -> Any:
            COUNTER.add(f"SQS.{operation_name}")
            return original_make(self, operation_name, *args, **kwargs)

        AsyncSQSConnection.make_request = make_request  # type: ignore[method-assign]


def _uninstall_counting() -> None:
    global _patch_depth
    with _patch_lock:
        _patch_depth -= 1
        if _patch_depth > 0:
            return
        import botocore.session

        if "create_client" in _originals:
            botocore.session.Session.create_client = _originals.pop("create_client")  # type: ignore[method-assign]
        if "make_request" in _originals:
            from kombu.asynchronous.aws.sqs.connection import AsyncSQSConnection

            AsyncSQSConnection.make_request = _originals.pop("make_request")  # type: ignore[method-assign]


@contextmanager
def counting() -> Iterator[RequestCounter]:
    """Count requests in this process while the block runs (clients made meanwhile keep counting)."""
    _install_counting()
    try:
        yield COUNTER
    finally:
        _uninstall_counting()


# --------------------------------------------------------------------------- helpers


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (``"missing"`` when one is not installed)."""
    out = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _client(service: str, endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` so a reader polling for ``path`` never sees it half-written."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _check_deadline(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{what} did not finish before the deadline")


def _result(
    system: str,
    jobs: int,
    seconds: float,
    by_process: dict[str, dict[str, int]],
    packages: tuple[str, ...],
    **extra: Any,
) -> dict[str, Any]:
    total: Counter[str] = Counter()
    for counts in by_process.values():
        total.update(counts)
    requests = dict(sorted(total.items()))
    per_job = {op: round(n / jobs, 3) for op, n in requests.items()} if jobs else {}
    if requests:
        per_job["total"] = round(sum(requests.values()) / jobs, 3) if jobs else 0.0
    return {
        "system": system,
        "jobs": jobs,
        "seconds": round(seconds, 4),
        "jobs_per_s": round(jobs / seconds, 2) if seconds > 0 else 0.0,
        "requests": requests,
        "requests_per_job": per_job,
        "requests_by_process": by_process,
        "versions": versions(*packages),
        **extra,
    }


class _Child:
    """A helper process running ``python -m bench.peers <role> <config>``, logged to a file."""

    def __init__(self, role: str, config: dict[str, Any], workdir: Path) -> None:
        self.workdir = workdir
        self.config_path = workdir / f"{role}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"{role}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own interpreter
                [sys.executable, "-m", "bench.peers", role, str(self.config_path)],
                cwd=str(REPO),
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.role = role

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_file(self, path: Path, deadline: float, what: str) -> dict[str, Any]:
        """Poll for a JSON file the child writes; fail clearly if it dies or the deadline passes."""
        while True:
            if path.exists():
                return dict(json.loads(path.read_text()))
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.role} exited with {self.proc.returncode} before {what}:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.role}: no {what} before the deadline:\n{self.log_tail()}")
            time.sleep(_POLL)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful stop), then SIGKILL after ``timeout``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode


class _DoneCounter:
    """Counts finished tasks in a worker process; the last one writes its time (and the process's
    CPU so far) to ``path``."""

    def __init__(self, expected: int, path: Path) -> None:
        self.expected = expected
        self.path = path
        self.lock = threading.Lock()
        self.count = 0
        self.t_first = 0.0

    def hit(self) -> None:
        with self.lock:
            self.count += 1
            if self.count == 1:
                self.t_first = time.time()
            if self.count == self.expected:
                _write_json(self.path, {"t_done": time.time(), "t_first": self.t_first, "count": self.count,
                                        "cpu": cpu.snapshot()})


# --------------------------------------------------------------------------- Celery on SQS

_celery_done: _DoneCounter | None = None
_celery_workdir: Path | None = None
_WARMUP = -2


def _celery_task_body(i: int = -1) -> None:
    """The no-op task: counts itself (throughput), records its start (latency), or warms up."""
    if i == _WARMUP:
        return
    if i >= 0 and _celery_workdir is not None:
        _write_json(_celery_workdir / f"start-{i}.json", {"t_start": time.time()})
    elif _celery_done is not None:
        _celery_done.hit()


def _celery_mark_body() -> None:
    """Marks the start of the measured run in the worker: its request counts so far are setup.

    The worker acks (DeleteMessage) on its event loop, scheduled with ``call_soon`` just before
    a task body runs; the snapshot is scheduled two loop turns later, so it includes that ack.
    """
    from kombu.asynchronous import get_event_loop

    workdir = _celery_workdir
    if workdir is None:
        return

    def snapshot() -> None:
        _write_json(workdir / "mark.json", {"t_mark": time.time(), "requests": COUNTER.snapshot(),
                                            "cpu": cpu.snapshot()})

    hub: Any = get_event_loop()
    if hub is None:
        snapshot()
    else:
        hub.call_soon(lambda: hub.call_soon(snapshot))


def _celery_app(cfg: dict[str, Any]) -> tuple[Any, Any, Any]:
    """A Celery app on the SQS broker at ``cfg['sqs_endpoint']``, its no-op task and mark task."""
    from celery import Celery

    url = urlsplit(cfg["sqs_endpoint"])
    broker = f"sqs://{quote(ACCESS_KEY, safe='')}:{quote(SECRET_KEY, safe='')}@{url.hostname}:{url.port}"
    app = Celery("bench_peer", set_as_current=False)
    conf: dict[str, Any] = {
        "broker_url": broker,
        # The endpoint comes from the broker URL's host and port; is_secure=False makes it http.
        "broker_transport_options": {"region": REGION, "is_secure": False},
        "broker_connection_retry_on_startup": True,
        "task_default_queue": cfg["queue"],
        "worker_hijack_root_logger": False,
    }
    if cfg.get("s3_endpoint"):
        conf.update(
            result_backend="s3://",
            s3_endpoint_url=cfg["s3_endpoint"],
            s3_region=REGION,
            s3_access_key_id=ACCESS_KEY,
            s3_secret_access_key=SECRET_KEY,
            s3_bucket=cfg["bucket"],
            s3_base_path="results/",
        )
    app.conf.update(conf)
    task = app.task(name=_CELERY_TASK, shared=False)(_celery_task_body)
    mark = app.task(name=_CELERY_MARK, shared=False, ignore_result=True)(_celery_mark_body)
    return app, task, mark


def _celery_worker_main(config_path: str) -> None:
    """Child: run a Celery worker (threads pool) and write its request counts when it stops."""
    global _celery_done, _celery_workdir
    cfg = json.loads(Path(config_path).read_text())
    workdir = _celery_workdir = Path(cfg["workdir"])
    _install_counting()
    from celery.signals import worker_ready

    if cfg.get("expected"):
        _celery_done = _DoneCounter(int(cfg["expected"]), workdir / "done.json")
    app, _, _ = _celery_app(cfg)

    def on_ready(**_: Any) -> None:
        _write_json(workdir / "ready.json", {"t_ready": time.time()})

    worker_ready.connect(on_ready, weak=False)
    argv = [
        "worker",
        "--pool",
        "threads",
        "--concurrency",
        str(cfg["concurrency"]),
        "--loglevel",
        "WARNING",
        "--hostname",
        f"{cfg['queue']}@%h",
    ]
    try:
        app.worker_main(argv)
    finally:
        _write_json(workdir / "exit.json", {"requests": COUNTER.snapshot()})


def _celery_run(
    sqs_endpoint: str,
    workdir: Path,
    *,
    expected: int,
    s3_endpoint: str | None,
    concurrency: int,
    timeout: float,
) -> tuple[dict[str, Any], Any, Any, _Child, Any]:
    """Set up queue (and bucket), start the worker, warm both sides up and mark the run's start.

    Warm-up, not measured: the submitter's first connection and queue declaration; with S3
    results ``2 × concurrency`` tasks whose results are fetched, so the worker's threads have
    made their (thread-local) S3 backends and the submitter its own. Then a mark task (no
    result) tells the worker to snapshot its request counts: everything before is setup.
    """
    queue = _unique("bench-celery")
    cfg: dict[str, Any] = {
        "sqs_endpoint": sqs_endpoint,
        "queue": queue,
        "workdir": str(workdir),
        "concurrency": concurrency,
        "expected": expected,
    }
    sqs = _client("sqs", sqs_endpoint)
    # Setup, not measured: the queue exists before either side starts (the attributes kombu
    # would give it), and so does the results bucket.
    sqs.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": "1800"})
    if s3_endpoint:
        cfg["s3_endpoint"] = s3_endpoint
        cfg["bucket"] = queue
        _client("s3", s3_endpoint).create_bucket(Bucket=queue)
    app, task, mark = _celery_app(cfg)
    child = _Child("_celery-worker", cfg, workdir)
    try:
        deadline = time.monotonic() + min(timeout, 120.0)
        child.wait_file(workdir / "ready.json", deadline, "worker_ready")
        with app.producer_or_acquire() as producer:
            # What the first .delay() in a process does: connect (ListQueues) and declare the
            # queue (GetQueueAttributes).
            producer.maybe_declare(app.amqp.queues[queue])
        if s3_endpoint:
            warm = [task.delay(_WARMUP) for _ in range(2 * concurrency)]
            for handle in warm:
                handle.get(timeout=max(1.0, deadline - time.monotonic()))
        mark.delay()
        marked = child.wait_file(workdir / "mark.json", deadline, "mark")
        cfg["worker_setup_requests"], cfg["worker_mark_cpu"] = marked["requests"], marked["cpu"]
    except BaseException:
        child.stop(5)
        app.close()
        raise
    return cfg, app, task, child, sqs


def celery_sqs(
    sqs_endpoint: str,
    jobs: int,
    workdir: str | Path,
    s3_endpoint: str | None = None,
    concurrency: int = 8,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Celery 5 on SQS: ``jobs`` no-op tasks submitted one by one with ``.delay()``.

    The worker is ``celery worker --pool threads --concurrency <concurrency>`` in a separate
    process (``app.worker_main``), on a fresh queue. Without ``s3_endpoint`` there is no result
    backend; completion is the worker's own clock when its ``jobs``-th task ran (it writes a
    local file, the parent polls that file: no request to the servers). With ``s3_endpoint``
    the S3 result backend is used and the parent ``.get()``s every result in submit order
    (Celery's default 0.5 s polling); the run ends when the last ``.get()`` returns.

    ``seconds`` runs from just before the first ``.delay()``. Requests are those of both
    processes: the submitter's from the first submit to the end, the worker's from the mark
    (see :func:`_celery_run`) until it stopped after the run (a long poll in flight at the
    end is counted). Setup (queue and bucket creation, the worker's startup ListQueues and
    queue declaration, the submitter's first connection, the S3 warm-up) is excluded and
    reported as ``setup_requests``.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    deadline_s = timeout if timeout is not None else 120.0 + jobs * (1.0 if s3_endpoint else 0.2)
    with counting():
        start = COUNTER.snapshot()
        cfg, app, task, child, sqs = _celery_run(
            sqs_endpoint,
            work,
            expected=jobs,
            s3_endpoint=s3_endpoint,
            concurrency=concurrency,
            timeout=deadline_s,
        )
        try:
            deadline = time.monotonic() + deadline_s
            before = COUNTER.snapshot()
            cpu0, t0 = cpu.snapshot(), time.time()
            handles = []
            for _ in range(jobs):
                handles.append(task.delay())
                _check_deadline(deadline, "celery: submitting")
            cpu1, t_submitted = cpu.snapshot(), time.time()
            results_cpu = None
            if s3_endpoint:
                for handle in handles:
                    handle.get(timeout=max(1.0, deadline - time.monotonic()))
                t_end = time.time()
                results_cpu = cpu.between(cpu1, cpu.snapshot())
                done = child.wait_file(work / "done.json", deadline, "done file")
            else:
                done = child.wait_file(work / "done.json", deadline, "done file")
                t_end = float(done["t_done"])
            submitter = _diff(COUNTER.snapshot(), before)
            child.stop()
            exit_file = work / "exit.json"
            if not exit_file.exists():
                raise RuntimeError(f"celery worker did not report its requests:\n{child.log_tail()}")
        except BaseException:
            child.stop(5)
            raise
        finally:
            app.close()
        worker = _diff(json.loads(exit_file.read_text())["requests"], cfg["worker_setup_requests"])
        try:
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=cfg["queue"])["QueueUrl"])
        except Exception:  # noqa: BLE001, S110 - cleanup only: the queue dies with the server anyway
            pass
    name = "celery-sqs+s3-results" if s3_endpoint else "celery-sqs"
    used = {"worker": cpu.between(cfg["worker_mark_cpu"], done["cpu"]), "submit": cpu.between(cpu0, cpu1)}
    if results_cpu is not None:
        used["reads"] = results_cpu
    return _result(
        name,
        jobs,
        t_end - t0,
        {"submitter": submitter, "worker": worker},
        ("celery", "kombu", "boto3", "botocore", "pycurl", "moto"),
        submit_seconds=round(t_submitted - t0, 4),
        first_task_after_s=round(float(done["t_first"]) - t0, 4),
        worker_tasks=done.get("count"),
        cpu=used,
        cpu_ms_per_job={phase: 1000 * phase_cpu["cpu_s"] / jobs for phase, phase_cpu in used.items()},
        cpu_measured_as=(
            "worker: getrusage in the worker process from the mark task (after warm-up) to its last "
            "task's body (acks of the last tasks still in flight excluded); submit: this "
            "process around the .delay() loop" + ("; reads: this process around the .get() loop"
                                                   if s3_endpoint else "")
        ),
        setup_requests={"submitter": _diff(before, start), "worker": _diff(cfg["worker_setup_requests"], {})},
        config={
            "pool": "threads",
            "concurrency": concurrency,
            "result_backend": "s3" if s3_endpoint else None,
            "warmup_tasks": 2 * concurrency if s3_endpoint else 0,
            "prefetch_multiplier": app.conf.worker_prefetch_multiplier,
            "acks_late": app.conf.task_acks_late,
            "wait_time_seconds": 10,
            "polling_interval": 1,
        },
        completion=(
            "submitter's .get() of every result in submit order (Celery's default 0.5 s polling)"
            if s3_endpoint
            else "worker's own time.time() after its last task, read from a local file"
        ),
    )


def celery_latency(
    sqs_endpoint: str,
    n: int = 50,
    workdir: str | Path | None = None,
    concurrency: int = 8,
    gap: float = 0.05,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Submit → task start latency of an idle Celery worker on SQS, one task at a time.

    The parent takes ``time.time()`` just before ``.delay()``; the task takes ``time.time()``
    on entry and writes it to a local file that the parent polls. The next task is submitted
    ``gap`` seconds after the previous one started, so the worker is back in its long poll.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    work = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="bench-celery-lat-"))
    work.mkdir(parents=True, exist_ok=True)
    deadline_s = timeout if timeout is not None else 60.0 + n * 15.0
    with counting():
        cfg, app, task, child, sqs = _celery_run(
            sqs_endpoint,
            work,
            expected=0,
            s3_endpoint=None,
            concurrency=concurrency,
            timeout=deadline_s,
        )
        samples: list[float] = []
        try:
            deadline = time.monotonic() + deadline_s
            for i in range(n):
                time.sleep(gap)  # pacing, not synchronisation: let the worker go back to polling
                t_submit = time.time()
                task.delay(i)
                started = child.wait_file(work / f"start-{i}.json", deadline, f"start of task {i}")
                samples.append((float(started["t_start"]) - t_submit) * 1000.0)
        except BaseException:
            child.stop(5)
            raise
        finally:
            app.close()
        child.stop()
        try:
            sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=cfg["queue"])["QueueUrl"])
        except Exception:  # noqa: BLE001, S110 - cleanup only: the queue dies with the server anyway
            pass
    return {
        "system": "celery-sqs",
        "n": n,
        "p50_ms": round(_percentile(samples, 50), 2),
        "p95_ms": round(_percentile(samples, 95), 2),
        "mean_ms": round(statistics.fmean(samples), 2),
        "max_ms": round(max(samples), 2),
        "versions": versions("celery", "kombu", "boto3", "pycurl", "moto"),
        "config": {"pool": "threads", "concurrency": concurrency, "gap_s": gap},
    }


def _percentile(samples: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


# --------------------------------------------------------------------------- huey on SQLite

_huey_done: _DoneCounter | None = None
_huey_workdir: Path | None = None
HUEY_WORKERS = 8
"""The consumer's threads: ours and Celery run 8 handlers at once too."""


def _huey_app(filename: str) -> tuple[Any, Any, Any]:
    """A ``SqliteHuey`` on ``filename`` with its result store on, and its tasks."""
    from huey import SqliteHuey

    huey = SqliteHuey(name="bench", filename=filename, results=True, store_none=False)

    def noop(i: int) -> int:
        if _huey_done is not None:
            _huey_done.hit()
        return i  # not None: huey stores no None results by default (store_none=False)

    def warmup() -> bool:
        if _huey_workdir is not None:  # in the consumer: the measured run starts after this task
            _write_json(_huey_workdir / "warm.json", {"t_warm": time.time(), "cpu": cpu.snapshot()})
        return True

    # huey registers a task as "<module>.<name>": the same in the parent and in the consumer,
    # whichever of them runs this file as __main__.
    noop.__module__ = warmup.__module__ = "bench_peers"
    return huey, huey.task(name=_HUEY_TASK)(noop), huey.task(name=_HUEY_WARMUP)(warmup)


def _huey_consumer_main(config_path: str) -> None:
    """Child: what ``huey_consumer -w N -k thread`` runs, with huey's default polling."""
    global _huey_done, _huey_workdir
    import logging

    cfg = json.loads(Path(config_path).read_text())
    logging.basicConfig(level=logging.WARNING)
    _huey_workdir = Path(cfg["workdir"])
    _huey_done = _DoneCounter(int(cfg["expected"]), Path(cfg["workdir"]) / "done.json")
    huey, _, _ = _huey_app(cfg["filename"])
    huey.create_consumer(workers=int(cfg["workers"]), worker_type="thread").run()


def huey_sqlite(
    jobs: int,
    workdir: str | Path,
    workers: int = HUEY_WORKERS,
    timeout: float | None = None,
) -> dict[str, Any]:
    """huey's ``SqliteHuey``: ``jobs`` no-op tasks enqueued by the parent, every result read back.

    Configured as ``SqliteHuey(filename, results=True, store_none=False)`` (huey's defaults,
    spelled out: the result store is on); the task returns its number, so every task stores a
    result. The consumer runs in a separate process (``Consumer(workers=8,
    worker_type='thread')``, as ``huey_consumer -w 8 -k thread``, default polling: 0.1 s
    initial delay, backoff 1.15, at most 10 s). Setup: one warm-up task whose result the parent
    waits for, so the consumer is running.

    Measured as remotejob's throughput is: the clock starts just before the first enqueue (one
    ``noop(i)`` call per task, from this process); the consumer writes a local file after its
    ``jobs``-th task (``drain_jobs_per_s``); the parent then reads every task's result once, in
    submit order (``Result.get()``, checked equal to the task's number; a result not stored yet
    is asked again after 1 ms), and ``jobs_per_s`` is ``jobs`` over first enqueue → the last
    result read.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    deadline_s = timeout if timeout is not None else 60.0 + jobs * 0.1
    filename = str(work / f"{_unique('huey')}.db")
    huey, noop, warmup = _huey_app(filename)
    child = _Child(
        "_huey-consumer",
        {"filename": filename, "workdir": str(work), "expected": jobs, "workers": workers},
        work,
    )
    try:
        warm = warmup()
        ready_by = time.monotonic() + min(deadline_s, 60.0)
        while warm.get() is not True:
            if child.proc.poll() is not None or time.monotonic() > ready_by:
                raise RuntimeError(f"huey consumer did not run the warm-up task:\n{child.log_tail()}")
            time.sleep(0.01)
        warm_cpu = child.wait_file(work / "warm.json", ready_by, "warm-up file")["cpu"]
        deadline = time.monotonic() + deadline_s
        cpu0, t0 = cpu.snapshot(), time.time()
        handles = []
        for i in range(jobs):
            handles.append(noop(i))
            _check_deadline(deadline, "huey: enqueueing")
        cpu1, t_submitted = cpu.snapshot(), time.time()
        done = child.wait_file(work / "done.json", deadline, "done file")
        cpu2, retries = cpu.snapshot(), 0
        for i, handle in enumerate(handles):
            while (value := handle.get()) is None:
                retries += 1
                _check_deadline(deadline, "huey: reading results")
                time.sleep(0.001)
            if value != i:
                raise RuntimeError(f"huey: task {i} returned {value!r}")
        cpu3, t_end = cpu.snapshot(), time.time()
    finally:
        child.stop(10)
    used = {"worker": cpu.between(warm_cpu, done["cpu"]), "submit": cpu.between(cpu0, cpu1),
            "reads": cpu.between(cpu2, cpu3)}
    return _result(
        "huey-sqlite",
        jobs,
        t_end - t0,
        {},
        ("huey",),
        submit_seconds=round(t_submitted - t0, 4),
        first_task_after_s=round(float(done["t_first"]) - t0, 4),
        drain_jobs_per_s=round(jobs / (float(done["t_done"]) - t0), 2),
        read_seconds=round(t_end - t_submitted, 4),
        result_not_ready_retries=retries,
        cpu=used,
        cpu_ms_per_job={phase: 1000 * phase_cpu["cpu_s"] / jobs for phase, phase_cpu in used.items()},
        cpu_measured_as=(
            "worker: getrusage in the consumer process from the warm-up task to its last task's body; "
            "submit: this process around the enqueue loop; reads: this process around the result reads"
        ),
        config={"huey": "SqliteHuey(filename, results=True, store_none=False)", "workers": workers,
                "worker_type": "thread", "polling": "initial_delay 0.1 s, backoff 1.15, max_delay 10 s",
                "results": "stored; every one read back by the submitter"},
        completion=("first enqueue → the submitter's last Result.get() (every result read, after the "
                    "consumer's own file said its last task ran)"),
    )


# --------------------------------------------------------------------------- raw boto3 floor


def _floor_consumer_main(config_path: str) -> None:
    """Child: ReceiveMessage (10, long poll) + DeleteMessageBatch until ``expected`` are deleted."""
    cfg = json.loads(Path(config_path).read_text())
    workdir = Path(cfg["workdir"])
    _install_counting()
    sqs = _client("sqs", cfg["sqs_endpoint"])
    url = cfg["queue_url"]
    _write_json(workdir / "ready.json", {"t_ready": time.time()})
    deleted = 0
    deadline = time.monotonic() + float(cfg["timeout"])
    while deleted < cfg["expected"] and time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=20)
        messages = got.get("Messages", [])
        if not messages:
            continue
        entries = [{"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(messages)]
        resp = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        if resp.get("Failed"):
            raise RuntimeError(f"DeleteMessageBatch failed: {resp['Failed']}")
        deleted += len(messages)
    _write_json(
        workdir / "done.json", {"t_done": time.time(), "count": deleted, "requests": COUNTER.snapshot()}
    )


def boto3_floor(
    sqs_endpoint: str,
    jobs: int,
    workdir: str | Path,
    timeout: float | None = None,
) -> dict[str, Any]:
    """The raw boto3 floor on SQS: what any SQS job system pays at least.

    The parent sends ``jobs`` small messages with SendMessageBatch (10 a call); a consumer
    process, started and ready before timing, long-polls ReceiveMessage (up to 10) and deletes
    each batch with DeleteMessageBatch, while the producer is still sending. Completion is the
    consumer's own time after it deleted the last message (a local file the parent polls).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {jobs}")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    deadline_s = timeout if timeout is not None else 60.0 + jobs * 0.1
    with counting():
        sqs = _client("sqs", sqs_endpoint)
        queue = _unique("bench-floor")
        url = sqs.create_queue(QueueName=queue)["QueueUrl"]
        child = _Child(
            "_floor-consumer",
            {
                "sqs_endpoint": sqs_endpoint,
                "queue_url": url,
                "workdir": str(work),
                "expected": jobs,
                "timeout": deadline_s,
            },
            work,
        )
        try:
            child.wait_file(work / "ready.json", time.monotonic() + 60.0, "ready file")
            deadline = time.monotonic() + deadline_s
            before = COUNTER.snapshot()
            t0 = time.time()
            for start in range(0, jobs, 10):
                entries = [
                    {"Id": str(k), "MessageBody": json.dumps({"job": start + k})}
                    for k in range(min(10, jobs - start))
                ]
                resp = sqs.send_message_batch(QueueUrl=url, Entries=entries)
                if resp.get("Failed"):
                    raise RuntimeError(f"SendMessageBatch failed: {resp['Failed']}")
                _check_deadline(deadline, "boto3 floor: sending")
            t_submitted = time.time()
            done = child.wait_file(work / "done.json", deadline, "done file")
            producer = _diff(COUNTER.snapshot(), before)
        finally:
            child.stop(5)
        if done["count"] < jobs:
            raise TimeoutError(f"boto3 floor consumer deleted {done['count']} of {jobs} messages")
        try:
            sqs.delete_queue(QueueUrl=url)
        except Exception:  # noqa: BLE001, S110 - cleanup only: the queue dies with the server anyway
            pass
    return _result(
        "boto3-sqs-floor",
        jobs,
        float(done["t_done"]) - t0,
        {"producer": producer, "consumer": done["requests"]},
        ("boto3", "botocore", "moto"),
        submit_seconds=round(t_submitted - t0, 4),
        config={"send_batch": 10, "receive_max": 10, "wait_time_seconds": 20},
        completion="consumer's own time.time() after deleting the last message, read from a local file",
    )


# --------------------------------------------------------------------------- command line

_ROLES: dict[str, Callable[[str], None]] = {
    "_celery-worker": _celery_worker_main,
    "_huey-consumer": _huey_consumer_main,
    "_floor-consumer": _floor_consumer_main,
}


def main(argv: list[str] | None = None) -> int:
    """Run every peer against a fresh moto server and print the results as JSON."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] in _ROLES:
        _ROLES[args_in[0]](args_in[1])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=main.__doc__)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--s3-jobs", type=int, default=None, help="jobs for Celery + S3 results")
    parser.add_argument("--latency-n", type=int, default=30)
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="subset of: celery celery-s3 latency huey floor",
    )
    args = parser.parse_args(args_in)
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tests import servers

    only = set(args.only) if args.only else {"celery", "celery-s3", "latency", "huey", "floor"}
    s3_jobs = args.s3_jobs if args.s3_jobs is not None else max(1, min(args.jobs, 50))
    results: list[dict[str, Any]] = []
    moto = servers.start_moto()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
            scratch = Path(tmp)
            if "floor" in only:
                results.append(boto3_floor(moto.endpoint, args.jobs, scratch / "floor"))
            if "celery" in only:
                results.append(celery_sqs(moto.endpoint, args.jobs, scratch / "celery"))
            if "celery-s3" in only:
                results.append(
                    celery_sqs(moto.endpoint, s3_jobs, scratch / "celery-s3", s3_endpoint=moto.endpoint)
                )
            if "latency" in only:
                results.append(celery_latency(moto.endpoint, args.latency_n, scratch / "latency"))
            if "huey" in only:
                results.append(huey_sqlite(args.jobs, scratch / "huey"))
    finally:
        moto.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
