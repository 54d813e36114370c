"""Legacy mode: the 2014 Node.js package's wire format, both ways, at the protocol level.

The other side is always raw boto3 doing exactly what the 2014 package did: a "2014 requester"
(``put_object`` at the bucket's root, ``head_object``, then a flat JSON message of the object's
metadata plus ``bucket`` and ``key``) and a "2014 worker" (receive, delete, ``get_object``, then
``put_object`` of ``<MessageId>-<asset>`` at the root). Legacy mode needs S3 and SQS, so the
embedded setting only proves that it is refused; the two AWS settings run the protocol.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

import remotejob
from remotejob import keys
from remotejob.backends.aws import S3Store, SqsQueues
from tests.conftest import BackendSetup, unique, wait_until
from tests.faults import Crash, Faults, FaultyQueues, FaultyStore

pytestmark = pytest.mark.backends("aws", "aws-real-s3")

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("remotejob")
SIGNING_KEY = "k1:" + "s" * 32


# -- helpers ------------------------------------------------------------------------------------


def compact(doc: dict[str, Any]) -> str:
    """JSON.stringify's output: what the 2014 package sent."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def raw(backend: BackendSetup, service: str) -> Any:
    endpoint = backend.s3_endpoint if service == "s3" else backend.sqs_endpoint
    return boto3.client(service, endpoint_url=endpoint)  # type: ignore[call-overload]


def legacy(backend: BackendSetup, name: str | None = None, **options: Any) -> remotejob.Queue:
    """A legacy connection on the bucket ``remotejobs-<name>``, its bucket and queues created."""
    name = name or unique("lj")
    options.setdefault("visibility_timeout", 2)
    options.setdefault("wait_time", 1)
    q = remotejob.connect(name, store=f"s3://remotejobs-{name}", queues="sqs://", legacy=True, **options)
    q.init()
    return q


def queue_url(backend: BackendSetup, name: str, status: str = "pending") -> str:
    return str(raw(backend, "sqs").get_queue_url(QueueName=f"{name}-{status}")["QueueUrl"])


def send_2014(backend: BackendSetup, name: str, doc: dict[str, Any]) -> str:
    """Send a flat 2014 message to ``<name>-pending``; return its MessageId."""
    sent = raw(backend, "sqs").send_message(QueueUrl=queue_url(backend, name), MessageBody=compact(doc))
    return str(sent["MessageId"])


def requester_2014(backend: BackendSetup, name: str, body: bytes, meta: dict[str, str]) -> tuple[str, str]:
    """The 2014 ``store`` + ``trigger``: the body at the root under a uuid4, then the message built
    from the object's HEAD. Returns (MessageId, key)."""
    s3, bucket, key = raw(backend, "s3"), f"remotejobs-{name}", str(uuid.uuid4())
    s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=meta, ContentType="text/plain")
    head = s3.head_object(Bucket=bucket, Key=key)
    return send_2014(backend, name, {**head["Metadata"], "bucket": bucket, "key": key}), key


def receive_raw(backend: BackendSetup, name: str, count: int) -> list[dict[str, Any]]:
    """``count`` messages from ``<name>-pending``, with every attribute, as the 2014 worker sees them."""
    sqs, url, got = raw(backend, "sqs"), queue_url(backend, name), []

    def more() -> bool:
        got.extend(sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=30,
            AttributeNames=["All"], MessageAttributeNames=["All"],
        ).get("Messages", []))
        return len(got) >= count

    wait_until(more, timeout=15, what=f"{count} messages in {name}-pending")
    assert len(got) == count
    return got


def root_keys(backend: BackendSetup, name: str, prefix: str) -> list[str]:
    listed = raw(backend, "s3").list_objects_v2(Bucket=f"remotejobs-{name}", Prefix=prefix)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def pending_depth(q: remotejob.Queue) -> tuple[int, int]:
    depth = q.message_queue.depth(q.queue_name("pending"))
    return depth.waiting, depth.in_flight


