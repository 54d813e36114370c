"""``worker --exec`` under control (issue 13), on every backend: a cancelled command's whole
process tree goes, a command past its time limit is killed even if it ignores SIGTERM, and
commands report progress through the file named in ``$REMOTEJOB_PROGRESS``.

The worker runs in-process with :class:`remotejob.command.CommandHandler` (the handler behind
``remotejob worker --exec``). Its ``cancel_grace`` is far longer than any wait here, so a job
whose command was stopped ends only because the handler returned: whatever the tests see once
the job has ended is what the handler left behind.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import remotejob
from remotejob.command import CommandHandler, parse_progress
from tests.conftest import BackendSetup, running, wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for zombies")

NEVER = 60.0
"""The worker's cancel_grace: longer than any wait, so the worker never gives up on a handler."""


def connect(backend: BackendSetup, **options: Any) -> remotejob.Queue:
    options.setdefault("visibility_timeout", 3)
    options.setdefault("wait_time", 1)
    return backend.connect(**options)  # type: ignore[no-any-return]


@contextlib.contextmanager
def serving(q: remotejob.Queue, handler: CommandHandler) -> Iterator[threading.Thread]:
    """A burst worker on a thread that learns of cancels within 0.2 s and never abandons a
    handler; on the way out (a failed test) the commands still running are killed."""
    worker = remotejob.Worker(q, handler, burst=True, handle_signals=False, cancel_check=0.2,
                              cancel_grace=NEVER)
    with running(worker) as thread:
        try:
            yield thread
        finally:
            handler.kill_all()


def submit(q: remotejob.Queue, folder: Path, **options: Any) -> str:
    """A job whose command learns ``folder`` (for its pid and go files) as ``$REMOTEJOB_META_DIR``."""
    return q.submit({"body": b"input", "dir": str(folder)}, **options)


