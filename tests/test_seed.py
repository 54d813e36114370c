"""The seed's own tests, ported: store/retrieve/remove, trigger/next/acknowledge, submit/download,
complete with assets. Run on every backend."""

from __future__ import annotations

from pathlib import Path

import pytest

import remotejob
from tests.conftest import BackendSetup

pytestmark = pytest.mark.apis("sync", "async")  # the async API passes the same tests


def test_store_retrieve_remove(backend: BackendSetup) -> None:
    q = backend.connect()
    key = q.store("in", {"body": b"hello", "filename": "hello.txt", "name": "Greeting"})
    with pytest.raises(remotejob.NotFound):
        q.retrieve("in", "no-such-key")
    with q.retrieve("in", key) as obj:
        assert obj.key == f"in/{key}"
        assert obj.read() == b"hello"
        assert obj.metadata == {"filename": "hello.txt", "name": "Greeting"}
        assert obj.content_type == "text/plain"
        assert obj.size == 5
    q.remove("in", key)
    with pytest.raises(remotejob.NotFound):
        q.retrieve("in", key)
    q.remove("in", key)  # idempotent


def test_store_with_own_key_and_directions(backend: BackendSetup) -> None:
    q = backend.connect()
    assert q.store("input", {"body": "text body", "key": "docs/a.txt"}) == "docs/a.txt"
    assert q.retrieve("in", "docs/a.txt").read() == b"text body"
    q.store("output", {"body": b"out", "key": "x/y"})
    assert q.retrieve("out", "x/y").read() == b"out"


def test_store_trigger_next_acknowledge(backend: BackendSetup) -> None:
    q = backend.connect()
    key = q.store("in", {"body": b"payload", "filename": "p.bin"})
    job_id = q.trigger(key, status="pending")
    assert job_id == key
    job = q.next("pending", timeout=10)
    assert job is not None
    assert job.id == job_id
    assert job.key == key
    assert job.status == "pending"
    assert job.message_id and job.receipt
    assert job.receive_count == 1
    job.acknowledge()
    assert q.next("pending", timeout=0) is None


def test_submit_next_download(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect()
    source = tmp_path / "cat.jpg"
    source.write_bytes(bytes(range(256)) * 100)
    with open(source, "rb") as handle:
        job_id = q.submit({"body": handle, "filename": "cat.jpg", "name": "Cat"})
    job = q.next("pending", timeout=10)
    assert job is not None and job.id == job_id
    assert job.metadata == {"filename": "cat.jpg", "name": "Cat"}
    target = job.download(tmp_path / "cat-copy.jpg")
    assert target.read_bytes() == source.read_bytes()
    with job.open() as stream:
        assert stream.read() == source.read_bytes()
    assert q.retrieve("in", job_id).content_type == "image/jpeg"


def test_complete_with_two_assets(backend: BackendSetup) -> None:
    q = backend.connect()
    job_id = q.submit({"body": b"input"})
    job = q.next("pending", timeout=10)
    assert job is not None
    result = job.complete(
        assets=[
            {"key": "output", "filename": "cat.png", "body": b"\x89PNG..."},
            {"key": "stderr", "body": "warnings: none\n"},
        ]
    )
    assert result.state == "completed"
    assert sorted(result.outputs) == ["output", "stderr"]
    out = q.retrieve("out", f"{job_id}/output")
    assert out.read() == b"\x89PNG..."
    assert out.content_type == "image/png"
    assert q.retrieve("out", f"{job_id}/stderr").read() == b"warnings: none\n"
    assert q.next("pending", timeout=0) is None  # completing removed the message


def test_remove_job_by_receipt(backend: BackendSetup) -> None:
    q = backend.connect()
    q.submit({"body": b"x"})
    job = q.next("pending", timeout=10)
    assert job is not None
    q._remove_job("pending", job.receipt)
    assert q.next("pending", timeout=0) is None


def test_metadata_round_trips_exactly(backend: BackendSetup) -> None:
    q = backend.connect()
    meta = {
        "name": "Ünïcode ☃ 猫",
        "Upper": "Case Kept",
        "padded": "  spaces  ",
        "empty": "",
        "looks_encoded": "=?UTF-8?B?w5w=?=",
        "with space": "x",
        "emoji": "🐈",
    }
    key = q.store("in", {"body": b"x", **meta})
    assert q.retrieve("in", key).metadata == meta
    q.trigger(key)
    q.submit({"body": b"inline", **meta})
    for _ in range(2):
        job = q.next("pending", timeout=10)
        assert job is not None and job.metadata == meta
        job.acknowledge()
