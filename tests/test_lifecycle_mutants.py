"""Tests that kill mutants of remotejob/lifecycle.py which survived the mutation run (issue 18):
each pins a README promise ("Workers and delivery guarantees") that no other test mutmut runs
checked, on every backend."""

from __future__ import annotations

from typing import Any

import pytest

import remotejob
from tests.conftest import BackendSetup


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
