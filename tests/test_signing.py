"""Signed messages: with REMOTEJOB_SIGNING_KEY set, only messages signed by a configured key
reach a handler; forged, tampered, replayed, unsigned, stale and pickled ones are refused,
counted and dead-lettered, on every backend."""

from __future__ import annotations

import base64
import json
import pickle
import time

import pytest

import remotejob
from remotejob import keys
from remotejob.envelope import Envelope, encode
from remotejob.signing import Keyring
from tests.conftest import BackendSetup

KEY = "k2:" + "s" * 32
OLD_KEY = "k1:" + "o" * 32


@pytest.fixture
def signed(backend: BackendSetup, monkeypatch: pytest.MonkeyPatch) -> remotejob.Queue:
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", f"{KEY},{OLD_KEY}")
    q: remotejob.Queue = backend.connect(wait_time=1, visibility_timeout=5)
    q.init()
    return q


def _pending(q: remotejob.Queue) -> str:
    return keys.queue_name(q.name, "pending")


def _envelope(job: str) -> str:
    body = base64.b64encode(b"rm -rf /").decode()
    return encode(Envelope(job=job, key=job, status="pending", sent=time.time(), body=body))


def _run(q: remotejob.Queue) -> list[str]:
    ran: list[str] = []
    q.work(lambda job: ran.append(job.id), burst=True, handle_signals=False)
    return ran


def test_signed_jobs_run_and_every_message_carries_a_signature(signed: remotejob.Queue) -> None:
    job_id = signed.submit({"body": b"hello"})
    [message] = signed.message_queue.receive(_pending(signed), 1, 5, visibility_s=0)
    assert json.loads(message.body)["kid"] == "k2" and len(json.loads(message.body)["sig"]) == 64

    assert _run(signed) == [job_id]
    assert signed.status(job_id).state == "completed" and sum(signed.rejected.values()) == 0


def test_forged_tampered_unsigned_stale_and_pickled_messages_never_reach_a_handler(
    signed: remotejob.Queue,
) -> None:
    keyring = signed.signing
    assert keyring is not None
    genuine = keyring.sign(_envelope("tampered"))
    injected = [  # (why it is refused, the message)
        ("unsigned", _envelope("unsigned")),
        ("bad-signature", genuine.replace("tampered", "tampereX")),
        ("unknown-key", Keyring.parse("k9:" + "x" * 32).sign(_envelope("forged"))),
        ("stale", keyring.sign(_envelope("stale"), now=time.time() - 30 * 24 * 3600)),
        ("unsigned", base64.b64encode(pickle.dumps({"job": "pickled"})).decode()),  # never unpickled
        ("unsigned", _envelope("malformed")[:-1] + ',"sig":"' + "0" * 64 + '"}'),  # a sig, no key id
    ]
    for _, body in injected:
        signed.message_queue.send(_pending(signed), body)

    assert _run(signed) == []
    assert dict(signed.rejected) == {"unsigned": 3, "bad-signature": 1, "unknown-key": 1, "stale": 1}
    letters = signed.dead_letters()
    assert sorted(letter.reason.split(":")[0] for letter in letters) == sorted(r for r, _ in injected)
    assert signed.redrive() == 0  # a refused message is never signed afresh and sent back
    assert len(signed.dead_letters()) == len(injected)


def test_a_replayed_message_does_not_run_its_finished_job_again(signed: remotejob.Queue) -> None:
    job_id = signed.submit({"body": b"once"})
    [message] = signed.message_queue.receive(_pending(signed), 1, 5, visibility_s=0)
    assert _run(signed) == [job_id]

    signed.message_queue.send(_pending(signed), message.body)  # captured and sent again

    assert _run(signed) == []
    assert signed.rejected["replayed"] == 1 and signed.status(job_id).state == "completed"


