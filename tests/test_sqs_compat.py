"""SQS-compatible endpoints that differ from SQS, played by a proxy in front of moto (tests/proxy.py).

Only the ``aws`` setting applies: the proxy rewrites replies of moto's SQS; S3 is reached directly
(``SqsQueues(endpoint_url=...)`` points only SQS at the proxy), except in the test that checks the
proxy itself carries a whole job, S3 included.
"""

from __future__ import annotations

import json
import logging
import threading

import pytest

import remotejob
from remotejob.backends.aws import S3Store, SqsQueues
from tests.conftest import BackendSetup, unique, wait_until
from tests.proxy import Headers, Proxy, Request, RequestHeaders, sqs_action

AWS_ONLY = pytest.mark.parametrize("backend", ["aws"], indirect=True)


class WithoutReceiveCount:
    """A rewrite hook: ReceiveMessage replies lose ``ApproximateReceiveCount``, as from some
    SQS-compatible endpoints; ``stripped`` lists the message ids it took it from."""

    def __init__(self) -> None:
        self.stripped: list[str] = []

    def __call__(
        self, request_headers: RequestHeaders, request_body: bytes, status: int, headers: Headers,
        body: bytes,
    ) -> tuple[int, Headers, bytes]:
        if sqs_action(request_headers) != "ReceiveMessage" or status != 200:
            return status, headers, body
        reply = json.loads(body)
        for message in reply.get("Messages", []):
            if message.get("Attributes", {}).pop("ApproximateReceiveCount", None) is not None:
                self.stripped.append(message["MessageId"])
        return status, headers, json.dumps(reply).encode()


def connect(name: str, store: str | S3Store | None, queues: str | SqsQueues) -> remotejob.Queue:
    q = remotejob.connect(name, store=store, queues=queues, visibility_timeout=1, wait_time=1, max_attempts=2)
    q.init()
    return q


@AWS_ONLY
def test_the_proxy_carries_a_job_and_its_redelivery_unchanged(backend: BackendSetup) -> None:
    """The control for the tests below: through the proxy (SQS and S3, with a small delay on every
    receive), a job, its redelivery count, its outputs and its notice come through as from moto."""
    assert backend.sqs_endpoint is not None and backend.bucket is not None

    def delay(request: Request) -> float:
        return 0.01 if request.sqs_action == "ReceiveMessage" else 0.0

    with Proxy(backend.sqs_endpoint, delay=delay) as proxy:
        store = S3Store(backend.bucket, unique("p-"), endpoint_url=proxy.url)
        q = connect(unique("q"), store, SqsQueues(endpoint_url=proxy.url))
        big = bytes(range(256)) * 1024  # 256 KiB: staged and copied, not inline in a record
        job_id = q.submit({"body": b"through the proxy"})
        first = q.next(timeout=5)
        assert first is not None and first.id == job_id and first.receive_count == 1
        again = q.next(timeout=5)  # first is dropped: back after its 1 s visibility
        assert again is not None and again.id == job_id and again.receive_count == 2
        with again.open() as stream:
            assert stream.read() == b"through the proxy"
        again.complete(assets=[{"key": "output", "body": big}])
        st = q.wait(job_id, timeout=10, poll=0.1)
        assert st.state == "completed" and st.attempt == 2
        assert q.output(job_id, "output").read() == big
        notice = q.next("completed", timeout=5)
        assert notice is not None and notice.id == job_id and notice.state == "completed"
        notice.acknowledge()
        assert proxy.errors == []
        assert proxy.actions["ReceiveMessage"] >= 3 and proxy.actions["other"] > 0  # SQS and S3 both


@AWS_ONLY
def test_a_receive_without_approximate_receive_count_fails_loudly(backend: BackendSetup) -> None:
    """An SQS-compatible endpoint that leaves ``ApproximateReceiveCount`` out of its replies: a
    count read as 1 would never dead-letter a job, so remotejob must refuse to run, saying why."""
    assert backend.sqs_endpoint is not None
    rewrite = WithoutReceiveCount()
    name, store = unique("q"), backend.store_url()
    with Proxy(backend.sqs_endpoint, rewrite=rewrite) as proxy:
        q = connect(name, store, SqsQueues(endpoint_url=proxy.url))
        job_id = q.submit({"body": b"counted or refused"})
        with pytest.raises(remotejob.RemoteJobError, match="ApproximateReceiveCount") as raised:
            q.next(timeout=5)
        assert rewrite.stripped, "the proxy removed nothing: the test did not test anything"
        assert proxy.errors == []
    print(f"raised {type(raised.value).__name__}: {raised.value}")

    # Nothing was lost: through a compliant endpoint the job is still there to run.
    direct = connect(name, store, "sqs://")
    job = direct.next(timeout=5)
    assert job is not None and job.id == job_id
    assert direct.status(job_id).state in ("pending", "inprogress")


@AWS_ONLY
def test_a_worker_on_an_endpoint_without_receive_counts_runs_nothing_and_says_why(
    backend: BackendSetup, caplog: pytest.LogCaptureFixture
) -> None:
    """The same endpoint under a Worker: no handler runs on a delivery whose count is unknown, and
    the worker says why (an ERROR logged, or run() raising)."""
    assert backend.sqs_endpoint is not None
    rewrite = WithoutReceiveCount()
    ran: list[str] = []
    raised: list[BaseException] = []

    def handler(job: remotejob.Job) -> None:
        ran.append(f"{job.id} (receive_count {job.receive_count})")

    def mentions(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR and "ApproximateReceiveCount" in record.getMessage()

    caplog.set_level(logging.ERROR, logger="remotejob")
    with Proxy(backend.sqs_endpoint, rewrite=rewrite) as proxy:
        q = connect(unique("q"), backend.store_url(), SqsQueues(endpoint_url=proxy.url))
        q.submit({"body": b"never run uncounted"})
        worker = remotejob.Worker(q, handler, handle_signals=False, retry_delay=0)

        def run() -> None:
            try:
                worker.run()
            except BaseException as exc:  # noqa: BLE001 - reported to the test thread
                raised.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            wait_until(lambda: ran or raised or any(mentions(r) for r in caplog.records), 20,
                       "the worker to run the job or report the missing count")
        finally:
            worker.stop(now=True)
            thread.join(15)
        assert not thread.is_alive()
        assert rewrite.stripped, "the proxy removed nothing: the test did not test anything"
    assert ran == [], f"the handler ran on a delivery of unknown count: {ran}"
    said = [str(exc) for exc in raised if isinstance(exc, remotejob.RemoteJobError)]
    said += [r.getMessage() for r in caplog.records if mentions(r)]
    assert any("ApproximateReceiveCount" in text for text in said), f"nothing said why: raised {raised}"
