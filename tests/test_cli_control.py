"""The command line's control over jobs (issue 13): cancel, retry, progress in status and wait,
time limits given to submit and worker.

Commands run in-process through click's CliRunner against the ``backend`` fixture's job system;
workers are burst workers started the same way, with Python handlers defined in this module.
One test runs the real process, where the exit code and the single error line are the point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console

import remotejob
from remotejob.cli import main
from remotejob.cli.app import JobBars
from tests.conftest import BackendSetup, unique

REPO = Path(__file__).resolve().parent.parent
# The command line passes its options and environment to connect() and prints what the API
# returns; what the backends do differently is proven on all three settings by the API's suites.
# The CLI runs on the embedded default and on one AWS setting: aws-real-s3, whose SeaweedFS
# also checks the credentials the commands were given (moto's S3 accepts any; both use moto's SQS).
pytestmark = pytest.mark.backends("embedded", "aws-real-s3")
HANDLERS = __name__  # the handlers below, as `remotejob worker MODULE:FUNCTION` names them


# -- handlers the workers run -------------------------------------------------------------------


def finish(job: remotejob.Job) -> list[dict[str, Any]]:
    """Leave a mark that the handler ran (metadata ``mark``: a path), then complete."""
    if "mark" in job.metadata:
        Path(job.metadata["mark"]).write_text(job.id)
    return [{"key": "output", "body": b"done"}]


def needs_flag(job: remotejob.Job) -> list[dict[str, Any]]:
    """Fail until the file named by metadata ``flag`` exists."""
    if not Path(job.metadata["flag"]).exists():
        raise RuntimeError("the flag is not set")
    return [{"key": "output", "body": b"done"}]


def reports_progress(job: remotejob.Job) -> list[dict[str, Any]]:
    job.progress(3, 10, "step")
    return [{"key": "output", "body": b"done"}]


def loops_until_stopped(job: remotejob.Job) -> None:
    """Work in small steps, checking between them; a minute at most (then it completes, which
    the tests that use it count as the stop never arriving)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job.check()
        time.sleep(0.01)


# -- helpers ------------------------------------------------------------------------------------


def _system(backend: BackendSetup) -> tuple[list[str], remotejob.Queue]:
    """A fresh job system: the CLI's connection options for it, and a Queue on it."""
    name, store, queues = unique("ctl"), backend.store_url(), backend.queues_url()
    argv = ["--name", name, *(["--store", store] if store else []), *(["--queues", queues] if queues else [])]
    q = remotejob.connect(name, store=store, queues=queues, visibility_timeout=2)
    q.init()
    return argv, q


def _cli(argv: list[str], *args: str) -> Result:
    return CliRunner().invoke(main, [*argv, *args])


def _show(result: Result) -> str:
    return f"exit {result.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"


def _ok(result: Result) -> Result:
    assert result.exit_code == 0, _show(result)
    return result


