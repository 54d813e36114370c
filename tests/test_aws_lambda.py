"""remotejob.aws_lambda: Lambda's SQS event source, with events built as Lambda builds them.

Each test receives real messages from the status queue (as Lambda's pollers do), turns them into
records of the documented SQS event shape, calls the handler, then plays Lambda's part: it
deletes the records not named in ``batchItemFailures`` and leaves the others to come back. The
handler itself must delete nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import Counter
from typing import Any

import pytest

import remotejob
import remotejob.aws_lambda
from remotejob.backends.base import Message
from remotejob.envelope import decode
from remotejob.errors import BackendUnavailable
from tests.conftest import wait_until
from tests.faults import connect_faulty

REGION = "us-east-1"
ACCOUNT = "123456789012"


def sqs_record(queue: str, message: Message) -> dict[str, Any]:
    """One record as Lambda delivers it (field names and types of AWS's documented SQS event:
    every attribute a string, timestamps in epoch milliseconds)."""
    sent = str(int(message.sent_at * 1000))
    return {
        "messageId": message.message_id,
        "receiptHandle": message.receipt,
        "body": message.body,
        "attributes": {
            "ApproximateReceiveCount": str(message.receive_count),
            "SentTimestamp": sent,
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
        },
        "messageAttributes": {},
        "md5OfBody": hashlib.md5(message.body.encode()).hexdigest(),  # noqa: S324 - SQS's checksum
        "eventSource": "aws:sqs",
        "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
        "awsRegion": REGION,
    }


class LambdaContext:
    """The part of Lambda's context object the handler reads."""

    def __init__(self, remaining_s: float = 900.0) -> None:
        self.deadline = time.monotonic() + remaining_s
        self.aws_request_id = "c6af9ac6-7b61-11e6-9a41-93e812345678"

    def get_remaining_time_in_millis(self) -> int:
        return int((self.deadline - time.monotonic()) * 1000)


class Poller:
    """Lambda's side of an event source mapping on one queue: receive, invoke, delete."""

    def __init__(self, q: remotejob.Queue, status: str = "pending") -> None:
        self.q = q
        self.queue = f"{q.name}-{status}"

    def receive(self, count: int, timeout: float = 20.0) -> list[Message]:
        """``count`` messages (long-polling until they are visible)."""
        got: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            got += self.q.message_queue.receive(self.queue, min(10, count - len(got)), 1, 30)
        assert len(got) == count, f"received {len(got)} of {count} messages from {self.queue}"
        return got

    def event(self, messages: list[Message]) -> dict[str, Any]:
        return {"Records": [sqs_record(self.queue, m) for m in messages]}

    def invoke(self, fn: Any, messages: list[Message], context: Any = None) -> set[str]:
        """Invoke, check the partial batch response, delete what succeeded; return the ids of the
        records named for retry."""
        before = self.present()
        response = fn(self.event(messages), LambdaContext() if context is None else context)
        assert set(response) == {"batchItemFailures"}
        failed = {item["itemIdentifier"] for item in response["batchItemFailures"]}
        assert failed <= {m.message_id for m in messages}
        assert self.present() == before, "the handler deleted a message"
        done = [m.receipt for m in messages if m.message_id not in failed]
        for start in range(0, len(done), 10):
            self.q.message_queue.delete_batch(self.queue, done[start:start + 10])
        return failed

    def present(self) -> int:
        """Messages in the queue: waiting, in flight or delayed."""
        depth = self.q.message_queue.depth(self.queue)
        return depth.waiting + depth.in_flight + depth.delayed


def upper(job: remotejob.Job) -> list[dict[str, Any]]:
    with job.open() as src:
        data = src.read()
    if data.startswith(b"fail"):
        raise RuntimeError(f"cannot take {data!r}")
    return [{"key": "out", "body": data.upper()}]


_where: dict[str, dict[str, Any]] = {}


def connect(backend: Any, **options: Any) -> remotejob.Queue:
    """A job system on this setting; :func:`lambda_for` and :func:`clock_for` connect to it as a
    function would, by its name, store and queues."""
    options.setdefault("visibility_timeout", 30)
    options.setdefault("max_attempts", 3)
    options.update(store=backend.store_url(), queues=backend.queues_url())
    q: remotejob.Queue = backend.connect(**options)
    q.init()
    _where[q.name] = options
    return q


def lambda_for(q: remotejob.Queue, job_handler: Any = upper, **options: Any) -> Any:
    worker_options = {"retry_delay": 0, **options.pop("worker_options", {})}
    return remotejob.aws_lambda.handler(job_handler, q.name, worker_options=worker_options,
                                        **_where[q.name], **options)


def clock_for(q: remotejob.Queue) -> Any:
    return remotejob.aws_lambda.clock_handler(q.name, **_where[q.name])


