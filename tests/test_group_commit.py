"""The embedded backend's group commit: writes that this process's threads queue while another
write commits go into one transaction together, each in its own savepoint.

What a user relies on: every write that returned is committed; a write that failed (a create-once
put of a taken key) undoes only itself, never the writes grouped with it; and a group whose
transaction cannot be committed fails every one of its writers, with nothing applied.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import remotejob
from remotejob.backends._sqlite import Database
from remotejob.backends.local_store import LocalStore
from tests.conftest import wait_until

SCHEMA = "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)"


def _insert(key: str) -> Callable[[sqlite3.Connection], Any]:
    return lambda conn: conn.execute("INSERT INTO t VALUES (?)", (key,))


def _rows(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(row[0] for row in conn.execute("SELECT k FROM t"))


def _queue_behind(db: Database, first: Callable[[sqlite3.Connection], Any],
                  ops: dict[str, Callable[[sqlite3.Connection], Any]]) -> dict[str, Any]:
    """Run ``first`` holding the write lock until the ``ops`` (one thread each) are all queued
    behind it, then let go: the ops commit as one group. Returns each op's result or exception."""
    inside, release = threading.Event(), threading.Event()
    outcomes: dict[str, Any] = {}

    def held(conn: sqlite3.Connection) -> Any:
        inside.set()
        assert release.wait(30)
        return first(conn)

    def run(name: str, op: Callable[[sqlite3.Connection], Any]) -> None:
        try:
            outcomes[name] = db.write(op)
        except BaseException as exc:  # noqa: BLE001 - the outcome under test
            outcomes[name] = exc

    threads = [threading.Thread(target=run, args=("first", held))]
    threads[0].start()
    assert inside.wait(30)
    for name, op in ops.items():
        threads.append(threading.Thread(target=run, args=(name, op)))
        threads[-1].start()
    wait_until(lambda: len(db._writers().pending) == len(ops), what="the writes to queue up")
    release.set()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_a_failed_write_undoes_only_itself_in_its_group(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", SCHEMA)
    db.write(_insert("taken"))
    def half_done(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('half')")
        conn.execute("INSERT INTO t VALUES ('taken')")

    outcomes = _queue_behind(db, _insert("first"), {"a": _insert("a"), "dup": half_done, "c": _insert("c")})
    assert isinstance(outcomes["dup"], sqlite3.IntegrityError)
    assert not any(isinstance(outcomes[name], BaseException) for name in ("first", "a", "c"))
    assert _rows(tmp_path / "x.db") == ["a", "c", "first", "taken"]


def test_a_group_that_cannot_commit_fails_every_writer_and_applies_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / "x.db", SCHEMA)

    def interrupted(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO t VALUES ('boom')")
        raise KeyboardInterrupt  # not an op's own failure: the whole transaction goes

    ops = {"a": _insert("a"), "boom": interrupted, "b": _insert("b")}
    outcomes = _queue_behind(db, _insert("first"), ops)
    assert outcomes["first"] is not None and _rows(tmp_path / "x.db") == ["first"]
    grouped = [outcomes[name] for name in ("a", "boom", "b")]
    # the thread that ran the group gets the interrupt itself; the others learn nothing was applied
    assert sum(isinstance(outcome, KeyboardInterrupt) for outcome in grouped) == 1
    assert sum(isinstance(outcome, sqlite3.Error) for outcome in grouped) == 2
    db.write(_insert("after"))  # the database is usable again
    assert _rows(tmp_path / "x.db") == ["after", "first"]


def test_create_once_puts_racing_in_one_group_have_one_winner(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure()
    wins: list[int] = []
    lost: list[int] = []
    gate = threading.Barrier(16)

    def claim(index: int) -> None:
        gate.wait(30)
        try:
            store.put("jobs/j/final", f"{index}".encode(), if_absent=True)
            wins.append(index)
        except remotejob.AlreadyExists:
            lost.append(index)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(wins) == 1 and len(lost) == 15
    assert store.get("jobs/j/final").read() == f"{wins[0]}".encode()


@pytest.mark.parametrize("count", [1, 40])
def test_every_put_that_returned_is_there(tmp_path: Path, count: int) -> None:
    store = LocalStore(tmp_path / "store")
    store.ensure()

    def put(index: int) -> None:
        store.put(f"k/{index}", f"v{index}".encode())

    threads = [threading.Thread(target=put, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    reopened = LocalStore(tmp_path / "store")
    assert sorted(info.key for info in reopened.list("k/")) == sorted(f"k/{i}" for i in range(count))
    assert all(reopened.get(f"k/{i}").read() == f"v{i}".encode() for i in range(count))
