"""Prometheus metrics: a worker serves /metrics, and its counters match the jobs it ran."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import remotejob
from tests.conftest import BackendSetup, unique

OUTCOMES = ("succeeded", "failed", "retried", "cancelled", "dead_lettered")


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it as Prometheus does: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def upper(job: remotejob.Job) -> list[dict[str, Any]]:
    with job.open() as stream:
        body = stream.read()
    if body == b"boom":
        raise RuntimeError("boom")
    return [{"key": "output", "body": body.upper()}]


def test_counters_match_the_jobs_the_worker_ran(backend: BackendSetup) -> None:
    q = backend.connect(max_attempts=2, visibility_timeout=2)
    done = q.submit_many([{"body": f"job {n}"} for n in range(4)])
    failing = q.submit({"body": b"boom"})  # fails both attempts: retried once, then dead-lettered
    cancelled = q.submit({"body": b"never runs"})
    q.cancel(cancelled)
    q.message_queue.send(f"{q.name}-pending", "not a job")  # refused: dead-lettered, never taken

    worker = remotejob.Worker(q, upper, burst=True, handle_signals=False, retry_delay=0, metrics_port=0)
    try:
        worker.run()
        assert worker.metrics is not None and worker.metrics.port
        samples = scrape(worker.metrics.port)
    finally:
        assert worker.metrics is not None
        worker.metrics.close()

    assert [q.status(job_id).state for job_id in done] == ["completed"] * 4
    assert q.status(failing).state == "failed" and q.status(cancelled).state == "cancelled"
    taken = len(done) + 2 + 1  # two attempts of the failing job; the cancelled one is taken, then dropped
    assert value(samples, "remotejob_jobs_taken_total", queue="pending") == taken
    assert {name: value(samples, f"remotejob_jobs_{name}_total", queue="pending") for name in OUTCOMES} == {
        "succeeded": 4, "failed": 1, "retried": 1, "cancelled": 1, "dead_lettered": 2,
    }
    handled = len(done) + 2  # every handler run, failed ones too; the cancelled job never ran
    assert value(samples, "remotejob_handler_duration_seconds_count", queue="pending") == handled
    assert value(samples, "remotejob_handler_duration_seconds_bucket", queue="pending", le="+Inf") == handled
    assert value(samples, "remotejob_jobs_running", queue="pending") == 0

    kinds = {(dict(labels)["queue"], dict(labels)["kind"]) for name, labels in samples
             if name == "remotejob_queue_messages"}
    assert kinds == {(queue, kind) for queue in ("pending", "inprogress", "completed", "dead")
                     for kind in ("waiting", "in_flight", "delayed")}
    assert value(samples, "remotejob_queue_messages", queue="pending", kind="waiting") == 0
    assert value(samples, "remotejob_queue_messages", queue="dead", kind="waiting") == 2
    ages = {dict(labels)["queue"]: age for (name, labels), age in samples.items()
            if name == "remotejob_queue_oldest_message_age_seconds"}
    if backend.kind == "embedded":  # exact from SQLite; SQS reports it only to CloudWatch
        assert ages["pending"] == 0 and ages["dead"] > 0
    else:
        assert ages == {}


def test_a_job_cancelled_while_it_runs_counts_as_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    q = remotejob.connect(unique("m"), home=tmp_path)
    job_id = q.submit({"body": b"long"})
    started = threading.Event()

    def handler(job: remotejob.Job) -> None:
        started.set()
        give_up = time.monotonic() + 30
        while not job.cancelled and time.monotonic() < give_up:
            time.sleep(0.05)  # a handler's own work loop, checking job.cancelled

    worker = remotejob.Worker(q, handler, max_jobs=1, cancel_check=0.2, handle_signals=False,
                              metrics_port=0)
    thread = threading.Thread(target=worker.run, daemon=True)
    try:
        thread.start()
        assert started.wait(30)
        q.cancel(job_id)
        thread.join(30)
        assert not thread.is_alive()
        assert worker.metrics is not None and worker.metrics.port
        samples = scrape(worker.metrics.port)
    finally:
        if worker.metrics is not None:
            worker.metrics.close()

    assert q.status(job_id).state == "cancelled"
    assert {name: value(samples, f"remotejob_jobs_{name}_total", queue="pending") for name in OUTCOMES} == {
        "succeeded": 0, "failed": 0, "retried": 0, "cancelled": 1, "dead_lettered": 0,
    }
    assert "could not record" not in caplog.text


def test_each_worker_counts_its_own_jobs(tmp_path: Path) -> None:
    first, second = (remotejob.connect(unique("m"), home=tmp_path) for _ in range(2))
    first.submit_many([{"body": b"a"}] * 3)
    second.submit({"body": b"b"})
    workers = [remotejob.Worker(q, upper, burst=True, handle_signals=False, metrics_port=0)
               for q in (first, second)]
    try:
        for worker in workers:
            worker.run()
        ports = [w.metrics.port for w in workers if w.metrics is not None]
        counts = [value(scrape(port), "remotejob_jobs_succeeded_total", queue="pending")
                  for port in ports if port is not None]
    finally:
        for worker in workers:
            if worker.metrics is not None:
                worker.metrics.close()
    assert counts == [3, 1]


def _worker_command(tmp_path: Path, *args: str, prelude: str = "") -> list[str]:
    code = f"{prelude}from remotejob.cli import main; main()"
    return [sys.executable, "-c", code, "--name", unique("m"), "worker", "--exec", "true", *args]


def test_the_worker_command_serves_metrics_and_says_when_it_cannot(tmp_path: Path) -> None:
    env = {**os.environ, "REMOTEJOB_HOME": str(tmp_path / "home")}
    for name in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES"):
        env.pop(name, None)
    worker = subprocess.Popen(_worker_command(tmp_path, "--metrics-port", "0"), env=env, cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert worker.stderr is not None
        line = worker.stderr.readline()
        found = re.fullmatch(r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics\n", line)
        assert found, line
        samples = scrape(int(found.group(1)))
        assert value(samples, "remotejob_jobs_taken_total", queue="pending") == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = subprocess.run(_worker_command(tmp_path, "--burst", "--metrics-port", str(port)), env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert busy.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in busy.stderr

    absent = "import sys; sys.modules['prometheus_client'] = None; "  # as if it were not installed
    missing = subprocess.run(_worker_command(tmp_path, "--burst", "--metrics-port", "0", prelude=absent),
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode != 0
    assert "pip install 'remotejob[metrics]'" in missing.stderr


def test_a_worker_without_metrics_never_imports_prometheus(tmp_path: Path) -> None:
    script = (
        "import sys, remotejob\n"
        f"q = remotejob.connect('m', home={str(tmp_path)!r})\n"
        "q.submit({'body': b'x'})\n"
        "assert remotejob.Worker(q, lambda job: None, burst=True).run() == 1\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
