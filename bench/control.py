"""Cancel and time limits (issue 13): correctness and bounds, measured on a setting.

Each function takes ``env`` (a setting's environment, as in :mod:`bench.ours`) and runs a
``remotejob.Worker`` in a thread of this process (``handle_signals=False``, concurrency
:data:`CONCURRENCY`, ``cancel_check`` :data:`CANCEL_CHECK_S`, ``cancel_grace``
:data:`CANCEL_GRACE_S`) on a job system of a fresh name; the requester is this process too.

1. :func:`race`: a cancel against a job that completes at once, the cancel made after a random
   delay of up to twice the typical submit → outcome time (measured in a warm-up): exactly one
   outcome per round, and a cancel that wins means ``cancelled`` and no output.
2. :func:`before_take` (run on :func:`race`'s job system, so the worker's view of the
   cancellation log is a warm, incremental one): jobs cancelled more than one check interval
   before a burst worker takes them never start a handler.
3. :func:`stop_time`: a running job's stop after ``q.cancel()``: a cooperative Python handler
   (``job.check()`` every 10 ms) and a ``worker --exec`` command that ignores SIGTERM.
4. :func:`requests`: requests per job of jobs nobody cancels (S3/SQS only), by operation, and the
   cancellation-log LISTs per worker run.

These measure correctness and bounds, not speed: a shared, busy machine changes none of the
targets' verdicts, only how close the times come to their bounds.
"""

from __future__ import annotations

import inspect
import math
import os
import random
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.ours import (
    MeasurementError,
    counts_between,
    environ,
    fresh_name,
    is_aws,
    per_job,
    request_snapshot,
)

CONCURRENCY = 4
CANCEL_CHECK_S = 1.0
"""The workers' ``cancel_check`` here (the default is 5 s): how old their view of the
cancellation log may be."""
CANCEL_GRACE_S = 2.0
"""The workers' ``cancel_grace``, and ``CommandHandler(grace=)`` of the ``--exec`` runs."""
VISIBILITY_S = 30
"""The visibility timeout of every job system here; a heartbeat interval is a third of it."""
WAIT_S = 2
"""The long-poll wait of the job systems of parts 1-3, so that stopping a worker is quick (a
receive returns as soon as a message arrives: no effect on what is measured)."""
REQUEST_RUNS = 3
"""Runs of the requests-per-job measurement with the default ``cancel_check``: the median run (by
SQS per job, which depends on how full the worker's batches happen to be) is reported."""
OUTPUT = b"done"
"""The race handler's output body."""
POLL_S = 0.005
"""How often a state, a queue's depth or a process is looked at while waiting for it."""
DONE_TIMEOUT_S = 60.0
"""How long one job may take to reach its outcome (or a stop) before the measurement fails."""
EXEC_TEMPLATE = "sh -c 'echo $$ > {pids}/{job_id}.pid; trap \"\" TERM; sleep 60'"
"""The ``--exec`` command: writes its pid (its process group's id: the worker starts it in a
session of its own), ignores SIGTERM and sleeps; only SIGKILL ends it before 60 s."""


# -- helpers -----------------------------------------------------------------------------------


@contextmanager
def worker_thread(q: Any, handler: Callable[[Any], Any], **options: Any) -> Iterator[Any]:
    """A ``remotejob.Worker`` running in a thread of this process; stopped and joined after."""
    import remotejob

    opts: dict[str, Any] = {"concurrency": CONCURRENCY, "cancel_check": CANCEL_CHECK_S,
                            "cancel_grace": CANCEL_GRACE_S, "handle_signals": False, "grace_period": 5.0,
                            **options}
    worker = remotejob.Worker(q, handler, **opts)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="bench-control-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(30)
    if thread.is_alive():
        raise MeasurementError("the worker did not stop within 30 s")
    if failed:
        raise MeasurementError(f"the worker failed: {type(failed[0]).__name__}: {failed[0]}")


def await_done(q: Any, job_id: str, timeout: float = DONE_TIMEOUT_S) -> Any:
    """Poll ``q.status`` every :data:`POLL_S` until the job is done; return the status."""
    deadline = time.monotonic() + timeout
    while True:
        st = q.status(job_id)
        if st.done:
            return st
        if time.monotonic() > deadline:
            raise MeasurementError(f"job {job_id} not done after {timeout:.0f} s: {st.state}")
        time.sleep(POLL_S)


