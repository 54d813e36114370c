"""The message envelope: JSON only, validated, and poison never reaches a caller."""

from __future__ import annotations

import pickle

import pytest

import remotejob
from remotejob import keys
from remotejob.envelope import Envelope, decode, encode
from tests.conftest import BackendSetup


def test_round_trip() -> None:
    env = Envelope(job="j1", key="j1", status="pending", sent=1.5, meta={"name": "Ünï"})
    assert decode(encode(env)) == env
    notice = Envelope(
        job="j1", key="j1", status="completed", sent=2.0, kind="notice", state="failed", error="boom"
    )
    assert decode(encode(notice)) == notice


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[]",
        '{"v": 2, "job": "a", "key": "a", "status": "pending", "sent": 1}',
        '{"v": 1, "job": "a", "key": "a", "status": "pending", "sent": NaN}',
        '{"v": 1, "job": "a", "job": "b", "key": "a", "status": "pending", "sent": 1}',
        '{"v": 1, "job": "", "key": "a", "status": "pending", "sent": 1}',
        '{"v": 1, "job": "../x", "key": "a", "status": "pending", "sent": 1}',
        '{"v": 1, "job": "a", "key": "a", "status": "pending", "sent": 1, "meta": {"n": 1}}',
        '{"v": 1, "kind": "exec", "job": "a", "key": "a", "status": "pending", "sent": 1}',
        '{"v": 1, "kind": "notice", "job": "a", "key": "a", "status": "c", "sent": 1}',
        "[" * 100_000 + "]" * 100_000,
        pickle.dumps({"job": "a"}).decode("latin-1"),
    ],
    ids=[
        "text",
        "array",
        "version",
        "nan",
        "duplicate",
        "empty-id",
        "bad-key",
        "meta-type",
        "kind",
        "notice-state",
        "deep",
        "pickle",
    ],
)
def test_rejects(body: str) -> None:
    with pytest.raises(remotejob.EnvelopeError):
        decode(body)


def test_poison_message_goes_to_dead_letters(backend: BackendSetup) -> None:
    q = backend.connect()
    q.init()
    poison = "cos\nsystem\n(S'echo pwned'\ntR."  # a pickle payload, as text
    q.message_queue.send(keys.queue_name(q.name, "pending"), poison)
    job_id = q.submit({"body": b"real"})
    job = q.next("pending", timeout=10)
    assert job is not None and job.id == job_id
    job.acknowledge()
    assert q.next("pending", timeout=1) is None  # the poison was skipped, never returned
    [dead] = q.dead_letters()
    assert dead.body == poison and dead.job is None
    assert dead.source == f"{q.name}-pending" and "not a remotejob envelope" in dead.reason
