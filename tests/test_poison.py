"""A job that kills its worker on every attempt (issue 19): the queue dead-letters it, and then
remotejob must say so, not show it ``pending`` forever.

The queue's redrive policy (``maxReceiveCount = max_attempts``; the SQLite queue applies the same
rule) moves the message to ``<name>-dead`` once it was delivered ``max_attempts`` times without an
outcome. Whoever next looks into the dead-letter queue settles such a job: an idle worker (at most
every ``dead_letter_check`` seconds), ``dead_letters()`` and ``redrive()``. Settled means: recorded
``failed`` with an error that starts "dead-lettered after N deliveries" and names the last worker,
one completion notice, ``wait()`` raises ``JobFailed``, and ``redrive()`` reopens it like any
failed job.

The process tests start real worker processes (``tests/worker_proc.py``) whose handler ends the
process on every attempt, and start a fresh one after each death, as a supervisor would. Nothing
here sleeps to synchronise: the test polls conditions with deadlines, or long-polls a queue.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import remotejob
from tests.conftest import BackendSetup, wait_until
from tests.worker_proc import DIE_STATUS, expected_outputs

REPO = Path(__file__).resolve().parent.parent
MAX_ATTEMPTS = 2
VISIBILITY_S = 2
DEAD_LETTER_CHECK_S = 0.5
SETTLE_TIMEOUT_S = 60.0
"""The whole loop (deaths, dead-lettering, settling) must end within this."""
DEATHS = {"exit": DIE_STATUS, "sigkill": -signal.SIGKILL, "abort": -signal.SIGABRT}
"""worker_proc's dying handlers and the exit status of a process each one ends."""
DIE_AFTER_S = 1.5
"""How long a dying handler runs first: past the worker's first heartbeat (a third of the visibility
timeout), which records the job ``inprogress`` with the worker's host:pid, so the error can name it
(a worker that dies sooner leaves no trace of itself)."""
PREFIX = f"dead-lettered after {MAX_ATTEMPTS} deliveries"


@dataclass
class Proc:
    popen: subprocess.Popen[bytes]
    err: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> int:
        """SIGTERM once the worker is ready (before, nothing handles it), then its exit code."""
        wait_until(lambda: not self.alive() or "ready pid=" in self.stderr(), 30,
                   f"worker {self.pid} to start")
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(20)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} did not stop after SIGTERM\n{self.stderr()}") from None