def queue_left(q: Any, status: str = "pending") -> int:
    """Messages still in a status queue: waiting, in flight and delayed."""
    depth = q.message_queue.depth(q.queue_name(status))
    return int(depth.waiting + depth.in_flight + depth.delayed)


def await_empty(q: Any, timeout: float = DONE_TIMEOUT_S) -> float:
    """Wait until the pending queue holds no message; return when (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout
    while queue_left(q):
        if time.monotonic() > deadline:
            raise MeasurementError(f"the queue still holds {queue_left(q)} message(s) after {timeout:.0f} s")
        time.sleep(POLL_S)
    return time.monotonic()


def output_readable(q: Any, job_id: str) -> bool:
    """Whether the job's output ``out`` can be read (and is what the handler returned)."""
    import remotejob

    try:
        return bool(q.output(job_id, "out").read() == OUTPUT)
    except remotejob.NotFound:
        return False


def stats(values: list[float]) -> dict[str, float | None]:
    """Median and max of some seconds (None for none)."""
    if not values:
        return {"median_s": None, "max_s": None}
    return {"median_s": statistics.median(values), "max_s": max(values)}


# -- 1. cancel against completion ------------------------------------------------------------


def race(env: Mapping[str, str], rounds: int, *, warmup: int = 5, job_system: dict[str, Any] | None = None
         ) -> dict[str, Any]:
    """Cancel against completion, ``rounds`` times; see the module docstring.

    A worker runs a handler that returns one output at once. The warm-up submits ``warmup``
    jobs one at a time and times the ``submit()`` call → the outcome recorded (the status's
    ``updated``, the time the worker wrote the final record); its median is the *typical* time.
    Each round submits one job from a thread (under a key of ours, so its id is known before
    ``submit()`` returns), waits a random ``[0, 2 × typical]`` seconds from the submit call, calls
    ``q.cancel()`` (again at once while it raises ``NotFound``: the job's first record is not
    written yet; ``early`` counts those rounds) and records the state it returned, then polls
    the status until done and reads the output. Once every round ran, the queue is drained and
    the worker stopped, each round's status and output are read again: a round has *exactly one
    outcome* when the final state is ``completed`` or ``cancelled``, did not change between the
    two reads, is ``cancelled`` exactly when ``cancel()`` returned ``cancelled`` (its claim won),
    and an output exists (both times) exactly when the state is ``completed``.
    ``lost_reported``: what ``cancel()`` returned when it lost (``completed``, or ``inprogress``
    while the winner's outputs were still being published).

    ``job_system``, if given, gets the connected queue (``"q"``), for :func:`before_take`.
    """
    import remotejob

    name = fresh_name("bench-cancel")
    started: set[str] = set()
    lock = threading.Lock()

    def handler(job: Any) -> list[dict[str, Any]]:
        with lock:
            started.add(job.id)
        return [{"key": "out", "body": OUTPUT}]

    per_round: list[dict[str, Any]] = []
    with environ(env):
        q = remotejob.connect(name, visibility_timeout=VISIBILITY_S, wait_time=WAIT_S)
        q.init()
        with worker_thread(q, handler):
            times = []
            for i in range(warmup):
                t0 = time.time()
                job_id = q.submit({"key": f"{name}-warm-up-{i}", "body": b"warm-up"})
                times.append(await_done(q, job_id).updated - t0)
            typical = statistics.median(times)
            for i in range(rounds):
                job_id = f"{name}-round-{i}"
                submitter = threading.Thread(target=q.submit, args=({"key": job_id, "body": b"round"},))
                t0 = time.monotonic()
                submitter.start()
                delay = random.uniform(0.0, 2 * typical)  # noqa: S311 - timing jitter, not secrecy
                time.sleep(max(0.0, t0 + delay - time.monotonic()))
                early = 0
                while True:
                    try:
                        returned = q.cancel(job_id, reason="bench race").state
                        break
                    except remotejob.NotFound:  # submit() has not written the job's first record yet
                        early += 1
                        if time.monotonic() - t0 > DONE_TIMEOUT_S:
                            raise MeasurementError(f"job {job_id} was never submitted") from None
                        time.sleep(0.001)
                submitter.join()
                first = await_done(q, job_id)
                per_round.append({"job": job_id, "delay_s": delay, "early": early, "returned": returned,
                                  "first": first.state, "first_output": output_readable(q, job_id)})
            await_empty(q)
        if job_system is not None:
            job_system["q"] = q
        for r in per_round:  # the worker stopped: nothing can change any more
            st = q.status(r["job"])
            r.update(final=st.state, final_output=output_readable(q, r["job"]), listed=bool(st.outputs),
                     started=r["job"] in started)
    one = [r for r in per_round
           if r["final"] in ("completed", "cancelled") and r["final"] == r["first"]
           and (r["returned"] == "cancelled") == (r["final"] == "cancelled")
           and r["first_output"] == r["final_output"] == r["listed"] == (r["final"] == "completed")]
    won = [r for r in per_round if r["returned"] == "cancelled"]
    anomalies = [r for r in per_round if r not in one]
    return {
        "name": name, "rounds": rounds, "warmup": warmup, "typical_s": typical, "max_delay_s": 2 * typical,
        "cancel_won": len(won),
        "cancel_won_cancelled": sum(r["final"] == "cancelled" for r in won),
        "cancel_won_handler_started": sum(r["started"] for r in won),
        "cancel_lost": rounds - len(won),
        "early": sum(bool(r["early"]) for r in per_round),
        "lost_reported": dict(Counter(r["returned"] for r in per_round if r not in won)),
        "one_outcome": len(one),
        "cancelled_with_output": sum(r["final"] == "cancelled" and (r["first_output"] or r["final_output"])
                                     for r in per_round),
        "returned_states": dict(Counter(r["returned"] for r in per_round)),
        "final_states": dict(Counter(r["final"] for r in per_round)),
        "anomalies": anomalies[:10],
    }