def _error_line(result: Result, code: int) -> str:
    """The command exited ``code`` with one ``remotejob: error:`` line on stderr; return it."""
    assert result.exit_code == code, _show(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("remotejob: error:"), _show(result)
    return lines[0]


def _docs(result: Result) -> dict[str, dict[str, Any]]:
    """The --json lines of a command, by job id."""
    return {d["id"]: d for d in map(json.loads, result.stdout.splitlines())}


def _work(argv: list[str], handler: str, *options: str) -> Result:
    """A burst worker running ``handler`` (a function of this module) until the queue is empty."""
    return _ok(_cli(argv, "worker", f"{HANDLERS}:{handler}", "--burst", "--max-attempts", "1",
                    "--cancel-check", "0.2", *options))


def _completed_job(argv: list[str], q: remotejob.Queue) -> str:
    job_id = q.submit({"body": b"x"})
    _work(argv, "finish")
    assert q.status(job_id).state == "completed"
    return job_id


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_means_it_never_runs(backend: BackendSetup, tmp_path: Path) -> None:
    argv, q = _system(backend)
    mark = tmp_path / "ran"
    job_id = q.submit({"body": b"x", "mark": str(mark)})

    cancelled = _ok(_cli(argv, "cancel", job_id, "--reason", "wrong input", "--json"))

    doc = _docs(cancelled)[job_id]
    assert (doc["state"], doc["error"]) == ("cancelled", "wrong input")
    _work(argv, "finish")
    assert not mark.exists(), "the worker ran a job cancelled before it was taken"
    st = q.status(job_id)
    assert (st.state, st.error, st.outputs) == ("cancelled", "wrong input", [])
    listed = _ok(_cli(argv, "ls", "--state", "cancelled", "--json"))
    assert list(_docs(listed)) == [job_id]
    waited = _cli(argv, "wait", job_id)  # cancelled is not a success: exit 1, reported as cancelled
    assert waited.exit_code == 1, _show(waited)
    assert waited.stderr.strip() == f"{job_id}  cancelled  wrong input"


def test_cancel_of_a_completed_job_exits_1_and_reports_it(backend: BackendSetup) -> None:
    argv, q = _system(backend)
    done_id = _completed_job(argv, q)
    queued_id = q.submit({"body": b"y"})

    result = _cli(argv, "cancel", done_id, queued_id, "--json")

    line = _error_line(result, 1)
    assert done_id in line and "completed" in line and queued_id not in line
    docs = _docs(result)
    assert docs[done_id]["state"] == "completed" and docs[done_id]["outputs"] == ["output"]
    assert docs[queued_id]["state"] == "cancelled"  # the other job is cancelled all the same
    assert q.status(done_id).state == "completed"
    again = _ok(_cli(argv, "cancel", queued_id))  # cancelling a cancelled job again is harmless
    assert queued_id in again.stdout and "cancelled" in again.stdout


def test_cancel_of_an_unknown_id_names_it_and_exits_2(backend: BackendSetup, tmp_path: Path) -> None:
    argv, q = _system(backend)
    job_id = q.submit({"body": b"x"})
    missing = unique("never")

    done = subprocess.run(
        [sys.executable, "-m", "remotejob", *argv, "cancel", missing, job_id],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True,
        timeout=120,
    )

    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("remotejob: error:"), done.stderr
    assert missing in lines[0] and "never submitted" in lines[0]
    assert q.status(job_id).state == "cancelled"  # the known id was still cancelled


# -- retry --------------------------------------------------------------------------------------


def test_retry_of_a_failed_job_runs_it_again_with_its_history(backend: BackendSetup, tmp_path: Path) -> None:
    argv, q = _system(backend)
    flag = tmp_path / "flag"
    job_id = q.submit({"body": b"x", "flag": str(flag)})
    _work(argv, "needs_flag")
    assert q.status(job_id).state == "failed"
    flag.write_text("")

    retried = _ok(_cli(argv, "retry", job_id, "--json"))

    doc = _docs(retried)[job_id]
    assert (doc["state"], doc["run"]) == ("pending", 1)
    _work(argv, "needs_flag")
    status = _docs(_ok(_cli(argv, "status", job_id, "--json")))[job_id]
    assert (status["state"], status["outputs"], status["run"]) == ("completed", ["output"], 1)
    history = [(h["state"], h["error"]) for h in status["history"]]
    assert history == [("failed", "RuntimeError: the flag is not set")]
    row = next(line for line in _ok(_cli(argv, "status", job_id)).stdout.splitlines() if job_id in line)
    cells = [cell.strip() for cell in row.split("│")]
    # job, state, status, age, attempts, earlier runs, progress, outputs, error
    assert (cells[0], cells[1], cells[5]) == (job_id, "completed", "1"), row


def test_retry_of_a_completed_job_is_refused_with_the_reason(backend: BackendSetup) -> None:
    argv, q = _system(backend)
    job_id = _completed_job(argv, q)

    line = _error_line(_cli(argv, "retry", job_id), 2)

    assert job_id in line and "is completed" in line and "only a failed or cancelled job" in line
    st = q.status(job_id)
    assert (st.state, st.run, st.history) == ("completed", 0, [])


# -- progress -----------------------------------------------------------------------------------


def test_status_shows_the_last_progress_a_handler_reported(backend: BackendSetup) -> None:
    argv, q = _system(backend)
    job_id = q.submit({"body": b"x"})
    before = time.time()
    _work(argv, "reports_progress")

    doc = _docs(_ok(_cli(argv, "status", job_id, "--json")))[job_id]
    table = _ok(_cli(argv, "status", job_id)).stdout

    assert doc["state"] == "completed"
    progress = doc["progress"]
    assert (progress["done"], progress["total"], progress["message"]) == (3, 10, "step")
    assert progress["updated"] >= before - 5  # a time, not a placeholder (clocks may differ a little)
    assert "3/10 (30%) step" in table


def test_wait_prints_no_bars_when_not_on_a_terminal(backend: BackendSetup) -> None:
    argv, q = _system(backend)
    ids = [q.submit({"body": b"x"}) for _ in range(2)]
    _work(argv, "reports_progress")

    waited = _ok(_cli(argv, "wait", *ids))

    assert waited.stderr == ""
    assert waited.stdout.splitlines() == [f"{job_id}  completed  output" for job_id in ids]


def _status(job_id: str, state: str, progress: remotejob.Progress | None = None) -> remotejob.JobStatus:
    return remotejob.JobStatus(id=job_id, state=state, status="pending", created=0.0, updated=0.0,
                               progress=progress)


def test_job_bars_draw_each_jobs_progress_on_a_terminal() -> None:
    screen = StringIO()
    console = Console(file=screen, force_terminal=True, width=120)
    running, waiting = "job-running", "job-waiting"

    with JobBars(console, [running, waiting]) as bars:
        bars.update(_status(running, "inprogress", remotejob.Progress(3, 10, "resizing [/]", time.time())))
        bars.update(_status(waiting, "pending"))

    drawn = screen.getvalue()
    assert "3/10 (30%)" in drawn and "resizing [/]" in drawn  # a handler's text is not rich markup
    assert running in drawn and "inprogress" in drawn
    assert waiting in drawn and "pending" in drawn
    assert "jobs done" in drawn and "0/2" in drawn


def test_job_bars_draw_nothing_off_a_terminal() -> None:
    screen = StringIO()

    with JobBars(Console(file=screen), ["a-job"]) as bars:
        bars.update(_status("a-job", "inprogress", remotejob.Progress(3, 10, "step", time.time())))

    assert screen.getvalue() == ""


# -- time limits --------------------------------------------------------------------------------


def test_submit_time_limit_stops_the_job_on_the_worker(backend: BackendSetup, tmp_path: Path) -> None:
    argv, q = _system(backend)
    (tmp_path / "in.txt").write_text("x")

    submitted = _ok(_cli(argv, "submit", str(tmp_path / "in.txt"), "--time-limit", "0.3"))
    job_id = submitted.stdout.strip()
    _work(argv, "loops_until_stopped")

    st = q.status(job_id)
    assert st.state == "failed", st
    assert st.error is not None and st.error.startswith("TimeLimitExceeded"), st.error
    assert "time limit of 0.3 s" in st.error


def test_worker_time_limit_applies_to_jobs_submitted_without_one(backend: BackendSetup) -> None:
    argv, q = _system(backend)
    job_id = q.submit({"body": b"x"})

    _work(argv, "loops_until_stopped", "--time-limit", "0.3", "--cancel-grace", "5")

    st = q.status(job_id)
    assert st.state == "failed", st
    assert st.error is not None and st.error.startswith("TimeLimitExceeded"), st.error
    assert "time limit of 0.3 s" in st.error
