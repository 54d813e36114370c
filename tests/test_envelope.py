"""The message envelope: JSON only, validated, and poison never reaches a caller."""

from __future__ import annotations

import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import remotejob
from remotejob import keys
from remotejob.envelope import Envelope, decode, encode, unwrap_dead
from remotejob.errors import EnvelopeError
from remotejob.limits import MAX_MESSAGE_BYTES
from tests.conftest import BackendSetup


def test_round_trip() -> None:
    env = Envelope(job="j1", key="j1", status="pending", sent=1.5, meta={"name": "Ünï"})
    assert decode(encode(env)) == env
    legacy = Envelope(job="9b2c-4e", key="cat.jpg", status="pending", sent=1.0, input="cat.jpg", legacy=True)
    assert decode(encode(legacy)) == legacy  # a 2014 job's input at the bucket's root
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
        '{"v": 1, "job": "a", "key": "a", "status": "pending", "sent": 1, "input": "cat.jpg"}',
        '{"v": 1, "job": "a", "key": "a", "status": "pending", "sent": 1, "input": "jobs/b/final", '
        '"legacy": true}',
        '{"v": 1, "job": "jobs/b/final", "key": "a", "status": "pending", "sent": 1, "input": "a", '
        '"legacy": true}',
        '{"v": 1, "job": "a", "key": "out/b", "status": "pending", "sent": 1, "input": "a", "legacy": true}',
        '{"v": 1, "job": "a", "key": "a", "status": "pending", "sent": 1, "legacy": 1}',
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
        "root-input-not-legacy",
        "legacy-input-in-areas",
        "legacy-job-in-areas",
        "legacy-key-in-areas",
        "legacy-type",
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


def test_a_foreign_message_too_large_to_wrap_keeps_its_reason_and_start(backend: BackendSetup) -> None:
    q = backend.connect()
    q.init()
    big = "<" + "x" * (MAX_MESSAGE_BYTES - 10) + ">"  # as large as a queue holds, not an envelope
    q.message_queue.send(keys.queue_name(q.name, "pending"), big)
    q.work(lambda job: None, burst=True, handle_signals=False)

    [dead] = q.dead_letters()
    assert dead.source == f"{q.name}-pending" and "not a remotejob envelope" in dead.reason
    assert 1000 < len(dead.body) < len(big) and big.startswith(dead.body)
    wrapped = json.loads(remotejob.envelope.wrap_dead(big, "src", "why"))
    assert wrapped["truncated"] is True and wrapped["reason"] == "why"
    assert len(json.dumps(wrapped, ensure_ascii=False).encode()) <= MAX_MESSAGE_BYTES


# -- property: the decoder survives anything a queue can hold ------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)
_fields = st.fixed_dictionaries(
    {"v": st.just(1), "job": st.text(max_size=12), "key": st.text(max_size=12), "status": st.text(max_size=8),
     "sent": st.floats(allow_nan=False) | st.integers()},
    optional={"kind": st.sampled_from(["job", "notice", "dead"]) | _json, "meta": _json, "state": _json,
              "error": _json, "input": _json, "outputs": _json, "body": _json, "sha256": _json},
)


def _decodes_or_refuses(text: str) -> None:
    try:
        envelope = decode(text)
    except EnvelopeError:
        return
    assert decode(encode(envelope)) == envelope  # what it accepts, it can send again unchanged


@settings(max_examples=300, deadline=1000)
@given(st.binary(max_size=2048))
def test_any_bytes_decode_or_are_refused_cleanly(raw: bytes) -> None:
    _decodes_or_refuses(raw.decode("utf-8", errors="replace"))
    unwrap_dead(raw.decode("latin-1"))


@settings(max_examples=300, deadline=1000)
@given(_json)
def test_any_json_decodes_or_is_refused_cleanly(doc: object) -> None:
    _decodes_or_refuses(json.dumps(doc))


@settings(max_examples=300, deadline=1000)
@given(_fields)
def test_envelope_shaped_json_decodes_or_is_refused_cleanly(doc: dict[str, object]) -> None:
    _decodes_or_refuses(json.dumps(doc))


@pytest.mark.parametrize("depth", [50, 5_000, 100_000])
def test_deep_nesting_is_refused_without_a_crash(depth: int) -> None:
    text = '{"v":1,"meta":' + "[" * depth + "]" * depth + "}"
    with pytest.raises(EnvelopeError):
        decode(text[: MAX_MESSAGE_BYTES + 1])
