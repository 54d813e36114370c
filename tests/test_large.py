"""A 64 MiB body streamed in and out on every backend, checked by SHA-256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.conftest import BackendSetup

SIZE = 64 * 1024 * 1024
CHUNK = 1024 * 1024


def _write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size // CHUNK):
            chunk = os.urandom(CHUNK)
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _sha256_stream(stream: object) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):  # type: ignore[attr-defined]
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def test_64_mib_round_trip(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect()
    source = tmp_path / "big.bin"
    expected = _write_random(source, SIZE)
    with open(source, "rb") as handle:
        job_id = q.submit({"body": handle, "filename": "big.bin"})
    assert q.retrieve("in", job_id).size == SIZE

    job = q.next("pending", timeout=10)
    assert job is not None
    copy = job.download(tmp_path / "downloaded.bin")
    with open(copy, "rb") as handle:
        assert _sha256_stream(handle) == (expected, SIZE)
    with open(copy, "rb") as handle:
        result = job.complete(assets=[{"key": "output", "body": handle}])
    assert result.assets["output"].sha256 == expected
    assert result.assets["output"].size == SIZE

    with q.retrieve("out", f"{job_id}/output") as out:
        assert _sha256_stream(out.open()) == (expected, SIZE)
