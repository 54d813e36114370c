"""The first commands (init, submit, worker, status, demo) through real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import remotejob
from tests.conftest import BackendSetup, unique
from tests.faults import Faults, FaultyQueues

REPO = Path(__file__).resolve().parent.parent
# The command line passes its options and environment to connect() and prints what the API
# returns; what the backends do differently is proven on all three settings by the API's suites.
# The CLI runs on the embedded default and on one AWS setting: aws-real-s3, whose SeaweedFS
# also checks the credentials the commands were given (moto's S3 accepts any; both use moto's SQS).
pytestmark = pytest.mark.backends("embedded", "aws-real-s3")

HANDLER = """
def shout(job):
    with job.open() as stream:
        text = stream.read().decode()
    if "fail" in text:
        raise RuntimeError("asked to fail")
    return [{"key": "output", "body": text.upper(), "size": job.metadata.get("size", "")}]
"""


def _env(backend: BackendSetup) -> dict[str, str]:
    """The environment of one job system for CLI subprocesses (a unique name and prefix)."""
    return {
        **os.environ,
        **backend.env,
        "PYTHONPATH": str(REPO),
        "REMOTEJOB_NAME": unique("cli"),
        "REMOTEJOB_STORE": backend.store_url() or "",
        "REMOTEJOB_QUEUES": backend.queues_url() or "",
    }


def _connect(env: dict[str, str]) -> remotejob.Queue:
    return remotejob.connect(
        env["REMOTEJOB_NAME"], store=env["REMOTEJOB_STORE"] or None, queues=env["REMOTEJOB_QUEUES"] or None
    )


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "remotejob", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_submit_work_status(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    name = env["REMOTEJOB_NAME"]
    (tmp_path / "handlers.py").write_text(HANDLER)
    (tmp_path / "a.txt").write_text("first file")
    (tmp_path / "b.txt").write_text("please fail")

    init = _cli(env, tmp_path, "init")
    assert init.returncode == 0, init.stderr
    assert f"queue: {name}-pending" in init.stdout and f"queue: {name}-dead" in init.stdout

    submitted = _cli(env, tmp_path, "submit", "a.txt", "b.txt", "--meta", "size=128")
    assert submitted.returncode == 0, submitted.stderr
    ok_id, bad_id = submitted.stdout.split()

    worker = _cli(env, tmp_path, "worker", "handlers:shout", "--burst", "--max-attempts", "2",
                  "--retry-delay", "0")
    assert worker.returncode == 0, worker.stderr
    assert "processed 3 job(s)" in worker.stderr  # the failing job ran twice

    status = _cli(env, tmp_path, "status", "--json", ok_id, bad_id)
    assert status.returncode == 0, status.stderr
    docs = {d["id"]: d for d in map(json.loads, status.stdout.splitlines())}
    assert docs[ok_id]["state"] == "completed" and docs[ok_id]["outputs"] == ["output"]
    assert docs[bad_id]["state"] == "failed"
    assert docs[bad_id]["error"] == "RuntimeError: asked to fail"
    out = _connect(env).retrieve("out", f"{ok_id}/output")
    assert out.read() == b"FIRST FILE"
    assert out.metadata == {"size": "128"}


ASYNC_HANDLER = """
import asyncio

async def shout(job):
    async with job.open() as body:
        text = (await body.read()).decode()
    await asyncio.sleep(0)
    return [{"key": "output", "body": text.upper()}]
