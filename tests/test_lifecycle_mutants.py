"""Tests that kill mutants of remotejob/lifecycle.py which survived the mutation run (issue 18):
each pins a README promise ("Workers and delivery guarantees") that no other test mutmut runs
checked, on every backend."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest

import remotejob
from tests.conftest import BackendSetup, running
from tests.faults import Crash, connect_faulty


def test_a_redriven_later_pipeline_stage_runs_again_and_completes(backend: BackendSetup) -> None:
    """``redrive()`` reopens a failed job so a fixed handler can complete it, also when the stage
    that failed is a later pipeline stage, whose first delivery claimed the stage for its message:
    the redriven message is a new one and must be let run the stage (and the job shows pending in
    that stage meanwhile)."""
    q = backend.connect(statuses=("pending", "thumbnail", "completed"), max_attempts=1)
    job_id = q.submit({"body": b"picture"})

    def resize(job: remotejob.Job) -> None:
        with job.open() as stream:
            body = stream.read()
        job.complete(assets=[{"key": "resized", "body": body + b"-resized"}], next_status="thumbnail")

    def broken(job: remotejob.Job) -> None:
        raise ValueError("thumbnailer broken")

    ran: list[str] = []

    def fixed(job: remotejob.Job) -> list[dict[str, Any]]:
        ran.append(job.id)
        with job.open() as stream:
            return [{"key": "thumb", "body": stream.read() + b"-thumb"}]

    assert q.work(resize, burst=True, handle_signals=False) == 1
    assert q.work(broken, status="thumbnail", burst=True, handle_signals=False) == 1
    with pytest.raises(remotejob.JobFailed):
        q.wait(job_id, timeout=5)
    [letter] = q.dead_letters()
    assert letter.job == job_id and letter.status == "thumbnail"

    assert q.redrive() == 1
    st = q.status(job_id)
    assert (st.state, st.status) == ("pending", "thumbnail")
    q.work(fixed, status="thumbnail", burst=True, handle_signals=False)

    assert ran == [job_id]
    st = q.wait(job_id, timeout=5)
    assert st.state == "completed" and sorted(st.outputs) == ["resized", "thumb"]
    assert q.retrieve("out", f"{job_id}/thumb").read() == b"picture-resized-thumb"
    assert q.dead_letters() == []


def test_a_pipeline_stage_whose_staged_output_was_lost_fails_the_job_and_hands_nothing_on(
    backend: BackendSetup,
) -> None:
    """A stage that claimed its hand-on, then died before publishing a staged output that is gone
    when its redelivery finishes it: the job is recorded failed (never a job whose outputs cannot
    be read) listing the outputs that were published and only those, the next stage never runs,
    and one failed notice is sent."""
    # wait_time=1: a stopped worker waits out its SQS long poll
    q, faults = connect_faulty(backend, statuses=("pending", "thumbnail", "completed"), visibility_timeout=1,
                               wait_time=1)
    job_id = q.submit({"body": b"picture"})

    def resize(job: remotejob.Job) -> None:
        job.complete(assets=[{"key": "resized", "body": b"r" * 100_000}, {"key": "note", "body": b"n"}],
                     next_status="thumbnail", next_input="resized")

    faults.crash("store.put", match="/handoff-pending")  # claimed, then died before publishing
    with contextlib.suppress(Crash):
        q.work(resize, burst=True, handle_signals=False)
    faults.revive()
    staged = [info.key for info in q.object_store.list(f"jobs/{job_id}/attempts/")]
    assert len(staged) == 1
    q.object_store.delete(staged[0])

    ran: list[str] = []
    worker = remotejob.Worker(q, resize, handle_signals=False)
    with running(worker), pytest.raises(remotejob.JobFailed) as failed:
        q.wait(job_id, timeout=30, poll=0.2)
    assert "'resized'" in failed.value.error and "removed" in failed.value.error
    st = q.status(job_id)
    assert st.state == "failed" and sorted(st.outputs) == ["note"]  # only what can be read is listed
    assert q.output(job_id, "note", sha256=st.assets["note"].sha256).read() == b"n"
    with pytest.raises(remotejob.NotFound):
        q.output(job_id, "resized")

    assert q.work(lambda job: ran.append(job.id), status="thumbnail", burst=True, handle_signals=False) == 0
    assert ran == []
    noticed = []
    while (notice := q.next("completed", timeout=2)) is not None:
        noticed.append((notice.id, notice.state))
        notice.acknowledge()
    assert noticed == [(job_id, "failed")]
