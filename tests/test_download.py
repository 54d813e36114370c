"""Saving a body to a file (``job.download``, ``StoredObject.save``): whole, checked, atomic.

On S3 a body larger than one part is fetched by parallel ranged GETs written at their offsets;
these tests lower the part size (``download_part_size``, an attribute of the S3 store; the
embedded store has none and streams) so that a small body takes that path on the AWS settings.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

import remotejob
from remotejob import keys
from tests.conftest import BackendSetup, unique
from tests.proxy import Proxy

PART = 64 * 1024
SIZE = 20 * PART + 12345  # 21 parts, the last one short


def _folder(tmp_path: Path) -> Path:
    """A folder of its own for what a test saves (the embedded setting keeps its home in tmp_path)."""
    folder = tmp_path / "saved"
    folder.mkdir()
    return folder


def _connect(backend: BackendSetup, **options: Any) -> Any:
    q = backend.connect(wait_time=1, **options)
    if hasattr(q.object_store, "download_part_size"):
        q.object_store.download_part_size = PART
        q.object_store.download_concurrency = 4
    return q


def _replace(q: Any, key: str, body: bytes) -> None:
    """Overwrite a stored object with other bytes, metadata kept (as a rewrite would)."""
    info = q.object_store.head(key)
    q.object_store.put(key, body, info.metadata, info.content_type)


def _flip_byte(q: Any, key: str, index: int) -> None:
    with q.object_store.get(key) as obj:
        body = bytearray(obj.read())
    body[index] ^= 0x01
    _replace(q, key, bytes(body))


def test_a_body_of_many_parts_is_saved_whole_by_download_retrieve_and_output(
    backend: BackendSetup, tmp_path: Path
) -> None:
    tmp_path = _folder(tmp_path)
    q = _connect(backend)
    body = os.urandom(SIZE)
    job_id = q.submit({"body": body})
    job = q.next("pending", timeout=10)
    assert job is not None and job.id == job_id

    assert job.download(tmp_path / "input.bin").read_bytes() == body
    result = job.complete(assets=[{"key": "output", "body": body[::-1]}])
    digest = result.assets["output"].sha256
    q.output(job_id, "output", sha256=digest).save(tmp_path / "output.bin")
    q.retrieve("in", job_id).save(tmp_path / "unchecked.bin")

    assert (tmp_path / "output.bin").read_bytes() == body[::-1]
    assert (tmp_path / "unchecked.bin").read_bytes() == body
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.bin", "output.bin", "unchecked.bin"]


@pytest.mark.parametrize("where", [0, PART - 1, 10 * PART, SIZE - 1])
def test_a_byte_changed_in_any_part_fails_the_download_and_leaves_no_file(
    backend: BackendSetup, tmp_path: Path, where: int
) -> None:
    q = _connect(backend, max_attempts=1)
    job_id = q.submit({"body": os.urandom(SIZE)})
    _flip_byte(q, keys.input_key(job_id), where)
    folder = tmp_path / "downloads"
    folder.mkdir()
    raised: list[type[BaseException]] = []

    def download(job: remotejob.Job) -> None:
        try:
            job.download(folder / "in.bin")
        except BaseException as exc:
            raised.append(type(exc))
            raise

    q.work(download, burst=True, handle_signals=False)

    assert raised == [remotejob.IntegrityError]
    assert list(folder.iterdir()) == []  # neither the file nor a partial one
    with pytest.raises(remotejob.JobFailed, match="IntegrityError"):
        q.wait(job_id, timeout=10)


def test_a_damaged_output_saved_with_its_sha256_raises_and_keeps_the_file_already_there(
    backend: BackendSetup, tmp_path: Path
) -> None:
    tmp_path = _folder(tmp_path)
    q = _connect(backend)
    job_id = q.submit({"body": b"make output"})
    q.work(lambda job: [{"key": "output", "body": os.urandom(SIZE)}], burst=True, handle_signals=False)
    digest = q.wait(job_id, timeout=10).assets["output"].sha256
    _flip_byte(q, keys.output_key(job_id, "output"), SIZE - PART // 2)
    target = tmp_path / "output.bin"
    target.write_bytes(b"what was there before")

    with pytest.raises(remotejob.IntegrityError, match="SHA-256"):
        q.output(job_id, "output", sha256=digest).save(target)

    assert target.read_bytes() == b"what was there before"
    assert [p.name for p in tmp_path.iterdir()] == ["output.bin"]


def test_a_body_replaced_after_it_was_opened_is_saved_as_one_version_never_a_mix(
    backend: BackendSetup, tmp_path: Path
) -> None:
    """The first GET pins a version; the store then holds another of the same size. What is
    saved is one of the two, whole (on S3 the parts are fetched with If-Match: the download
    starts over on the new version rather than mixing parts of both)."""
    tmp_path = _folder(tmp_path)
    q = _connect(backend)
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    key = q.store("in", {"body": old, "key": "replaced"})

    obj = q.retrieve("in", key)
    _replace(q, keys.object_key("in", key), new)
    obj.save(tmp_path / "saved.bin")

    saved = (tmp_path / "saved.bin").read_bytes()
    assert saved in (old, new), "a mix of two versions"


def test_a_body_replaced_mid_download_is_one_version_or_fails_its_sha256(
    backend: BackendSetup, tmp_path: Path
) -> None:
    """Replaced while the first bytes are being handed on: the saved file is the old version
    (which matches its SHA-256), or nothing is saved and IntegrityError says the bytes read
    are not the ones recorded (the new version, read whole, does not match)."""
    tmp_path = _folder(tmp_path)
    q = _connect(backend)
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    job_id = q.submit({"body": b"make output"})
    q.work(lambda job: [{"key": "output", "body": old}], burst=True, handle_signals=False)
    digest = q.wait(job_id, timeout=10).assets["output"].sha256
    replaced: list[int] = []

    def replace_once(step: int) -> None:
        if not replaced:
            replaced.append(step)
            _replace(q, keys.output_key(job_id, "output"), new)

    target = tmp_path / "output.bin"
    try:
        q.output(job_id, "output", sha256=digest).save(target, progress=replace_once)
    except remotejob.IntegrityError:
        assert not target.exists()
    else:
        assert target.read_bytes() == old
    assert replaced, "the progress callback was never called"
    assert [p.name for p in tmp_path.iterdir()] in ([], ["output.bin"])  # no temporary file left
    q.output(job_id, "output").save(target)  # unchecked, the new version reads whole
    assert target.read_bytes() == new


def _s3_store_behind(backend: BackendSetup, proxy: Proxy) -> Any:
    from remotejob.backends.aws import S3Store

    assert backend.bucket is not None
    store = S3Store(backend.bucket, unique("p-"), endpoint_url=proxy.url)
    store.download_part_size = PART
    store.download_concurrency = 4
    return store


@pytest.mark.parametrize("backend", ["aws", "aws-real-s3"], indirect=True)
def test_a_part_whose_reply_is_cut_short_is_resumed_where_it_stopped(
    backend: BackendSetup, tmp_path: Path
) -> None:
    cut: list[int] = []

    def cut_three_ranged_replies(request_headers: Any, request_body: bytes, status: int,
                                 headers: list[tuple[str, str]], body: bytes) -> tuple[int, Any, bytes]:
        if status == 206 and request_headers.get("Range") and len(cut) < 3:
            cut.append(len(body))
            return status, headers, body[: len(body) // 2]
        return status, headers, body

    assert backend.s3_endpoint is not None
    with Proxy(backend.s3_endpoint, rewrite=cut_three_ranged_replies) as proxy:
        store = _s3_store_behind(backend, proxy)
        body = os.urandom(SIZE)
        store.put("cut", body)
        with store.get("cut") as obj:
            obj.checked(hashlib.sha256(body).hexdigest()).save(tmp_path / "cut.bin")

    assert len(cut) == 3
    assert (tmp_path / "cut.bin").read_bytes() == body


@pytest.mark.parametrize("backend", ["aws", "aws-real-s3"], indirect=True)
def test_an_endpoint_that_does_not_serve_ranges_still_gets_the_whole_body_saved(
    backend: BackendSetup, tmp_path: Path
) -> None:
    ignored: list[str] = []
    whole = os.urandom(SIZE)

    def as_if_ranges_were_ignored(request_headers: Any, request_body: bytes, status: int,
                                  headers: list[tuple[str, str]], body: bytes) -> tuple[int, Any, bytes]:
        if status == 206:  # answered as an endpoint without ranges would: 200 and the whole body
            ignored.append(str(request_headers.get("Range")))
            return 200, [(k, v) for k, v in headers if k.lower() != "content-range"], whole
        return status, headers, body

    assert backend.s3_endpoint is not None
    with Proxy(backend.s3_endpoint, rewrite=as_if_ranges_were_ignored) as proxy:
        store = _s3_store_behind(backend, proxy)
        body = whole
        store.put("whole", body)
        with store.get("whole") as obj:
            obj.checked(hashlib.sha256(body).hexdigest()).save(tmp_path / "whole.bin")

    assert ignored, "no ranged GET was made"
    assert (tmp_path / "whole.bin").read_bytes() == body
