"""Where a job system lives: defaults, environment variables, and creation on first use."""

from __future__ import annotations

from pathlib import Path

import pytest

import remotejob
from tests import servers
from tests.conftest import BackendSetup, unique


def test_init_creates_every_queue_and_is_repeatable(backend: BackendSetup) -> None:
    q = backend.connect()
    made = q.init()
    expected = [f"{q.name}-{s}" for s in ("pending", "inprogress", "completed", "dead")]
    assert made["queues"] == expected
    queues = backend.make_queues()
    for name in expected:
        assert queues.depth(name).waiting == 0  # exists (NotFound otherwise)
    again = backend.connect(q.name, store=q.object_store, queues=q.message_queue)
    assert again.init() == made  # existing bucket and queues are fine


def test_environment_selects_the_backend(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, queues = backend.store_url(), backend.queues_url()
    if store:
        monkeypatch.setenv("REMOTEJOB_STORE", store)
    if queues:
        monkeypatch.setenv("REMOTEJOB_QUEUES", queues)
    name = unique("env")
    job_id = remotejob.connect(name).submit({"body": b"via env", "key": unique("k")})
    explicit = remotejob.connect(name, store=store, queues=queues)
    assert explicit.retrieve("in", job_id).read() == b"via env"
    assert explicit.object_store.location == remotejob.connect(name).object_store.location


def test_default_bucket_is_created_on_first_use(backend: BackendSetup) -> None:
    if backend.kind == "embedded":
        pytest.skip("buckets are an S3 concept")
    name = unique("bkt")
    q = remotejob.connect(name, store="s3://", queues="sqs://")
    assert q.object_store.location == f"s3://remotejobs-{name}/"
    job_id = q.submit({"body": b"first"})
    assert q.status(job_id).state == "pending"  # its batch manifest made the bucket
    assert backend.s3_endpoint
    s3 = servers._client("s3", backend.s3_endpoint)
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]  # type: ignore[attr-defined]
    assert f"remotejobs-{name}" in buckets


def test_embedded_default_lives_under_remotejob_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("REMOTEJOB_HOME", str(tmp_path / "home"))
    q = remotejob.connect("thumbnails")
    q.submit({"body": b"x"})
    assert (tmp_path / "home" / "queues.db").is_file()
    assert (tmp_path / "home" / "store" / "thumbnails").is_dir()
    monkeypatch.delenv("REMOTEJOB_HOME")
    monkeypatch.chdir(tmp_path)
    remotejob.connect("thumbnails").submit({"body": b"x"})
    assert (tmp_path / ".remotejob" / "queues.db").is_file()


def test_locations_given_as_paths(tmp_path: Path) -> None:
    q = remotejob.connect("paths", store=str(tmp_path / "objects"),
                          queues=f"sqlite:///{tmp_path / 'q.db'}")
    job_id = q.submit({"body": b"x"})
    assert (tmp_path / "q.db").is_file()
    assert q.status(job_id).state == "pending"