def gone(pid: int) -> bool:
    """The process has ended: it does not exist, or it is a zombie nobody reaped yet."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2:].split()[0] in (b"Z", b"X")


def started(folder: Path, *names: str) -> dict[str, int]:
    """Wait for the command to write ``sh.pid`` (its last step before it blocks); the pids."""
    wait_until(lambda: (folder / "sh.pid").is_file() and (folder / "sh.pid").read_text().endswith("\n"),
               what="the command to start")
    return {name: int((folder / f"{name}.pid").read_text()) for name in ("sh", *names)}


def finished(thread: threading.Thread) -> None:
    wait_until(lambda: not thread.is_alive(), timeout=30, what="the burst worker to finish its job")


def test_cancel_stops_the_whole_process_tree_and_publishes_nothing(
    backend: BackendSetup, tmp_path: Path
) -> None:
    q = connect(backend)
    job_id = submit(q, tmp_path)
    # Two background children and the shell that waits for them: one process group.
    handler = CommandHandler(
        "sh -c 'd=$REMOTEJOB_META_DIR; echo partial > {outdir}/partial.txt; "
        "sleep 300 & echo $! > \"$d/child.pid\"; sleep 300 & echo $! > \"$d/child2.pid\"; "
        "echo $$ > \"$d/sh.pid\"; wait'",
        grace=5,
    )
    with serving(q, handler) as thread:
        pids = started(tmp_path, "child", "child2")
        assert not any(gone(pid) for pid in pids.values())

        assert q.cancel(job_id, reason="not needed any more").state == "cancelled"
        finished(thread)

        assert [name for name, pid in pids.items() if not gone(pid)] == []
    status = q.status(job_id)
    assert (status.state, status.error, status.outputs) == ("cancelled", "not needed any more", [])
    with pytest.raises(remotejob.NotFound):
        q.retrieve("out", f"{job_id}/partial.txt").read()
    with pytest.raises(remotejob.JobCancelled):
        q.wait(job_id, timeout=5)


def test_a_command_ignoring_sigterm_is_killed_after_the_grace_past_its_time_limit(
    backend: BackendSetup, tmp_path: Path
) -> None:
    q = connect(backend, max_attempts=1)
    job_id = submit(q, tmp_path, time_limit=1)
    # SIGTERM is ignored by the shell and, inherited, by its child: only SIGKILL ends them.
    handler = CommandHandler(
        "sh -c 'trap \"\" TERM; d=$REMOTEJOB_META_DIR; sleep 300 & echo $! > \"$d/child.pid\"; "
        "echo $$ > \"$d/sh.pid\"; wait'",
        grace=0.5,
    )
    with serving(q, handler) as thread:
        pids = started(tmp_path, "child")
        finished(thread)

        assert [name for name, pid in pids.items() if not gone(pid)] == []
    status = q.status(job_id)
    assert status.state == "failed"
    assert status.error is not None and "time limit" in status.error, status.error
    assert status.outputs == []


def test_progress_lines_show_while_the_command_runs_and_the_last_one_lands_with_the_outcome(
    backend: BackendSetup, tmp_path: Path
) -> None:
    q = connect(backend)
    job_id = submit(q, tmp_path)
    handler = CommandHandler(
        "sh -c 'd=$REMOTEJOB_META_DIR; p=$REMOTEJOB_PROGRESS; "
        "echo \"1/4 one\" >> \"$p\"; echo \"2/4 two\" >> \"$p\"; echo \"2.5/4 two and a half\" >> \"$p\"; "
        "echo $$ > \"$d/sh.pid\"; while [ ! -e \"$d/go\" ]; do sleep 0.05; done; "
        "echo \"4/4 four\" >> \"$p\"; echo result > {outdir}/result.txt'",
    )
    with serving(q, handler) as thread:
        started(tmp_path)

        def latest() -> remotejob.Progress | None:
            progress = q.status(job_id).progress
            return progress if progress is not None and progress.done == 2.5 else None

        # Reports are coalesced: the latest line lands within a few seconds, while it still runs.
        progress = wait_until(latest, what="the progress the waiting command reported")
        assert (progress.done, progress.total, progress.message) == (2.5, 4, "two and a half")
        assert progress.fraction == 2.5 / 4
        assert q.status(job_id).state == "inprogress"

        (tmp_path / "go").touch()
        finished(thread)
    status = q.status(job_id)
    assert status.state == "completed", status.error
    assert status.progress is not None
    assert (status.progress.done, status.progress.total, status.progress.message) == (4, 4, "four")
    assert sorted(status.outputs) == ["result.txt", "stderr", "stdout"]  # the progress file is no output


def test_malformed_progress_lines_are_ignored_and_do_not_fail_the_job(
    backend: BackendSetup, tmp_path: Path
) -> None:
    q = connect(backend)
    job_id = submit(q, tmp_path)
    # Each malformed line would replace the last report if it were taken; the 100000-byte line of
    # zeros ending in "9/4" spans reads and would parse as 9/4 if lines were not bounded.
    handler = CommandHandler(
        "sh -c 'p=$REMOTEJOB_PROGRESS; echo \"1/4 first\" >> \"$p\"; "
        "printf \"%s\\n\" abc 1/ /4 \"-1/4 negative\" \"1e999/2 huge\" nan inf \"3/4x\" >> \"$p\"; "
        "printf \"\\377\\376 7/8\\n\" >> \"$p\"; printf \"%0100000d/4 too long\\n\" 9 >> \"$p\"; "
        "echo \"3 files copied\" >> \"$p\"; echo \"nope 8/8\" >> \"$p\"; echo ok > {outdir}/result.txt'",
    )
    with serving(q, handler) as thread:
        finished(thread)
    status = q.status(job_id)
    assert status.state == "completed", status.error
    assert status.progress is not None
    assert (status.progress.done, status.progress.total, status.progress.message) == (3, None, "files copied")
    assert "result.txt" in status.outputs


@pytest.mark.parametrize(("line", "parsed"), [
    (b"40/100 resizing", (40, 100, "resizing")),
    (b"3 files copied", (3, None, "files copied")),
    (b"0.5/1", (0.5, 1, None)),
    (b"  7/8   spaced out  \r", (7, 8, "spaced out")),
    (b".5", (0.5, None, None)),
    (b"12/0 zero total", (12, 0, "zero total")),
    (b"", None),
    (b"resizing 40/100", None),
    (b"40/ 100", None),
    (b"40/100resizing", None),
    (b"-1/4", None),
    (b"1e3/4", None),
    (b"9" * 400 + b"/4", None),
    (b"4/4 caf\xe9", None),
])
def test_progress_line_format(line: bytes, parsed: tuple[float, float | None, str | None] | None) -> None:
    """The documented format: DONE[/TOTAL][ MESSAGE], decimals allowed; anything else is None."""
    assert parse_progress(line) == parsed
