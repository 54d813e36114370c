"""OpenTelemetry traces: submit -> handler run -> completion -> the next pipeline stage, in one
trace whose context travels inside the message envelope."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import remotejob
from remotejob import keys, tracing
from remotejob.envelope import Envelope, decode, encode
from tests.conftest import BackendSetup

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """remotejob's spans go to an SDK provider of this test's, kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield provider, exporter
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


def by_name(finished: Any, trace_id: int) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in finished:
        if span.context.trace_id == trace_id:
            assert span.name not in found, f"two spans named {span.name}"
            found[span.name] = span
    return found


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.parent is not None, f"{child.name} has no parent"
    assert child.parent.span_id == parent.context.span_id, f"{child.name} is not a child of {parent.name}"


def test_a_pipeline_job_is_one_trace_from_submit_to_the_last_stage(
    backend: BackendSetup, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    q = backend.connect(statuses=("pending", "thumbnail", "completed"))
    with provider.get_tracer("app").start_as_current_span("upload") as upload:
        job_id = q.submit({"body": b"picture"})

    def resize(job: remotejob.Job) -> None:
        job.complete(assets=[{"key": "resized", "body": b"small"}], next_status="thumbnail")

    q.work(resize, burst=True, handle_signals=False)
    q.work(lambda job: [{"key": "thumb", "body": b"tiny"}], status="thumbnail", burst=True,
           handle_signals=False)
    assert q.wait(job_id, timeout=10).state == "completed"

    pending, thumbnail = keys.queue_name(q.name, "pending"), keys.queue_name(q.name, "thumbnail")
    found = by_name(exporter.get_finished_spans(), upload.get_span_context().trace_id)
    assert sorted(found) == sorted(["upload", f"send {pending}", f"process {pending}", f"settle {pending}",
                                    f"send {thumbnail}", f"process {thumbnail}", f"settle {thumbnail}"])
    chain = [found["upload"], found[f"send {pending}"], found[f"process {pending}"],
             found[f"settle {pending}"], found[f"send {thumbnail}"], found[f"process {thumbnail}"],
             found[f"settle {thumbnail}"]]
    for parent, child in zip(chain, chain[1:], strict=False):
        assert_child(child, parent)
    kinds = [span.kind for span in chain[1:]]
    assert kinds == [SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CLIENT] * 2

    system = "remotejob_embedded" if backend.kind == "embedded" else "aws_sqs"
    for span in chain[1:]:
        operation, queue = span.name.split(" ")
        attributes = dict(span.attributes or {})
        assert attributes["messaging.system"] == system
        assert attributes["messaging.destination.name"] == queue
        assert attributes["messaging.operation.type"] == attributes["messaging.operation.name"] == operation
        assert attributes["remotejob.job.id"] == job_id
        assert span.status.status_code == StatusCode.UNSET
    process, settle = found[f"process {pending}"], found[f"settle {pending}"]
    assert process.attributes is not None and settle.attributes is not None
    assert process.attributes["messaging.message.id"] == settle.attributes["messaging.message.id"]
    assert settle.attributes["remotejob.job.state"] == "handed"
    assert (found[f"settle {thumbnail}"].attributes or {})["remotejob.job.state"] == "completed"


def test_a_batch_submit_is_one_span_and_a_failure_is_an_error(
    backend: BackendSetup, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _provider, exporter = spans
    q = backend.connect(max_attempts=1)
    ids = q.submit_many([{"body": b"fine"}, {"body": b"fine"}, {"body": b"boom"}])

    def handler(job: remotejob.Job) -> None:
        with job.open() as stream:
            if stream.read() == b"boom":
                raise ValueError("boom")

    q.work(handler, burst=True, handle_signals=False)
    with pytest.raises(remotejob.JobFailed):
        q.wait(ids[2], timeout=10)

    pending = keys.queue_name(q.name, "pending")
    [send] = [span for span in exporter.get_finished_spans() if span.name == f"send {pending}"]
    assert send.kind == SpanKind.PRODUCER and send.parent is None
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    # one trace: the three handler runs are children of the one send
    processes = {str((span.attributes or {})["remotejob.job.id"]): span
                 for span in exporter.get_finished_spans() if span.name == f"process {pending}"}
    assert sorted(processes) == sorted(ids)
    for span in processes.values():
        assert_child(span, send)
    failed = processes[ids[2]]
    assert failed.status.status_code == StatusCode.ERROR
    assert (failed.attributes or {})["error.type"] == "ValueError"
    assert [event.name for event in failed.events] == ["exception"]
    assert all(processes[job_id].status.status_code == StatusCode.UNSET for job_id in ids[:2])
    [settle] = [span for span in exporter.get_finished_spans()
                if span.name == f"settle {pending}" and span.parent is not None
                and span.parent.span_id == failed.context.span_id]
    assert settle.status.status_code == StatusCode.ERROR
    assert (settle.attributes or {})["remotejob.job.state"] == "failed"


def test_without_a_span_the_message_carries_no_trace(backend: BackendSetup) -> None:
    q = backend.connect()
    q.submit({"body": b"untraced"})
    [message] = q.message_queue.receive(keys.queue_name(q.name, "pending"), 1, 5, 30)
    assert "trace" not in json.loads(message.body)


def test_with_a_span_the_message_carries_its_context(
    backend: BackendSetup, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    q = backend.connect()
    q.submit({"body": b"traced"})
    [message] = q.message_queue.receive(keys.queue_name(q.name, "pending"), 1, 5, 30)
    [send] = spans[1].get_finished_spans()
    context = send.get_span_context()
    assert context is not None
    assert json.loads(message.body)["trace"] == {
        "traceparent": f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"}


def test_round_trip_of_a_trace_context() -> None:
    env = Envelope(job="j", key="j", status="pending", sent=1.0,
                   trace={"traceparent": PARENT, "tracestate": "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"})
    assert decode(encode(env)) == env


@pytest.mark.parametrize(
    "trace",
    [
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        {},
        {"tracestate": "a=b"},
        {"traceparent": PARENT.upper()},
        {"traceparent": PARENT[:-1]},
        {"traceparent": PARENT + "-extra"},
        {"traceparent": "ff" + PARENT[2:]},
        {"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"},
        {"traceparent": f"00-0af7651916cd43dd8448eb211c80319c-{'0' * 16}-01"},
        {"traceparent": PARENT, "tracestate": "a=" + "b" * 511},
        {"traceparent": PARENT, "tracestate": "a=b\n"},
        {"traceparent": PARENT, "tracestate": 7},
        {"traceparent": PARENT, "baggage": "user=ana"},
    ],
    ids=["not-an-object", "empty", "no-parent", "upper-case", "short", "long", "version-ff", "zero-trace",
         "zero-span", "oversized-state", "control-char", "state-type", "unknown-key"],
)
def test_a_bad_trace_field_is_refused(trace: Any) -> None:
    doc = {"v": 1, "job": "a", "key": "a", "status": "pending", "sent": 1, "trace": trace}
    with pytest.raises(remotejob.EnvelopeError, match="trace"):
        decode(json.dumps(doc))


def test_a_message_with_a_tampered_trace_goes_to_the_dead_letters(backend: BackendSetup) -> None:
    q = backend.connect()
    q.init()
    body = json.dumps({"v": 1, "job": "a", "key": "a", "status": "pending", "sent": 1,
                       "trace": {"traceparent": PARENT, "tracestate": "x" * 100_000}})
    q.message_queue.send(keys.queue_name(q.name, "pending"), body)
    assert q.next("pending", timeout=1) is None
    [dead] = q.dead_letters()
    assert dead.body == body and "trace" in dead.reason