def faulty_legacy(backend: BackendSetup) -> tuple[remotejob.Queue, Faults]:
    """A legacy connection whose store and queues inject the faults it returns."""
    name = unique("lj")
    inner_store = S3Store(f"remotejobs-{name}", "", endpoint_url=backend.s3_endpoint)
    inner_queues = SqsQueues(endpoint_url=backend.sqs_endpoint)
    faults = Faults()
    store, queues = FaultyStore(inner_store, faults), FaultyQueues(inner_queues, faults)
    store.bucket, store.prefix = inner_store.bucket, inner_store.prefix  # type: ignore[attr-defined]
    queues.queue_url = inner_queues.queue_url  # type: ignore[attr-defined]  # what legacy mode checks
    q = remotejob.connect(name, store=store, queues=queues, legacy=True, visibility_timeout=1, wait_time=1)
    q.init()
    return q, faults


def upper_png(job: remotejob.Job) -> list[dict[str, Any]]:
    with job.open() as stream:
        return [{"key": "output", "filename": "out.png", "body": stream.read().upper()}]


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.backends("embedded")
def test_legacy_mode_refuses_the_embedded_store(backend: BackendSetup) -> None:
    with pytest.raises(remotejob.ConfigError, match="(?i)s3"):
        backend.connect(legacy=True)