def job_of(message: Message) -> str:
    return decode(message.body).job


def notices(q: remotejob.Queue) -> Counter[str]:
    """The completion notices waiting, by job id (they stay in the queue)."""
    return Counter(job_of(m) for m in q.message_queue.receive(f"{q.name}-completed", 10, 1, 5))


def test_success_is_recorded_and_left_to_lambda_to_delete(backend: Any) -> None:
    q = connect(backend)
    ids = [q.submit({"body": f"photo {i}".encode()}) for i in range(3)]
    poller = Poller(q)
    assert poller.invoke(lambda_for(q), poller.receive(3)) == set()
    for i, job_id in enumerate(ids):
        status = q.status(job_id)
        assert status.state == "completed", status
        assert q.output(job_id, "out").read() == f"PHOTO {i}".encode()
    assert poller.present() == 0
    assert sorted(notices(q)) == sorted(ids)


def test_failure_is_retried_then_dead_lettered_on_the_last_attempt(backend: Any) -> None:
    q = connect(backend, max_attempts=2)
    job_id = q.submit({"body": b"fail me"})
    fn, poller = lambda_for(q), Poller(q)
    first = poller.receive(1)
    assert poller.invoke(fn, first) == {first[0].message_id}
    assert q.status(job_id).state == "pending"
    again = poller.receive(1)  # visible again after the backoff (0 s here)
    assert again[0].receive_count == 2
    assert poller.invoke(fn, again) == set()  # the last attempt: recorded, so Lambda deletes it
    status = q.status(job_id)
    assert status.state == "failed" and "cannot take" in (status.error or "")
    assert [letter.job for letter in q.dead_letters()] == [job_id]
    assert poller.present() == 0


def test_partial_failure_in_a_batch_of_ten_names_only_the_failed_records(backend: Any) -> None:
    q = connect(backend)
    bodies = [f"{'fail' if i in (2, 5, 9) else 'ok'} {i}".encode() for i in range(10)]
    ids = dict(zip(q.submit_many([{"body": body} for body in bodies]), bodies, strict=True))
    poller = Poller(q)
    messages = poller.receive(10)
    failed = poller.invoke(lambda_for(q), messages)
    by_message = {m.message_id: job_of(m) for m in messages}
    assert sorted(by_message[m] for m in failed) == sorted(j for j, b in ids.items() if b.startswith(b"fail"))
    for job_id, body in ids.items():
        assert q.status(job_id).state == ("pending" if body.startswith(b"fail") else "completed")
    assert len(poller.receive(3)) == 3  # the three come back for their next attempt


def test_a_duplicate_record_runs_once(backend: Any) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"once"})
    runs: list[str] = []

    def counted(job: remotejob.Job) -> list[dict[str, Any]]:
        runs.append(job.id)
        return upper(job)

    fn, poller = lambda_for(q, counted), Poller(q)
    message = poller.receive(1)[0]
    response = fn({"Records": [sqs_record(poller.queue, message)] * 2}, LambdaContext())
    assert response == {"batchItemFailures": []}
    # Lambda's delete is lost: the message comes back, and the job is not run again.
    q.message_queue.change_visibility(poller.queue, message.receipt, 0)
    again = poller.receive(1)
    assert again[0].receive_count == 2
    assert poller.invoke(fn, again) == set()
    assert runs == [job_id]
    assert q.status(job_id).state == "completed"
    assert q.output(job_id, "out").read() == b"ONCE"


def test_a_message_that_is_not_a_job_goes_to_the_dead_letters(backend: Any) -> None:
    q = connect(backend)
    poller = Poller(q)
    q.message_queue.send(poller.queue, "not a job")
    assert poller.invoke(lambda_for(q), poller.receive(1)) == set()
    assert [letter.body for letter in q.dead_letters()] == ["not a job"]


@pytest.mark.backends("embedded", "aws")
def test_a_completion_notice_in_a_status_queue_is_left_to_lambda_to_delete(backend: Any) -> None:
    """A notice is not a job: a record carrying one (sent to the wrong queue) is reported done,
    so Lambda deletes it, instead of coming back until the queue dead-letters it."""
    q = connect(backend)
    job_id = q.submit({"body": b"a job"})
    fn, poller = lambda_for(q), Poller(q)
    assert poller.invoke(fn, poller.receive(1)) == set()
    [notice] = q.message_queue.receive(f"{q.name}-completed", 1, 1, 30)
    assert job_of(notice) == job_id
    q.message_queue.send(poller.queue, notice.body)  # a notice where a job belongs
    assert poller.invoke(fn, poller.receive(1)) == set()
    assert poller.present() == 0 and q.dead_letters() == []
    assert q.status(job_id).state == "completed"