# -- 2. cancel more than one check interval before the take ----------------------------------


def before_take(env: Mapping[str, str], jobs: int, q: Any | None = None) -> dict[str, Any]:
    """Submit ``jobs`` jobs (``submit_many``), cancel each, sleep ``cancel_check`` + 0.5 s, then
    run a burst worker: count its handler starts (target 0), check every job is ``cancelled``
    and the queue empty.

    With ``q`` (from :func:`race`, its worker stopped) the burst worker shares that job system's
    view of the cancellation log, read incrementally since the race's cancels; else a fresh one.
    """
    import remotejob

    starts = 0
    lock = threading.Lock()

    def handler(job: Any) -> None:
        nonlocal starts
        with lock:
            starts += 1

    with environ(env):
        warm = q is not None
        if q is None:
            q = remotejob.connect(fresh_name("bench-cancel"), visibility_timeout=VISIBILITY_S,
                                  wait_time=WAIT_S)
            q.init()
        left_before = queue_left(q)
        ids = q.submit_many([{"body": f"job {i}".encode()} for i in range(jobs)])
        t0 = time.monotonic()
        returned = Counter(q.cancel(job_id, reason="bench before take").state for job_id in ids)
        cancel_s = time.monotonic() - t0
        time.sleep(CANCEL_CHECK_S + 0.5)
        worker = remotejob.Worker(q, handler, burst=True, concurrency=CONCURRENCY,
                                  cancel_check=CANCEL_CHECK_S, cancel_grace=CANCEL_GRACE_S,
                                  handle_signals=False)
        taken = worker.run()
        states = Counter(q.status(job_id).state for job_id in ids)
        left = queue_left(q)
    return {
        "name": q.name, "jobs": jobs, "warm_view": warm, "left_before": left_before, "cancel_s": cancel_s,
        "slept_s": CANCEL_CHECK_S + 0.5, "returned_states": dict(returned), "taken": taken,
        "handler_starts": starts, "cancelled": states.get("cancelled", 0), "states": dict(states),
        "queue_left": left,
    }


# -- 3. how fast a running job stops ---------------------------------------------------------


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group ``pgid`` is alive (zombies do not count)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def exec_supported() -> str | None:
    """None if ``CommandHandler`` takes ``grace``; else why the ``--exec`` runs are left out."""
    from remotejob.command import CommandHandler

    if "grace" in inspect.signature(CommandHandler).parameters:
        return None
    return "remotejob.command.CommandHandler has no grace keyword at this commit: not measured"