class Workers:
    """Worker processes on one job system, sharing an executions log; killed at teardown."""

    def __init__(self, backend: BackendSetup, tmp: Path) -> None:
        self.backend = backend
        self.tmp = tmp
        self.log = tmp / "executions.log"
        self.log.touch()
        self.started: list[Proc] = []
        self.store = backend.store_url()
        self.queues = backend.queues_url()

    def connect(self) -> remotejob.Queue:
        q: remotejob.Queue = self.backend.connect(
            store=self.store, queues=self.queues, visibility_timeout=VISIBILITY_S, wait_time=1,
            max_attempts=MAX_ATTEMPTS,
        )
        q.init()  # the queues and their redrive policy, before any worker creates them
        return q

    def start(self, q: remotejob.Queue, handler: str, *extra: str) -> Proc:
        argv = [
            sys.executable, "-m", "tests.worker_proc", "--name", q.name, "--visibility", str(VISIBILITY_S),
            "--wait-time", "1", "--max-attempts", str(MAX_ATTEMPTS), "--retry-delay", "0",
            "--handler", handler, "--log", str(self.log), *extra,
        ]
        if self.store is not None:
            argv += ["--store", self.store]
        if self.queues is not None:
            argv += ["--queues", self.queues]
        err = self.tmp / f"worker-{len(self.started)}.err"
        with open(err, "wb") as out:
            popen = subprocess.Popen(
                argv, env={**os.environ, **self.backend.env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            )
        proc = Proc(popen, err)
        self.started.append(proc)
        return proc

    def starts(self, job_id: str) -> list[tuple[int, int]]:
        """``(pid, receive count)`` of every handler execution of the job, in order."""
        found = []
        for line in self.log.read_text().splitlines():
            kind, job, pid, count = line.split()
            if kind == "start" and job == job_id:
                found.append((int(pid), int(count)))
        return found


@pytest.fixture
def workers(backend: BackendSetup, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(backend, tmp_path)
    try:
        yield started
    finally:
        for proc in started.started:
            if proc.alive():
                proc.popen.kill()
            proc.popen.wait(10)


def notices(q: remotejob.Queue, job_id: str, until: Callable[[list[str]], bool], timeout: float) -> list[str]:
    """Take completion notices off ``<name>-completed`` (acknowledging each) until ``until`` holds
    for the states of this job's notices seen so far, then until the queue has nothing more for a
    long poll; return those states. Raises AssertionError if ``until`` never holds in time."""
    deadline = time.monotonic() + timeout
    states: list[str] = []
    while True:
        done = until(states)
        if not done and time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for notices of {job_id}; saw {states}")
        notice = q.next("completed", timeout=1.5)
        if notice is None:
            if done:
                return states
            continue
        notice.acknowledge()
        if notice.id == job_id:
            assert notice.state is not None
            states.append(notice.state)


def check_dead_letter_error(st: remotejob.JobStatus, last_worker_pid: int) -> str:
    assert st.state == "failed", st
    error = st.error or ""
    assert error.startswith(PREFIX), error
    assert "stopped during every attempt" in error, error
    assert f":{last_worker_pid}" in error, f"the error does not name the last worker's pid: {error}"
    return error


def dies_or_settles(q: remotejob.Queue, job_id: str, proc: Proc, deadline: float, deaths: int) -> None:
    """Wait until ``proc`` has exited or the job is recorded failed."""
    wait_until(
        lambda: not proc.alive() or q.status(job_id).state == "failed", deadline - time.monotonic(),
        lambda: f"job {job_id} to be recorded failed after {deaths} worker death(s) (now: "
                f"{q.status(job_id)}); the live worker's stderr:\n{proc.stderr()}",
    )


CASES = [("embedded", "sigkill"), ("aws", "abort"), ("aws-real-s3", "exit")]
"""Each way of dying once, each on one setting: how the process died does not reach the backend,
which only sees deliveries that are never finished (on the AWS settings it is the queue's, moto's,
redrive policy that moves the message; on the embedded one SQLite's transactions, which a process
killed mid-write cannot tear: test_sqlite_concurrency), and each case costs ~15 s."""


@pytest.mark.parametrize(("backend", "death"), CASES, indirect=["backend"])
def test_a_job_that_kills_its_worker_every_time_ends_failed_and_redrives(
    workers: Workers, death: str
) -> None:
    q = workers.connect()
    body = f"kills its worker by {death}".encode()
    job_id = q.submit({"body": body})

    # A supervisor's loop: start a worker, wait until it dies, start another, until the job is
    # recorded failed. Each worker also looks into the dead-letter queue when idle, so the one
    # started after the last allowed delivery finds the job there and settles it.
    deaths: list[Proc] = []
    settler: Proc | None = None
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while settler is None:
        proc = workers.start(q, death, "--sleep", str(DIE_AFTER_S),
                             "--dead-letter-check", str(DEAD_LETTER_CHECK_S))
        dies_or_settles(q, job_id, proc, deadline, len(deaths))
        if proc.alive():
            settler = proc
            break
        code = proc.popen.wait()
        assert code == DEATHS[death], f"worker {proc.pid} exited {code}, not by its handler:\n{proc.stderr()}"
        deaths.append(proc)
        assert len(deaths) <= MAX_ATTEMPTS, (
            f"the job ran {len(deaths)} times with max_attempts={MAX_ATTEMPTS}: "
            "the queue never dead-lettered it"
        )
        if q.status(job_id).state == "failed":
            break  # settled by someone who saw it first; no worker left to stop
    # Every allowed delivery ran the handler in a fresh process, which died during it.
    assert workers.starts(job_id) == [(p.pid, n) for n, p in enumerate(deaths, 1)]
    assert len(deaths) == MAX_ATTEMPTS

    st = q.status(job_id)
    error = check_dead_letter_error(st, deaths[-1].pid)
    with pytest.raises(remotejob.JobFailed) as failed:
        q.wait(job_id, timeout=5, poll=0.1)
    assert failed.value.error == error
    assert notices(q, job_id, lambda seen: bool(seen), 15) == ["failed"]
    if settler is not None:  # (first: its sweeps would hold the letter for a moment now and then)
        assert settler.stop() == 0  # an idle worker: stops at once; it never ran the job
        assert [pid for pid, _ in workers.starts(job_id)] == [p.pid for p in deaths]
    letters = q.dead_letters()  # the user's `remotejob dead list`: the job is there, settled once
    assert [letter.job for letter in letters] == [job_id]
    assert q.status(job_id) == st

    # redrive() reopens it like any failed job, and a fixed handler completes it.
    assert q.redrive() == 1
    assert q.status(job_id).state == "pending"
    fixed = workers.start(q, "sleep")
    done = q.wait(job_id, timeout=30, poll=0.1)
    assert done.state == "completed" and done.worker is not None and done.worker.endswith(f":{fixed.pid}")
    assert q.output(job_id, "output").read() == expected_outputs(body)["output"]
    # One notice per outcome: the failed one was taken above; nothing repeats it later.
    assert notices(q, job_id, lambda seen: "completed" in seen, 15) == ["completed"]
    assert q.dead_letters() == []
    assert fixed.stop() == 0


def take(q: remotejob.Queue, job_id: str, receive_count: int) -> remotejob.Job:
    """Receive the job's next delivery in this process, as a worker would (its progress recorded)."""
    job = q.next(timeout=VISIBILITY_S + 3)
    assert job is not None and job.id == job_id and job.receive_count == receive_count, job
    return job


def connect(backend: BackendSetup) -> remotejob.Queue:
    q: remotejob.Queue = backend.connect(visibility_timeout=1, wait_time=1, max_attempts=MAX_ATTEMPTS)
    q.init()
    return q


@pytest.mark.backends("embedded", "aws")  # moto's redrive policy is the same on both AWS settings
def test_dead_letters_settles_a_job_the_queue_dead_lettered(backend: BackendSetup) -> None:
    """A job whose every delivery was abandoned (taken, never finished: the taker died) and that
    no idle worker looked at yet is settled by the user's own ``dead_letters()``."""
    q = connect(backend)
    job_id = q.submit({"body": b"abandoned twice"})
    for n in range(1, MAX_ATTEMPTS + 1):
        take(q, job_id, n)  # dropped: its visibility lapses, as a dead worker's would
    # The next receive, once the last delivery's visibility lapsed, moves it to <name>-dead.
    assert q.next(timeout=3) is None

    letters = q.dead_letters()
    assert [letter.job for letter in letters] == [job_id]
    st = q.status(job_id)
    error = check_dead_letter_error(st, os.getpid())  # this process took the last delivery
    assert notices(q, job_id, lambda seen: bool(seen), 10) == ["failed"]
    q.dead_letters()  # looking again settles nothing twice
    assert q.status(job_id) == st
    with pytest.raises(remotejob.JobFailed) as failed:
        q.wait(job_id, timeout=5, poll=0.1)
    assert failed.value.error == error
    assert notices(q, job_id, lambda seen: True, 10) == []


def test_a_last_attempt_still_running_is_not_settled(backend: BackendSetup) -> None:
    """Settling must not race the last allowed delivery while its worker still runs it."""
    q = connect(backend)
    job_id = q.submit({"body": b"slow on its last attempt"})
    take(q, job_id, 1)  # abandoned
    last = take(q, job_id, MAX_ATTEMPTS)
    last.extend(30)  # a live worker's heartbeat keeps it hidden

    assert q.dead_letters() == []
    assert q.status(job_id).state == "inprogress"
    last.complete(assets=[{"key": "output", "body": b"made it"}])
    st = q.wait(job_id, timeout=10, poll=0.1)
    assert st.state == "completed" and st.attempt == MAX_ATTEMPTS
    assert q.output(job_id, "output").read() == b"made it"
    assert Counter(notices(q, job_id, lambda seen: bool(seen), 10)) == {"completed": 1}
    assert q.dead_letters() == []