def test_rotation_old_keys_verify_while_the_first_signs(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"rot{time.time_ns()}"
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", OLD_KEY)
    before = backend.connect(name, wait_time=1).submit({"body": b"signed with k1"})
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", f"{KEY},{OLD_KEY}")
    q = backend.connect(name, wait_time=1)
    after = q.submit({"body": b"signed with k2"})

    assert sorted(_run(q)) == sorted([before, after])
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", KEY)  # k1 retired: what it signs is refused
    retired = backend.connect(name, wait_time=1)
    retired.init()
    retired.message_queue.send(_pending(retired), Keyring.parse(OLD_KEY).sign(_envelope("late")))
    assert _run(retired) == [] and retired.rejected["unknown-key"] == 1


def test_a_notice_for_a_job_that_never_ran_is_refused(signed: remotejob.Queue) -> None:
    keyring = signed.signing
    assert keyring is not None
    ghost = Envelope(job="ghost", key="ghost", status="completed", sent=time.time(), kind="notice",
                     state="completed")
    signed.message_queue.send(keys.queue_name(signed.name, "completed"), keyring.sign(encode(ghost)))

    assert signed.next("completed", timeout=2) is None
    assert signed.rejected["notice-without-outcome"] == 1


@pytest.mark.parametrize("value", ["k1", "k1:tiny", ":" + "x" * 32, "k 1:" + "x" * 32])
def test_a_bad_signing_key_is_a_clear_error_that_hides_the_secret(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", value)
    with pytest.raises(remotejob.ConfigError, match="REMOTEJOB_SIGNING_KEY|signing key") as caught:
        backend.connect()
    secret = value.partition(":")[2]
    assert not secret or secret not in str(caught.value)


def test_a_message_signed_in_the_future_is_refused(signed: remotejob.Queue) -> None:
    keyring = signed.signing
    assert keyring is not None
    now = time.time()
    ahead = keyring.sign(_envelope("ahead"), now=now + 3600)  # a clock an hour fast, or a forgery
    skewed = keyring.sign(_envelope("skewed"), now=now + 60)  # within the clock skew allowed
    for body in (ahead, skewed):
        signed.message_queue.send(_pending(signed), body)

    assert _run(signed) == ["skewed"]
    assert dict(signed.rejected) == {"from-the-future": 1}
    [letter] = signed.dead_letters()
    assert letter.reason.startswith("from-the-future") and letter.job == "ahead"
    assert signed.redrive() == 0


def test_a_replayed_pipeline_hand_off_does_not_run_its_stage_again(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", KEY)
    q = backend.connect(wait_time=1, visibility_timeout=5, statuses=("pending", "second", "completed"))
    job_id = q.submit({"body": b"two stages"})
    [message] = q.message_queue.receive(_pending(q), 1, 5, visibility_s=0)  # captured on the way
    stages: list[tuple[str, str]] = []

    def first(job: remotejob.Job) -> None:
        stages.append(("pending", job.id))
        job.complete(assets=[{"key": "half", "body": job.open().read() + b" (half)"}], next_status="second")

    def second(job: remotejob.Job) -> list[dict[str, object]]:
        stages.append(("second", job.id))
        return [{"key": "done", "body": job.open().read() + b" (done)"}]

    q.work(first, burst=True, handle_signals=False)
    assert q.status(job_id).state == "pending"  # handed on: waiting in the second stage

    q.message_queue.send(_pending(q), message.body)  # the first stage's message, sent again verbatim
    q.work(first, burst=True, handle_signals=False)
    assert stages == [("pending", job_id)] and dict(q.rejected) == {"replayed": 1}

    q.work(second, status="second", burst=True, handle_signals=False)
    assert stages == [("pending", job_id), ("second", job_id)]
    assert q.wait(job_id, timeout=10).state == "completed"
    assert q.output(job_id, "done").read() == b"two stages (half) (done)"


def test_a_failed_signed_job_sent_back_by_redrive_runs_again(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redrive signs a dead-lettered job's message afresh (its old signature stripped first): the
    worker accepts it and the job completes."""
    monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", KEY)
    q: remotejob.Queue = backend.connect(wait_time=1, visibility_timeout=5, max_attempts=1)
    job_id = q.submit({"body": b"fix me"})

    def broken(job: remotejob.Job) -> None:
        raise RuntimeError("not yet")

    q.work(broken, burst=True, handle_signals=False)
    assert q.status(job_id).state == "failed"
    assert q.redrive() == 1
    assert _run(q) == [job_id]
    assert q.status(job_id).state == "completed" and sum(q.rejected.values()) == 0


@pytest.mark.parametrize("secret", ["x" * 16, "with:colons:" + "y" * 16])
def test_a_key_of_the_minimum_length_or_with_colons_in_its_secret_signs_and_verifies(secret: str) -> None:
    keyring = Keyring.parse(f"k7:{secret}")
    signed = keyring.sign(_envelope("ok"))
    assert json.loads(signed)["kid"] == "k7"
    keyring.verify(signed)
    Keyring.parse(f"k8:{secret},k7:{secret}").verify(signed)  # found by its id, secret intact
    with pytest.raises(remotejob.ConfigError):
        Keyring.parse("k7:" + "x" * 15)