"""


@pytest.mark.backends("embedded")
def test_the_worker_command_runs_an_async_handler(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    (tmp_path / "async_handlers.py").write_text(ASYNC_HANDLER)
    q = _connect(env)
    job_ids = q.submit_many([{"body": f"job {i}"} for i in range(5)])

    worker = _cli(env, tmp_path, "worker", "async_handlers:shout", "--burst", "--concurrency", "5")
    assert worker.returncode == 0, worker.stderr
    assert "processed 5 job(s)" in worker.stderr
    for i, job_id in enumerate(job_ids):
        assert q.output(job_id, "output").read() == f"JOB {i}".encode()


def test_errors_are_one_line_with_exit_codes(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    missing = _cli(env, tmp_path, "status", "never-submitted")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "never submitted" in missing.stderr and "Traceback" not in missing.stderr

    bad_meta = _cli(env, tmp_path, "submit", "-", "--meta", "novalue")
    assert bad_meta.returncode == 2 and "KEY=VALUE" in bad_meta.stderr

    bad_target = _cli(env, tmp_path, "worker", "no_such_module:f", "--burst")
    assert bad_target.returncode == 2 and "no_such_module" in bad_target.stderr


def test_stdin_submit(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    done = subprocess.run(
        [sys.executable, "-m", "remotejob", "submit", "-"],
        input=b"from stdin",
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.decode().strip()
    q = _connect(env)
    assert q.retrieve("in", job_id).read() == b"from stdin"
    assert q.status(job_id).state == "pending"


def test_demo_runs_on_the_embedded_default(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for var in ("REMOTEJOB_HOME", "REMOTEJOB_STORE", "REMOTEJOB_QUEUES", "REMOTEJOB_NAME"):
        env.pop(var, None)
    done = subprocess.run(
        [sys.executable, "-m", "remotejob", "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("completed") == 3
    assert "AN OLD SILENT POND" in done.stdout
    assert (tmp_path / ".remotejob" / "queues.db").exists()


def test_ls_lists_batched_jobs_before_they_run(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    ids = _connect(env).submit_many({"body": f"job {i}"} for i in range(3))

    listed = _cli(env, tmp_path, "ls", "--json")

    assert listed.returncode == 0, listed.stderr
    docs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted((d["id"], d["state"]) for d in docs) == sorted((i, "pending") for i in ids)


def test_ls_leaves_out_the_jobs_of_a_batch_that_were_not_sent(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    plain = _connect(env)
    faults = Faults()
    q = remotejob.Queue(plain.name, plain.object_store, FaultyQueues(plain.message_queue, faults))
    sends = iter(range(100))
    faults.fail("queue.send_batch", remotejob.BackendUnavailable("unreachable"),
                match=lambda *a, **k: next(sends) >= 1, times=100)
    with pytest.raises(remotejob.BatchPartlyFailed) as partly:
        q.submit_many({"body": f"job {i}"} for i in range(12))

    listed = _cli(env, tmp_path, "ls", "--json")

    assert listed.returncode == 0, listed.stderr
    docs = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sorted(d["id"] for d in docs) == sorted(partly.value.done.values())


def test_stats_probe_measures_requests_and_dollars_per_job(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    probed = _cli(env, tmp_path, "stats", "--probe", "20", "--json")

    assert probed.returncode == 0, probed.stderr
    per_job = json.loads(probed.stdout)["per_job"]
    assert per_job["jobs"] == 20 and per_job["prices_taken"]
    if backend.kind == "embedded":
        assert per_job["requests"] == {} and per_job["usd_per_million_jobs"] == 0
    else:
        requests = per_job["requests"]
        assert requests["S3.PutObject"] == 1 + 1 / 20  # each final record, one batch manifest
        assert requests["S3.GetObject"] == 1  # the requester's status read
        assert 0 < per_job["sqs"] < 1 and per_job["usd_per_million_jobs"] > 0
    q = _connect({**env, "REMOTEJOB_NAME": env["REMOTEJOB_NAME"] + "-probe"})
    assert list(q.object_store.list("jobs/")) == [] and list(q.object_store.list("batches/")) == []


BLOCKING_HANDLER = """
import os, pathlib, time

def block(job):
    pathlib.Path(os.environ["STARTED"]).write_text(job.id)
    deadline = time.monotonic() + 60
    while not pathlib.Path(os.environ["RELEASE"]).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
"""


@pytest.mark.parametrize("prefetch", [None, "0"])
def test_worker_prefetch_option_sets_how_many_jobs_wait_for_a_handler(
    backend: BackendSetup, tmp_path: Path, prefetch: str | None
) -> None:
    from tests.conftest import wait_until

    env = _env(backend)
    env.update(STARTED=str(tmp_path / "started"), RELEASE=str(tmp_path / "release"))
    (tmp_path / "handlers.py").write_text(BLOCKING_HANDLER)
    q = _connect(env)
    q.init()
    q.submit_many([{"body": b"x"}] * 4)
    args = ["worker", "handlers:block", "--max-jobs", "4", "--concurrency", "1"]
    args += ["--prefetch", prefetch] if prefetch else []
    worker = subprocess.Popen([sys.executable, "-m", "remotejob", *args],
                              cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / "started").exists(), timeout=60, what="the first job to start")
        # the first receive took all it had room for: one running, plus the prefetched ones
        held = q.message_queue.depth(q.queue_name("pending")).in_flight
        assert held == (1 if prefetch == "0" else 3)
    finally:
        (tmp_path / "release").write_text("")
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0 and "processed 4 job(s)" in stderr, stderr