@pytest.mark.backends("embedded", "aws")
def test_a_refused_message_that_could_not_reach_the_dead_letters_is_named_for_retry(backend: Any) -> None:
    """A message that is not a job is deleted (by Lambda) only once its copy is in the
    dead-letter queue: while that send fails, the record is named for retry and stays."""
    q, faults = connect_faulty(backend, visibility_timeout=30, max_attempts=3)
    q.init()
    fn = remotejob.aws_lambda.handler(upper, q.name, store=q.object_store, queues=q.message_queue)
    poller = Poller(q)
    q.message_queue.send(poller.queue, "not a job")
    job_id = q.submit({"body": b"a job"})
    messages = poller.receive(2)
    faults.fail("queue.send", BackendUnavailable("SQS is unreachable"), match=f"{q.name}-dead")
    assert poller.invoke(fn, messages) == {m.message_id for m in messages if m.body == "not a job"}
    assert q.status(job_id).state == "completed"
    assert q.dead_letters() == [] and poller.present() == 1

    (back,) = [m for m in messages if m.body == "not a job"]
    q.message_queue.change_visibility(poller.queue, back.receipt, 0)  # as its visibility runs out
    assert poller.invoke(fn, poller.receive(1)) == set()
    assert [letter.body for letter in q.dead_letters()] == ["not a job"]


@pytest.mark.backends("embedded", "aws")  # the time left is the handler's own arithmetic
def test_records_not_started_in_time_go_back_at_once(backend: Any) -> None:
    q = connect(backend)
    q.submit_many([{"body": b"a"}, {"body": b"b"}])
    runs: list[str] = []
    fn, poller = lambda_for(q, lambda job: runs.append(job.id)), Poller(q)
    messages = poller.receive(2)
    short = LambdaContext(remaining_s=5)  # less than the 10 s kept in reserve
    assert poller.invoke(fn, messages, short) == {m.message_id for m in messages}
    assert runs == []
    assert [m.receive_count for m in poller.receive(2)] == [2, 2]


@pytest.mark.backends("embedded", "aws")
def test_a_job_still_running_when_time_runs_short_is_stopped_and_retried(backend: Any) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"slow"})
    asked = threading.Event()

    def slow(job: remotejob.Job) -> None:
        give_up = time.monotonic() + 30
        while not job.cancelled and time.monotonic() < give_up:
            time.sleep(0.05)  # a handler's own work loop, checking job.cancelled
        if job.cancelled:
            asked.set()

    fn, poller = lambda_for(q, slow, reserve=6.0), Poller(q)
    message = poller.receive(1)
    assert poller.invoke(fn, message, LambdaContext(remaining_s=7.5)) == {message[0].message_id}
    assert asked.is_set()
    assert q.status(job_id).state == "pending"
    assert poller.receive(1)[0].receive_count == 2  # its next attempt


@pytest.mark.backends("embedded", "aws")
def test_an_async_handler_runs_in_lambda(backend: Any) -> None:
    q = connect(backend)
    ids = q.submit_many([{"body": b"x"}, {"body": b"fail"}])

    async def handler(job: Any) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        data = await (await job.open()).read()
        if data == b"fail":
            raise RuntimeError("no")
        return [{"key": "out", "body": data * 2}]

    poller = Poller(q)
    assert len(poller.invoke(lambda_for(q, handler), poller.receive(2))) == 1
    assert [q.status(job_id).state for job_id in ids] == ["completed", "pending"]


@pytest.mark.backends("embedded")  # validation happens before any request
def test_events_from_elsewhere_are_refused_with_a_clear_error(backend: Any) -> None:
    q = connect(backend)
    fn = lambda_for(q)
    with pytest.raises(remotejob.ConfigError, match="not an SQS event"):
        fn({"detail-type": "Scheduled Event"}, None)
    record = sqs_record("someone-elses-queue", Message("{}", "m-1", "r-1", 1, time.time()))
    with pytest.raises(remotejob.ConfigError, match="someone-elses-queue.*not a status queue"):
        fn({"Records": [record]}, None)
    notice = sqs_record(f"{q.name}-completed", Message("{}", "m-2", "r-2", 1, time.time()))
    with pytest.raises(remotejob.ConfigError, match="completed.*not a status queue"):
        fn({"Records": [notice]}, None)
    with pytest.raises(remotejob.ConfigError, match="not SQS"):
        fn({"Records": [{**record, "eventSource": "aws:kinesis"}]}, None)
    with pytest.raises(remotejob.ConfigError, match="reserve"):
        lambda_for(q, reserve=2.0)
    with pytest.raises(remotejob.ConfigError, match="concurrency"):
        lambda_for(q, worker_options={"concurrency": 3})
    with pytest.raises(remotejob.ConfigError, match="clock_handler"):
        lambda_for(q, worker_options={"schedule_check": 60})
    with pytest.raises(remotejob.ConfigError, match="retry_delay"):
        lambda_for(q, worker_options={"retry_delay": -1})


