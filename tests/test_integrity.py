"""Integrity: the SHA-256 of every stored input and output is recorded when it is written and
checked when remotejob reads it back; a changed byte is an IntegrityError, never other bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import remotejob
from remotejob import keys
from tests.conftest import BackendSetup

LARGE = 300 * 1024  # too large to travel inline: stored under in/


def _flip_one_byte(q: remotejob.Queue, key: str) -> None:
    """Rewrite a stored object with one byte changed, metadata kept, as damage or an attacker would."""
    with q.object_store.get(key) as obj:
        body, metadata, content_type = bytearray(obj.read()), obj.metadata, obj.content_type
    body[len(body) // 2] ^= 0x01
    q.object_store.put(key, bytes(body), metadata, content_type)


def test_a_changed_input_byte_fails_the_job_instead_of_feeding_it_other_bytes(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, max_attempts=1)
    job_id = q.submit({"body": os.urandom(LARGE)})
    _flip_one_byte(q, keys.input_key(job_id))
    handed: list[int] = []

    def consume(job: remotejob.Job) -> None:
        with job.open() as stream:
            handed.append(len(stream.read()))

    q.work(consume, burst=True, handle_signals=False)

    assert handed == []
    with pytest.raises(remotejob.JobFailed, match="IntegrityError.*SHA-256"):
        q.wait(job_id, timeout=10)


def test_an_intact_input_reads_back_in_full(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect(wait_time=1)
    body = os.urandom(LARGE)
    job_id = q.submit({"body": body, "key": "named-input"})
    got: list[bytes] = []
    q.work(lambda job: got.append(job.download(tmp_path / "in.bin").read_bytes()), burst=True,
           handle_signals=False)
    assert got == [body] and q.status(job_id).state == "completed"


def test_a_changed_output_byte_is_caught_by_retrieve_and_fetch(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect(wait_time=1)
    job_id = q.submit({"body": b"make output"})
    q.work(lambda job: [{"key": "output", "body": os.urandom(LARGE)}], burst=True, handle_signals=False)
    st = q.wait(job_id, timeout=10)
    digest = st.assets["output"].sha256
    assert len(q.retrieve("out", f"{job_id}/output", sha256=digest).read()) == LARGE

    _flip_one_byte(q, keys.output_key(job_id, "output"))

    with pytest.raises(remotejob.IntegrityError, match="SHA-256"):
        q.retrieve("out", f"{job_id}/output", sha256=digest).read()
    env = {**os.environ, **backend.env, "REMOTEJOB_NAME": q.name,
           "REMOTEJOB_STORE": backend.store_url() and q.object_store.location or "",
           "REMOTEJOB_QUEUES": backend.queues_url() or ""}
    command = [sys.executable, "-m", "remotejob", "fetch", job_id, "-o", str(tmp_path / "out")]
    fetched = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 1 and "SHA-256" in fetched.stderr, fetched.stderr
    assert not (tmp_path / "out" / "output").exists()  # no half-written or wrong file left


def test_a_changed_output_byte_fails_the_next_pipeline_stage(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1, max_attempts=1, statuses=("pending", "second", "completed"))
    job_id = q.submit({"body": b"stage one"})

    def first(job: remotejob.Job) -> None:
        job.complete(assets=[{"key": "output", "body": os.urandom(LARGE)}], next_status="second")

    q.work(first, burst=True, handle_signals=False)
    _flip_one_byte(q, keys.output_key(job_id, "output"))
    q.work(lambda job: [{"key": "final", "body": job.open().read()}], status="second", burst=True,
           handle_signals=False)

    with pytest.raises(remotejob.JobFailed, match="IntegrityError"):
        q.wait(job_id, timeout=10)


CHUNK = 65536


def test_a_damaged_input_read_in_chunks_raises_before_the_stream_ends(backend: BackendSetup) -> None:
    """The guarantee: a stream with a recorded SHA-256 raises IntegrityError at its end, on the
    read that would return EOF, so a handler that reads in chunks never sees the end of bad bytes
    and cannot finish acting on them; the job fails."""
    q = backend.connect(wait_time=1, max_attempts=1)
    job_id = q.submit({"key": "chunked", "body": os.urandom(LARGE)})
    _flip_one_byte(q, keys.input_key(job_id))
    read: list[int] = []
    reached_eof: list[bool] = []

    def consume(job: remotejob.Job) -> list[dict[str, object]]:
        with job.open() as stream:
            while chunk := stream.read(CHUNK):
                read.append(len(chunk))
            reached_eof.append(True)
        return [{"key": "acted", "body": b"acted on the input"}]

    q.work(consume, burst=True, handle_signals=False)

    assert reached_eof == [], "the read that would have returned EOF raised instead"
    assert sum(read) < LARGE + CHUNK  # whatever came before the error, never more than the body
    with pytest.raises(remotejob.JobFailed, match="IntegrityError.*SHA-256"):
        q.wait(job_id, timeout=10)
    with pytest.raises(remotejob.NotFound):
        q.output(job_id, "acted")


def test_a_damaged_input_downloaded_raises_and_leaves_no_file(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect(wait_time=1, max_attempts=1)
    job_id = q.submit({"key": "downloaded", "body": os.urandom(LARGE)})
    _flip_one_byte(q, keys.input_key(job_id))
    folder = tmp_path / "downloads"
    folder.mkdir()
    raised: list[BaseException] = []

    def download(job: remotejob.Job) -> None:
        try:
            job.download(folder / "in.bin")
        except BaseException as exc:
            raised.append(exc)
            raise

    q.work(download, burst=True, handle_signals=False)

    assert [type(exc) for exc in raised] == [remotejob.IntegrityError]
    assert list(folder.iterdir()) == []  # neither the file nor a partial one
    with pytest.raises(remotejob.JobFailed, match="IntegrityError"):
        q.wait(job_id, timeout=10)


def test_a_damaged_output_read_through_output_with_its_sha256_raises(backend: BackendSetup) -> None:
    q = backend.connect(wait_time=1)
    job_id = q.submit({"body": b"make output"})
    q.work(lambda job: [{"key": "output", "body": os.urandom(LARGE)}], burst=True, handle_signals=False)
    digest = q.wait(job_id, timeout=10).assets["output"].sha256
    with q.output(job_id, "output", sha256=digest) as intact:
        assert len(intact.read()) == LARGE

    _flip_one_byte(q, keys.output_key(job_id, "output"))

    with pytest.raises(remotejob.IntegrityError, match="SHA-256"):
        q.output(job_id, "output", sha256=digest).read()
    with pytest.raises(remotejob.IntegrityError, match="SHA-256"), \
            q.output(job_id, "output", sha256=digest) as damaged:
        stream = damaged.open()
        while stream.read(CHUNK):  # read in chunks, the read that would return EOF raises
            pass