def stop_time(env: Mapping[str, str], runs: int, workdir: Path, kind: str = "python") -> dict[str, Any]:
    """A running job's stop after ``q.cancel()``, ``runs`` times, one job at a time.

    ``kind="python"``: the handler loops on ``job.check()`` every 10 ms; measured from
    ``q.cancel()`` returning to the handler's exit (its ``finally``) and to the pending queue
    holding no message (the worker deleted the job's). ``kind="exec"``: a
    ``CommandHandler(EXEC_TEMPLATE, grace=CANCEL_GRACE_S)`` (as ``worker --exec``) runs a shell
    that ignores SIGTERM; measured from ``q.cancel()`` returning to no live process left in its
    process group, and to the message deleted. Before each cancel the handler has started and a
    random 0 to ``cancel_check`` seconds pass, so cancels land anywhere in the worker's cycle of
    reading the cancellation log. The bound is one heartbeat interval (a third of the visibility
    timeout) plus the grace.
    """
    import remotejob

    pids = workdir / "pids"
    pids.mkdir(parents=True, exist_ok=True)
    entered: dict[str, threading.Event] = {}
    exited: dict[str, float] = {}
    lock = threading.Lock()

    def event(job_id: str) -> threading.Event:
        with lock:
            return entered.setdefault(job_id, threading.Event())

    def cooperative(job: Any) -> None:
        event(job.id).set()
        try:
            while True:
                job.check()
                time.sleep(0.01)
        finally:
            exited[job.id] = time.monotonic()

    handler: Callable[[Any], Any] = cooperative
    if kind == "exec":
        from remotejob.command import CommandHandler

        handler = CommandHandler(EXEC_TEMPLATE.replace("{pids}", str(pids)), grace=CANCEL_GRACE_S)

    out: list[dict[str, Any]] = []
    with environ(env):
        q = remotejob.connect(fresh_name("bench-stop"), visibility_timeout=VISIBILITY_S, wait_time=WAIT_S)
        q.init()
        with worker_thread(q, handler):
            for _ in range(runs):
                job_id = q.submit({"body": b"run until stopped"})
                deadline = time.monotonic() + DONE_TIMEOUT_S
                pidfile = pids / f"{job_id}.pid"
                while not (event(job_id).is_set() if kind == "python" else pidfile.exists()):
                    if time.monotonic() > deadline:
                        raise MeasurementError(f"job {job_id}'s handler did not start in "
                                               f"{DONE_TIMEOUT_S:.0f} s")
                    time.sleep(POLL_S)
                pgid = 0
                if kind == "exec":
                    while not (text := pidfile.read_text().strip()):
                        time.sleep(POLL_S)
                    pgid = int(text)
                time.sleep(random.uniform(0.0, CANCEL_CHECK_S))  # noqa: S311 - timing jitter
                state = q.cancel(job_id, reason="bench stop").state
                t0 = time.monotonic()
                gone = deleted = None
                while gone is None or deleted is None:
                    now = time.monotonic()
                    if gone is None and (exited.get(job_id) if kind == "python" else not _group_alive(pgid)):
                        gone = (exited[job_id] if kind == "python" else now) - t0
                    if deleted is None and not queue_left(q):
                        deleted = now - t0
                    if now - t0 > DONE_TIMEOUT_S:
                        raise MeasurementError(
                            f"job {job_id} not stopped {DONE_TIMEOUT_S:.0f} s after its cancel "
                            f"(stopped: {gone is not None}, deleted: {deleted is not None})")
                    time.sleep(POLL_S)
                out.append({"job": job_id, "returned": state, "stopped_s": gone, "deleted_s": deleted,
                            "final": q.status(job_id).state})
    bound = VISIBILITY_S / 3 + CANCEL_GRACE_S
    stopped, deleted_s = [r["stopped_s"] for r in out], [r["deleted_s"] for r in out]
    return {
        "kind": kind, "runs": runs, "bound_s": bound, "heartbeat_s": VISIBILITY_S / 3,
        "grace_s": CANCEL_GRACE_S,
        "stopped": stats(stopped), "deleted": stats(deleted_s),
        "within_bound": sum(max(r["stopped_s"], r["deleted_s"]) <= bound for r in out),
        "final_states": dict(Counter(r["final"] for r in out)), "per_run": out,
    }


# -- 4. requests per job of jobs nobody cancels ----------------------------------------------