@pytest.mark.backends("embedded", "aws")
def test_the_clock_handler_creates_the_ticks_of_periodic_jobs(backend: Any) -> None:
    q = connect(backend)
    q.every("each-minute", cron="* * * * *", data={"body": b"tick"}, missed="latest")
    clock = clock_for(q)
    assert clock({"source": "aws.scheduler"}, None) == {"dead_letters_settled": 0}
    depth = q.message_queue.depth(f"{q.name}-pending")
    assert depth.waiting + depth.delayed >= 1


@pytest.mark.backends("embedded", "aws")
def test_a_cancelled_job_is_dropped_without_running(backend: Any) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"never"})
    q.cancel(job_id)
    runs: list[str] = []
    fn, poller = lambda_for(q, lambda job: runs.append(job.id)), Poller(q)
    assert poller.invoke(fn, poller.receive(1)) == set()
    assert runs == []
    assert q.status(job_id).state == "cancelled"


@pytest.mark.backends("embedded", "aws")
def test_a_record_whose_notice_did_not_go_comes_back_and_is_finished_from_its_record(backend: Any) -> None:
    q, faults = connect_faulty(backend, visibility_timeout=30, max_attempts=3)
    q.init()
    ids = q.submit_many([{"body": b"a"}, {"body": b"b"}, {"body": b"c"}])
    runs: list[str] = []

    def counted(job: remotejob.Job) -> list[dict[str, Any]]:
        runs.append(job.id)
        return upper(job)

    fn = remotejob.aws_lambda.handler(counted, q.name, store=q.object_store, queues=q.message_queue)
    poller = Poller(q)
    messages = poller.receive(3)
    faults.fail_entries("queue.send_batch", [1], match=f"{q.name}-completed")  # one notice is lost
    failed = poller.invoke(fn, messages)
    assert len(failed) == 1
    (lost,) = [job_of(m) for m in messages if m.message_id in failed]
    assert q.status(lost).state == "completed"  # its outcome stands; only its notice must be sent
    back = next(m for m in messages if m.message_id in failed)
    q.message_queue.change_visibility(poller.queue, back.receipt, 0)  # as its visibility runs out
    assert poller.invoke(fn, poller.receive(1)) == set()
    assert sorted(runs) == sorted(ids)  # nobody ran twice
    assert lost in notices(q)


@pytest.mark.backends("embedded")  # the worker's own bookkeeping across invocations
def test_a_handler_abandoned_in_one_invocation_cannot_record_its_result_in_a_later_one(
    backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    q = connect(backend)
    stuck_id = q.submit({"body": b"stuck"})
    release, returned = threading.Event(), threading.Event()

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        if job.id == stuck_id:  # ignores the request to stop, then returns late
            release.wait(30)
            returned.set()
        return upper(job)

    options = {"cancel_grace": 0.5, "retry_delay": 600}  # its retry stays out of the way
    fn, poller = lambda_for(q, handler, reserve=1.0, worker_options=options), Poller(q)
    first = poller.receive(1)
    assert poller.invoke(fn, first, LambdaContext(remaining_s=2.5)) == {first[0].message_id}
    assert not returned.is_set(), "the invocation waited for the handler it had abandoned"
    other = q.submit({"body": b"next"})
    assert poller.invoke(fn, poller.receive(1)) == set()  # the next invocation, same worker
    assert q.status(other).state == "completed"
    release.set()
    assert returned.wait(10)
    wait_until(lambda: "its result is discarded" in caplog.text)
    assert caplog.text.count("failed attempt 1") == 1  # its end was recorded once, when abandoned
    assert q.status(stuck_id).state == "pending"


@pytest.mark.backends("embedded", "aws")
def test_a_pipeline_stage_hands_on_and_the_next_stage_runs_from_its_own_mapping(backend: Any) -> None:
    q = connect(backend)
    job_id = q.submit({"body": b"raw"})

    def first(job: remotejob.Job) -> None:
        with job.open() as src:
            cleaned = src.read() + b" cleaned"
        job.complete(assets=[{"key": "output", "body": cleaned}], next_status="inprogress")

    pending, inprogress = Poller(q), Poller(q, "inprogress")
    assert pending.invoke(lambda_for(q, first), pending.receive(1)) == set()
    assert q.status(job_id).status == "inprogress"
    assert inprogress.invoke(lambda_for(q, upper), inprogress.receive(1)) == set()
    assert q.status(job_id).state == "completed"
    assert q.output(job_id, "out").read() == b"RAW CLEANED"
    assert pending.present() == inprogress.present() == 0
