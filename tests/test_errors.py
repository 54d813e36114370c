"""Bad input gets a clear, typed error, and nothing is half-written."""

from __future__ import annotations

import io
import signal
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

import remotejob
from tests.conftest import BackendSetup, wait_until
from tests.faults import connect_faulty


def _stored_keys(q: remotejob.Queue) -> list[str]:
    return [info.key for info in q.object_store.list("") if not info.key.startswith("journal/")]


def test_unknown_keys_are_not_found(backend: BackendSetup) -> None:
    q = backend.connect()
    with pytest.raises(remotejob.NotFound, match="no-such"):
        q.retrieve("in", "no-such")
    with pytest.raises(remotejob.NotFound, match="store"):
        q.trigger("no-such")
    with pytest.raises(LookupError):
        q.status("no-such")


@pytest.mark.parametrize(
    "key",
    ["", "x" * 1025, "../escape", "a/../../b", "/etc/passwd", "nul\x00byte", "a/./b"],
    ids=["empty", "1025-bytes", "dotdot", "inner-dotdot", "absolute", "nul", "dot"],
)
def test_invalid_keys(backend: BackendSetup, key: str) -> None:
    q = backend.connect()
    with pytest.raises(remotejob.InvalidKey):
        q.store("in", {"body": b"x", "key": key})
    with pytest.raises(remotejob.InvalidKey):
        q.retrieve("in", key)
    with pytest.raises(remotejob.InvalidKey):
        q.trigger(key)
    with pytest.raises(ValueError):  # InvalidKey is a ValueError too
        q.status(key)
    assert _stored_keys(q) == []


def test_key_limit_counts_utf8_bytes(backend: BackendSetup) -> None:
    q = backend.connect()
    with pytest.raises(remotejob.InvalidKey, match="1024"):
        q.store("in", {"body": b"x", "key": "é" * 512})  # 1,024 bytes plus the "in/" prefix


def test_metadata_errors_name_the_field(backend: BackendSetup) -> None:
    q = backend.connect()
    with pytest.raises(remotejob.MetadataError, match="'width'"):
        q.store("in", {"body": b"x", "width": 128})
    with pytest.raises(remotejob.MetadataError, match="'notes'"):
        q.submit({"body": b"x", "title": "ok", "notes": "n" * 2100})
    with pytest.raises(ValueError):
        q.store("in", {"body": b"x", "big": "é" * 1100})  # 2,200 bytes of UTF-8
    assert _stored_keys(q) == []
    assert q.next("pending", timeout=0) is None


def test_metadata_at_the_limit_is_accepted(backend: BackendSetup) -> None:
    q = backend.connect()
    value = "v" * (2048 - len("name"))
    key = q.store("in", {"body": b"x", "name": value})
    assert q.retrieve("in", key).metadata == {"name": value}


def test_bad_body_and_direction(backend: BackendSetup, tmp_path: Path) -> None:
    q = backend.connect()
    with pytest.raises(ValueError, match="direction"):
        q.store("sideways", {"body": b"x"})
    with pytest.raises(ValueError, match="direction"):
        q.retrieve("sideways", "k")
    with pytest.raises(ValueError, match="body"):
        q.store("in", {"filename": "x.txt"})
    with pytest.raises(TypeError, match="binary"):
        with open(tmp_path / "t.txt", "w+") as text_file:
            q.store("in", {"body": text_file})
    with pytest.raises(TypeError):
        q.store("in", {"body": 42})
    with pytest.raises(remotejob.NotFound, match="missing.bin"):
        q.submit({"body": tmp_path / "missing.bin"})
    assert _stored_keys(q) == []


def test_unknown_status(backend: BackendSetup) -> None:
    q = backend.connect(statuses=("pending", "resize", "completed"))
    key = q.store("in", {"body": b"x"})
    with pytest.raises(remotejob.UnknownStatus, match="resize"):
        q.trigger(key, status="inprogress")
    with pytest.raises(remotejob.UnknownStatus):
        q.next("nope", timeout=0)
    assert q.trigger(key, status="resize") == key
    job = q.next("resize", timeout=10)
    assert job is not None and job.status == "resize"


@pytest.mark.parametrize("name", ["", "has space", "x" * 80, "dots.not.allowed", "ü"])
def test_invalid_queue_names(backend: BackendSetup, name: str) -> None:
    with pytest.raises(remotejob.ConfigError):
        backend.connect(name)