@pytest.mark.backends("aws")  # configuration only: no request is made
@pytest.mark.parametrize("case", ["prefix", "other-bucket", "sqlite-queues", "signing-key"])
def test_misconfigured_legacy_connections_are_refused(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    name = unique("lj")
    options: dict[str, Any] = {"store": f"s3://remotejobs-{name}", "queues": "sqs://"}
    # the message names the fix: the store to use, SQS, or the signing key to unset
    match = {"prefix": f"s3://remotejobs-{name}'", "other-bucket": f"s3://remotejobs-{name}'",
             "sqlite-queues": "(?i)sqs", "signing-key": "REMOTEJOB_SIGNING_KEY"}[case]
    if case == "prefix":
        options["store"] = f"s3://remotejobs-{name}/p"
    elif case == "other-bucket":
        options["store"] = f"s3://{backend.bucket}"
    elif case == "sqlite-queues":
        options["queues"] = str(backend.tmp / "queues.db")
    else:
        monkeypatch.setenv("REMOTEJOB_SIGNING_KEY", SIGNING_KEY)
        remotejob.connect(name, **options)  # signing alone is fine without legacy mode
    with pytest.raises(remotejob.ConfigError, match=match):
        remotejob.connect(name, legacy=True, **options)


@pytest.mark.backends("aws")  # queue attributes are moto's SQS in both AWS settings
def test_connect_warns_once_and_the_2014_create_queue_accepts_its_queues(
    backend: BackendSetup, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique("lj")
    with caplog.at_level(logging.WARNING):
        q = legacy(backend, name)
    warnings = [r for r in caplog.records
                if r.name.startswith("remotejob") and "legacy mode" in r.getMessage()]
    assert len(warnings) == 1
    assert q.legacy is True
    assert backend.connect().legacy is False

    sqs = raw(backend, "sqs")
    url = queue_url(backend, name)
    created = sqs.create_queue(QueueName=f"{name}-pending",
                               Attributes={"ReceiveMessageWaitTimeSeconds": "20", "VisibilityTimeout": "30"})
    assert created["QueueUrl"] == url
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert (attributes["VisibilityTimeout"], attributes["ReceiveMessageWaitTimeSeconds"]) == ("30", "20")


# -- a 2014 requester, our worker ---------------------------------------------------------------


def test_a_2014_requesters_job_runs_in_a_legacy_worker(backend: BackendSetup) -> None:
    q = legacy(backend)
    message_id, key = requester_2014(backend, q.name, b"meow", {"filename": "cat.txt", "name": "Cat"})
    seen: list[tuple[str, str | None, dict[str, str], bytes]] = []

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        with job.open() as stream:
            seen.append((job.id, job.key, dict(job.metadata), stream.read()))
        return upper_png(job)

    assert q.work(handler, burst=True, handle_signals=False) == 1

    assert seen == [(message_id, key, {"filename": "cat.txt", "name": "Cat"}, b"meow")]
    got = raw(backend, "s3").get_object(Bucket=f"remotejobs-{q.name}", Key=f"{message_id}-output")
    assert got["Body"].read() == b"MEOW"
    assert got["ContentType"] == "image/png" and got["Metadata"]["filename"] == "out.png"
    assert q.output(message_id, "output").read() == b"MEOW"
    st = q.status(message_id)
    assert st.state == "completed" and st.outputs == ["output"]
    assert pending_depth(q) == (0, 0)


def test_refused_2014_messages_are_dead_lettered_with_their_reason(backend: BackendSetup) -> None:
    q = legacy(backend)
    bucket = f"remotejobs-{q.name}"
    good_key = str(uuid.uuid4())  # a stored input: only the messages naming it are wrong
    raw(backend, "s3").put_object(Bucket=bucket, Key=good_key, Body=b"x")
    cases = {
        "legacy-other-bucket": [{"bucket": "remotejobs-someone-else", "key": good_key},
                                {"key": good_key}, {"bucket": 7, "key": good_key}],
        "legacy-unsafe-key": [{"bucket": bucket, "key": k}
                              for k in (f"jobs/{unique('j')}/final", "in/x", "", "a\x01b", "k" * 1025)],
        "legacy-bad-field": [{"name": 3, "bucket": bucket, "key": good_key},
                             {"big": "v" * 3000, "bucket": bucket, "key": good_key}],
    }
    bodies = {compact(doc): reason for reason, docs in cases.items() for doc in docs}
    for body in bodies:
        raw(backend, "sqs").send_message(QueueUrl=queue_url(backend, q.name), MessageBody=body)
    ran: list[str] = []

    q.work(lambda job: ran.append(repr(job.key)), burst=True, handle_signals=False)

    assert ran == []
    reasons = {dead.body: dead.reason for dead in q.dead_letters()}
    assert set(reasons) == set(bodies)
    for body, prefix in bodies.items():
        assert reasons[body].startswith(prefix), (body[:80], reasons[body])
    assert pending_depth(q) == (0, 0)


def test_a_failed_attempt_is_retried_under_the_same_id_and_completes_once(backend: BackendSetup) -> None:
    q = legacy(backend)
    message_id, _ = requester_2014(backend, q.name, b"flaky", {"name": "f"})
    seen: list[tuple[str, int]] = []

    def flaky(job: remotejob.Job) -> list[dict[str, Any]]:
        seen.append((job.id, job.receive_count))
        if job.receive_count < 2:
            raise ConnectionError("upstream hiccup")
        return upper_png(job)

    q.work(flaky, burst=True, retry_delay=0, handle_signals=False)

    assert seen == [(message_id, 1), (message_id, 2)]
    assert q.status(message_id).state == "completed"
    assert root_keys(backend, q.name, f"{message_id}-") == [f"{message_id}-output"]
    assert root_keys(backend, q.name, f"out/{message_id}/") == [f"out/{message_id}/output"]
    notice = q.next("completed", timeout=5)
    assert notice is not None and notice.id == message_id and notice.state == "completed"
    notice.acknowledge()
    assert q.next("completed", timeout=1) is None


def test_a_job_failing_every_attempt_is_dead_lettered_and_redriven_under_its_id(
    backend: BackendSetup,
) -> None:
    q = legacy(backend, max_attempts=2)
    message_id, _ = requester_2014(backend, q.name, b"bad", {"name": "b"})

    def broken(job: remotejob.Job) -> None:
        raise ValueError("cannot parse 'bad'")

    q.work(broken, burst=True, retry_delay=0, handle_signals=False)

    with pytest.raises(remotejob.JobFailed, match="cannot parse"):
        q.wait(message_id, timeout=5)
    assert root_keys(backend, q.name, f"{message_id}-") == []
    [dead] = q.dead_letters()
    assert dead.job == message_id

    def fixed(job: remotejob.Job) -> None:
        with job.open() as stream:
            job.complete(assets=[{"key": "output", "filename": "out.txt", "body": stream.read() + b"!"}])

    assert q.redrive() == 1
    q.work(fixed, burst=True, handle_signals=False)

    assert q.wait(message_id, timeout=5).state == "completed"
    got = raw(backend, "s3").get_object(Bucket=f"remotejobs-{q.name}", Key=f"{message_id}-output")
    assert got["Body"].read() == b"bad!" and got["ContentType"].startswith("text/plain")


@pytest.mark.backends("aws")  # the refusal happens before the store is touched
def test_a_worker_without_legacy_mode_dead_letters_a_2014_message_and_legacy_mode_redrives_it(
    backend: BackendSetup,
) -> None:
    q = legacy(backend)
    plain = remotejob.connect(q.name, store=f"s3://remotejobs-{q.name}", queues="sqs://",
                              visibility_timeout=2, wait_time=1)
    message_id, key = requester_2014(backend, q.name, b"late", {"name": "l"})
    ran: list[str] = []

    plain.work(lambda job: ran.append(job.id), burst=True, handle_signals=False)

    assert ran == []
    [dead] = plain.dead_letters()
    assert dead.reason.startswith("legacy-message") and json.loads(dead.body)["key"] == key
    assert plain.redrive() == 0  # not without legacy mode: it would only come back refused

    assert q.redrive() == 1  # sent back as it was: a 2014 worker could take it too
    [message] = receive_raw(backend, q.name, 1)
    assert message["Body"] == dead.body and message["MessageId"] != message_id
    raw(backend, "sqs").change_message_visibility(
        QueueUrl=queue_url(backend, q.name), ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    assert q.work(upper_png, burst=True, handle_signals=False) == 1
    assert q.output(message["MessageId"], "output").read() == b"LATE"
    assert q.dead_letters() == []


def test_our_own_envelopes_still_run_in_a_legacy_worker(backend: BackendSetup) -> None:
    q = legacy(backend)
    ours = remotejob.connect(q.name, store=f"s3://remotejobs-{q.name}", queues="sqs://", wait_time=1)
    job_id = ours.submit({"body": b"ours"})

    assert q.work(upper_png, burst=True, handle_signals=False) == 1

    assert ours.wait(job_id, timeout=5).state == "completed"
    assert ours.output(job_id, "output").read() == b"OURS"


# -- our requester, a 2014 worker ---------------------------------------------------------------


def test_a_legacy_submit_sends_the_2014_message(backend: BackendSetup) -> None:
    q = legacy(backend)
    bucket = f"remotejobs-{q.name}"

    job_id = q.submit({"body": b"meow", "filename": "cat.jpg", "name": "Cat"})

    [message] = receive_raw(backend, q.name, 1)
    key = json.loads(message["Body"])["key"]
    assert uuid.UUID(key).version == 4
    assert message["Body"] == compact({"filename": "cat.jpg", "name": "Cat", "bucket": bucket, "key": key})
    assert message["MessageId"] == job_id
    assert "MessageAttributes" not in message
    s3 = raw(backend, "s3")
    head = s3.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"filename": "cat.jpg", "name": "Cat"}
    assert head["ContentType"] == "image/jpeg"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"meow"
    assert root_keys(backend, q.name, "in/") == []


def test_a_legacy_requester_waits_for_a_legacy_workers_result(backend: BackendSetup) -> None:
    q = legacy(backend)
    job_id = q.submit({"body": b"meow", "filename": "cat.txt"})
    assert q.status(job_id).state == "pending"  # recorded, though a Node requester records nothing

    assert q.work(upper_png, burst=True, handle_signals=False) == 1

    done = q.wait(job_id, timeout=5)
    assert done.state == "completed" and done.outputs == ["output"]
    assert q.output(job_id, "output").read() == b"MEOW"


@pytest.mark.backends("aws")  # the store's side of it is the same on both settings
def test_a_legacy_submit_removes_its_input_only_when_the_message_surely_was_not_sent(
    backend: BackendSetup,
) -> None:
    q, faults = faulty_legacy(backend)
    faults.fail("queue.send", RuntimeError("SQS refused"), match=f"{q.name}-pending")
    with pytest.raises(RuntimeError, match="SQS refused"):
        q.submit({"body": b"unsent", "name": "u"})
    assert [k for k in root_keys(backend, q.name, "") if not k.startswith(keys.AREAS)] == []

    faults.lose_reply("queue.send", match=f"{q.name}-pending")
    with pytest.raises(remotejob.UncertainResult):
        q.submit({"body": b"maybe sent", "name": "m"})
    [message] = receive_raw(backend, q.name, 1)  # it was sent: its input must still be there
    doc = json.loads(message["Body"])
    assert raw(backend, "s3").get_object(Bucket=doc["bucket"], Key=doc["key"])["Body"].read() == b"maybe sent"


def test_store_and_trigger_send_the_stored_objects_metadata(backend: BackendSetup) -> None:
    q = legacy(backend)
    bucket, key = f"remotejobs-{q.name}", f"photos/{unique('cat')}.txt"

    assert q.store("in", {"key": key, "body": b"purr", "filename": "cat.txt", "owner": "ana"}) == key
    head = raw(backend, "s3").head_object(Bucket=bucket, Key=key)
    assert head["Metadata"] == {"filename": "cat.txt", "owner": "ana"}
    job_id = q.trigger(key)

    [message] = receive_raw(backend, q.name, 1)
    assert message["MessageId"] == job_id
    assert message["Body"] == compact({"filename": "cat.txt", "owner": "ana", "bucket": bucket, "key": key})


def test_submit_many_sends_one_message_each_and_what_2014_cannot_honour_is_refused(
    backend: BackendSetup,
) -> None:
    q = legacy(backend)
    for option in ({"delay": 5}, {"at": datetime.now(UTC) + timedelta(hours=1)}, {"priority": "high"},
                   {"time_limit": 10}, {"dedup_key": "k"}):
        with pytest.raises(ValueError, match="2014"):
            q.submit({"body": b"x", "name": "n"}, **option)
    assert pending_depth(q) == (0, 0)

    ids = q.submit_many([{"body": b"one", "name": "1"}, {"body": b"two", "name": "2"}])

    messages = receive_raw(backend, q.name, 2)
    assert sorted(m["MessageId"] for m in messages) == sorted(ids)
    s3 = raw(backend, "s3")
    for message in messages:
        doc = json.loads(message["Body"])
        assert set(doc) == {"name", "bucket", "key"}
        got = s3.get_object(Bucket=f"remotejobs-{q.name}", Key=doc["key"])["Body"].read()
        assert got == {"1": b"one", "2": b"two"}[doc["name"]]


def test_a_2014_worker_runs_a_legacy_requesters_job(backend: BackendSetup) -> None:
    q = legacy(backend)
    key = f"{unique('photo-')}.txt"
    job_id = q.submit({"key": key, "body": b"hello", "owner": "ana"})

    # the 2014 worker: receive one, delete it, read the input, write <MessageId>-output at the root
    sqs, s3 = raw(backend, "sqs"), raw(backend, "s3")
    [message] = receive_raw(backend, q.name, 1)
    sqs.delete_message(QueueUrl=queue_url(backend, q.name), ReceiptHandle=message["ReceiptHandle"])
    doc = json.loads(message["Body"])
    assert (doc["key"], doc["owner"]) == (key, "ana")
    data = s3.get_object(Bucket=doc["bucket"], Key=doc["key"])["Body"].read()
    s3.put_object(Bucket=doc["bucket"], Key=f"{message['MessageId']}-output", Body=data.upper(),
                  Metadata={"filename": "out.txt"}, ContentType="text/plain")

    assert message["MessageId"] == job_id
    assert q.output(job_id, "output").read() == b"HELLO"


# -- the command line (moto only: the CLI passes its options to connect()) ----------------------


def cli(backend: BackendSetup, name: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"no console script {SCRIPT}: install the package (./dev test does)"
    env = {**os.environ, **backend.env, "PYTHONPATH": str(REPO), "REMOTEJOB_NAME": name,
           "REMOTEJOB_STORE": f"s3://remotejobs-{name}", "REMOTEJOB_QUEUES": "sqs://"}
    env.pop("REMOTEJOB_SIGNING_KEY", None)
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.backends("aws")
def test_cli_submit_legacy_sends_the_2014_message(backend: BackendSetup) -> None:
    name = unique("lj")
    (backend.tmp / "cat.txt").write_bytes(b"meow")

    done = cli(backend, name, backend.tmp, "submit", "--legacy", "cat.txt", "--meta", "owner=ana")

    assert done.returncode == 0, done.stderr
    [message] = receive_raw(backend, name, 1)
    assert done.stdout.strip() == message["MessageId"]
    bucket, key = f"remotejobs-{name}", json.loads(message["Body"])["key"]
    assert message["Body"] == compact({"filename": "cat.txt", "owner": "ana", "bucket": bucket, "key": key})
    assert raw(backend, "s3").get_object(Bucket=bucket, Key=key)["Body"].read() == b"meow"


@pytest.mark.backends("aws")
def test_cli_exec_worker_legacy_runs_a_2014_message(backend: BackendSetup) -> None:
    q = legacy(backend)
    message_id, _ = requester_2014(backend, q.name, b"from 2014", {"filename": "in.txt"})

    done = cli(backend, q.name, backend.tmp, "worker", "--legacy", "--burst",
               "--exec", "cp {input} {outdir}/output")

    assert done.returncode == 0, done.stderr
    got = raw(backend, "s3").get_object(Bucket=f"remotejobs-{q.name}", Key=f"{message_id}-output")
    assert got["Body"].read() == b"from 2014"
    assert q.status(message_id).state == "completed"


# -- crashes -------------------------------------------------------------------------------------


def test_a_2014_job_that_kills_its_worker_every_time_is_recorded_failed_and_retried_under_its_id(
    backend: BackendSetup,
) -> None:
    q = legacy(backend, max_attempts=2, visibility_timeout=1)
    message_id, _ = requester_2014(backend, q.name, b"poison", {"name": "p"})
    for attempt in (1, 2):  # taken and never finished: its worker died each time
        job = wait_until(lambda: q.next("pending", timeout=1), timeout=20, what=f"delivery {attempt}")
        assert (job.id, job.receive_count) == (message_id, attempt)

    def moved() -> list[Any]:  # the queue's redrive policy moves it on the next receive
        assert q.next("pending", timeout=1) is None
        return q.dead_letters()

    [dead] = wait_until(moved, timeout=20, what="the 2014 message in the dead-letter queue")
    assert dead.job == message_id and "after 2 deliveries" in dead.reason
    assert q.status(message_id).state == "failed"

    assert q.retry(message_id).state == "pending"
    assert q.work(upper_png, burst=True, handle_signals=False) == 1
    assert q.wait(message_id, timeout=5).state == "completed"
    got = raw(backend, "s3").get_object(Bucket=f"remotejobs-{q.name}", Key=f"{message_id}-output")
    assert got["Body"].read() == b"POISON"


# exactly-once rests on the create-once claim: proven on SeaweedFS, not on moto (DESIGN.md); the
# dead process's other threads end on the Crash too
@pytest.mark.backends("aws-real-s3")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_crash_between_the_two_copies_of_an_output_is_finished_by_the_redelivery(
    backend: BackendSetup,
) -> None:
    q, faults = faulty_legacy(backend)
    name = q.name
    message_id, _ = requester_2014(backend, name, b"once", {"name": "o"})
    runs: list[int] = []

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        runs.append(job.receive_count)
        return upper_png(job)

    # out/<id>/output is written, then the process dies before the root copy
    faults.crash("store.put", when="before", match=f"{message_id}-output")
    try:
        q.work(handler, burst=True, handle_signals=False)
    except Crash:
        pass
    assert faults.dead and root_keys(backend, name, f"{message_id}-") == []
    faults.revive()
    faults.clear()

    wait_until(lambda: q.work(handler, burst=True, handle_signals=False) == 1 or None, timeout=20,
               what="the redelivery")

    assert runs == [1]  # the outcome was claimed: the redelivery finishes it from the record
    assert root_keys(backend, name, f"{message_id}-") == [f"{message_id}-output"]
    assert q.output(message_id, "output").read() == b"ONCE"
    assert q.status(message_id).state == "completed"
