"""The embedded backend is safe for several processes (README): processes that open one home at
once, the first time it is used, all get through.

Two processes setting up a fresh SQLite file used to fail now and then with "database is locked":
switching the file to WAL mode upgrades a read lock to a write lock, and SQLite refuses that at
once, without waiting, while another connection holds the write lock (as one does while it sets
the file up). The CLI end-to-end tests ran ``remotejob init`` first to step around it.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import remotejob

REPO = Path(__file__).resolve().parent.parent
ROUNDS = 20
PROCESSES = 8

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux's /proc")


def _open_and_use(home: str, gate: Any, index: int, ids: Path) -> None:
    """One process's first use of a home: submit a job (most do), or set the system up."""
    code = 1
    try:
        gate.wait(30)
        q = remotejob.connect("race", home=home)
        if index % 3 == 2:
            q.init()
        else:
            (ids / str(index)).write_text(q.submit({"body": f"job {index}".encode()}))
        code = 0
    except BaseException as exc:  # noqa: BLE001 - reported through the exit code and stderr
        os.write(2, f"process {index}: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)  # a forked child leaves the test process's state alone


def test_processes_opening_a_fresh_home_at_once_all_succeed(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")  # quick to start: many rounds, to meet the race
    for round_ in range(ROUNDS):
        home, ids = tmp_path / f"home-{round_}", tmp_path / f"ids-{round_}"
        ids.mkdir()
        gate = context.Event()
        procs = [context.Process(target=_open_and_use, args=(str(home), gate, i, ids))
                 for i in range(PROCESSES)]
        for proc in procs:
            proc.start()
        gate.set()  # they all open the new home at once
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0] * PROCESSES, f"round {round_}: see stderr"
        q = remotejob.connect("race", home=home)
        submitted = [path.read_text() for path in ids.iterdir()]
        assert len(submitted) == sum(1 for i in range(PROCESSES) if i % 3 != 2)
        assert all(q.status(job_id).state == "pending" for job_id in submitted)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux)."""
    folder = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(folder)
    except OSError:  # the process is gone
        return False
    for name in names:
        try:
            if os.readlink(folder / name) == str(path):
                return True
        except OSError:  # closed while we looked
            continue
    return False


def test_opening_a_database_another_process_is_setting_up_waits_for_it(tmp_path: Path) -> None:
    """The moment the race hit: a database file not yet in WAL mode whose write lock another
    connection holds. Opening it must wait for that lock, not fail."""
    home = tmp_path / "home"
    home.mkdir()
    database = home / "queues.db"
    (tmp_path / "in.txt").write_text("x")
    holder = sqlite3.connect(database, isolation_level=None)  # an empty file, rollback journal
    holder.execute("BEGIN IMMEDIATE")  # the write lock, as a process setting the file up has it
    env = {**os.environ, "PYTHONPATH": str(REPO), "REMOTEJOB_HOME": str(home), "REMOTEJOB_NAME": "race"}
    for name in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES"):
        env.pop(name, None)
    # a process of its own: a forked child would inherit this process's SQLite lock bookkeeping
    opener = subprocess.Popen(
        [sys.executable, "-m", "remotejob", "submit", "in.txt"], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        # Until it has the file open (it meets the lock right after) or has ended, failing at once.
        while opener.poll() is None and not _has_open(opener.pid, database):
            assert time.monotonic() < deadline, "the opener never opened the database"
            time.sleep(0.005)
    finally:
        holder.execute("COMMIT")
        holder.close()
    out, err = opener.communicate(timeout=60)
    assert opener.returncode == 0, f"opening a database whose write lock was held failed: {err}"
    [job_id] = out.split()
    assert remotejob.connect("race", home=home).status(job_id).state == "pending"