def test_invalid_options(backend: BackendSetup) -> None:
    with pytest.raises(remotejob.ConfigError):
        backend.connect(statuses=("pending", "dead"))
    with pytest.raises(remotejob.ConfigError):
        backend.connect(wait_time=21)
    with pytest.raises(remotejob.ConfigError, match="bucket"):
        remotejob.connect("Upper_Case", store="s3://", queues="sqs://")
    with pytest.raises(remotejob.ConfigError):
        remotejob.connect("ok", store="ftp://host/x")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_endpoint_is_backend_unavailable(backend: BackendSetup) -> None:
    if backend.kind == "embedded":
        pytest.skip("the embedded backend has no endpoint")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    q = remotejob.connect("unreachable", store="s3://some-bucket/p", queues="sqs://", endpoint_url=endpoint)
    with pytest.raises(remotejob.BackendUnavailable, match=f"127.0.0.1:{endpoint.rsplit(':', 1)[1]}"):
        q.store("in", {"body": b"x"})
    with pytest.raises(remotejob.BackendUnavailable, match="127.0.0.1"):
        q.next("pending", timeout=0)


def test_rejected_credentials_name_endpoint_not_secret(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.kind != "aws-real-s3":
        pytest.skip("only SeaweedFS checks credentials")
    secret = "canary-secret-value-0123456789abcdef"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARYKEYID00000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    q = backend.connect()
    with pytest.raises(remotejob.BackendUnavailable) as caught:
        q.store("in", {"body": b"x"})
    message = str(caught.value)
    assert backend.s3_endpoint and backend.s3_endpoint.split("//")[1] in message
    assert "credentials" in message.lower()
    assert secret not in message and "AKIACANARYKEYID00000" not in message


def test_unusable_embedded_home_is_backend_unavailable(tmp_path: Path) -> None:
    home = tmp_path / "home-is-a-file"
    home.write_text("not a folder")
    q = remotejob.connect("jobs", home=home)
    with pytest.raises(remotejob.BackendUnavailable, match="home-is-a-file"):
        q.submit({"body": b"x"})


def test_failed_trigger_leaves_no_input(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend)
    faults.fail("queue.send_batch", remotejob.BackendUnavailable("cannot reach broken://"))
    with pytest.raises(remotejob.BackendUnavailable):
        q.submit({"body": io.BytesIO(b"x" * 10)})
    assert _stored_keys(q) == []  # no input, no record, no batch manifest


def test_a_batch_cut_short_keeps_only_the_jobs_sent(backend: BackendSetup) -> None:
    q, faults = connect_faulty(backend)
    q.init()
    sends = iter(range(100))
    faults.fail("queue.send_batch", remotejob.BackendUnavailable("cannot reach broken://"),
                match=lambda *a, **k: next(sends) >= 1, times=100)
    with pytest.raises(remotejob.BatchPartlyFailed) as caught:
        q.submit_many({"body": f"job {i}"} for i in range(15))

    assert sorted(caught.value.done) == list(range(10))
    assert sorted(caught.value.failed) == list(range(10, 15))
    [manifest] = _stored_keys(q)
    batch_id = manifest.removeprefix("batches/")
    assert [q.status(f"{batch_id}-{i}").state for i in range(10)] == ["pending"] * 10
    for unsent in range(10, 15):
        with pytest.raises(remotejob.NotFound):
            q.status(f"{batch_id}-{unsent}")




def test_submit_interrupted_while_its_sends_are_in_flight_sends_no_more(backend: BackendSetup) -> None:
    """Ctrl-C while submit_many waits for its requests in flight: those finish, the batches not
    yet started are never sent and are removed again, and the caller learns which jobs went."""
    q, faults = connect_faulty(backend)
    q.init()
    release, interrupted = threading.Event(), threading.Event()
    in_flight = 4  # batch.SENDERS
    faults.delay("queue.send_batch", until=release, times=in_flight)

    def ctrl_c(signum: int, frame: Any) -> None:
        interrupted.set()
        raise KeyboardInterrupt

    def interrupt() -> None:
        wait_until(lambda: faults.count("queue.send_batch") >= in_flight, what="four sends in flight")
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)
        interrupted.wait(30)
        release.set()

    previous = signal.signal(signal.SIGUSR1, ctrl_c)
    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        with pytest.raises(remotejob.BatchPartlyFailed) as caught:
            q.submit_many({"body": f"job {i}"} for i in range(60))
    finally:
        release.set()
        helper.join(30)
        signal.signal(signal.SIGUSR1, previous)

    assert isinstance(caught.value.__cause__, KeyboardInterrupt)
    assert len(caught.value.done) == 40 and len(caught.value.failed) == 20
    assert q.message_queue.depth(q.queue_name("pending")).waiting == 40