def requests(env: Mapping[str, str], jobs: int, *, cancel_check: float | None = None, concurrency: int = 8
             ) -> dict[str, Any]:
    """Requests per job of ``jobs`` jobs nobody cancels, counted in this process.

    ``q.submit_many`` of small jobs, then one burst worker in this thread (``concurrency``
    handlers, ``cancel_check`` or the default), then every status read once: the requests of
    each phase (``request_counts()`` snapshots around it) per job, by operation.
    ``lists_allowed`` is what "a few per worker run" means here: one LIST per check interval the
    run lasted, plus one.
    """
    import remotejob

    if not is_aws(env):
        return {"applicable": False, "reason": "the embedded setting makes no requests"}
    options: dict[str, Any] = {} if cancel_check is None else {"cancel_check": cancel_check}
    with environ(env):
        q = remotejob.connect(fresh_name("bench-cancel-req"))
        q.init()
        worker = remotejob.Worker(q, lambda job: None, burst=True, concurrency=concurrency,
                                  handle_signals=False, **options)
        log = getattr(q.context, "cancellations", None)  # None: a remotejob from before cancellation
        check = float(log.interval) if log is not None else math.inf
        c0 = request_snapshot()
        ids = q.submit_many([{"body": os.urandom(100)} for _ in range(jobs)])
        c1 = request_snapshot()
        t1 = time.monotonic()
        taken = worker.run()
        t2 = time.monotonic()
        c2 = request_snapshot()
        states = Counter(q.status(job_id).state for job_id in ids)
        c3 = request_snapshot()
    if states != Counter({"completed": jobs}):
        raise MeasurementError(f"not every job completed: {dict(states)}")
    phases = {"submit": counts_between(c0, c1), "worker": counts_between(c1, c2),
              "reads": counts_between(c2, c3)}
    total: Counter[str] = Counter()
    for counts in phases.values():
        total.update(counts)
    phases["total"] = dict(sorted(total.items()))
    lists = total.get("S3.ListObjectsV2", 0)
    run_s = t2 - t1
    whole = per_job(phases["total"], jobs)
    return {
        "applicable": True, "jobs": jobs, "concurrency": concurrency, "cancel_check_s": check,
        "taken": taken, "run_s": run_s, "requests": phases,
        "requests_per_job": {p: per_job(c, jobs) for p, c in phases.items()},
        "lists": lists, "lists_allowed": math.ceil(run_s / check) + 1, "s3_per_job": whole["S3"],
        "s3_per_job_without_lists": whole["S3"] - lists / jobs, "sqs_per_job": whole["SQS"],
    }


# -- everything on one setting ---------------------------------------------------------------


def measure_setting(record: Callable[..., dict[str, Any]], setting: str, env: Mapping[str, str],
                    plan: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Parts 1-4 on one setting, each recorded (a failure is a row, the others still run)."""
    out: dict[str, Any] = {}
    shared: dict[str, Any] = {}
    out["race"] = record(f"control {setting} race ({plan['rounds']} rounds)", race, env, plan["rounds"],
                         job_system=shared)
    out["before_take"] = record(f"control {setting} cancel before take ({plan['jobs']} jobs)", before_take,
                                env, plan["jobs"], shared.get("q"))
    out["stop_python"] = record(f"control {setting} stop, Python handler ({plan['stop_runs']} runs)",
                                stop_time, env, plan["stop_runs"], workdir / setting / "python", "python")
    why = exec_supported()
    out["stop_exec"] = ({"skipped": why} if why else
                        record(f"control {setting} stop, --exec ({plan['stop_runs']} runs)", stop_time, env,
                               plan["stop_runs"], workdir / setting / "exec", "exec"))
    if is_aws(env):
        runs = [record(f"control {setting} requests ({plan['request_jobs']} jobs, default check) run {i + 1}/"
                       f"{REQUEST_RUNS}", requests, env, plan["request_jobs"]) for i in range(REQUEST_RUNS)]
        ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["sqs_per_job"])
        spread = {"runs_sqs_per_job": [r.get("sqs_per_job") for r in runs],
                  "runs_s3_per_job": [r.get("s3_per_job") for r in runs]}
        out["requests"] = {**ok[(len(ok) - 1) // 2], **spread} if ok else runs[0]
        out["requests_check_1s"] = record(
            f"control {setting} requests ({plan['request_jobs']} jobs, cancel_check {CANCEL_CHECK_S:g} s)",
            requests, env, plan["request_jobs"], cancel_check=CANCEL_CHECK_S)
    return out
