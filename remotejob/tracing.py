"""OpenTelemetry spans for a job's life, after OpenTelemetry's semantic conventions for
messaging (``pip install 'remotejob[otel]'`` for the API; configure an SDK and exporter as usual).

- ``send <queue>`` (PRODUCER): ``submit``/``trigger`` (one span per call; a batch sets
  ``messaging.batch.message_count``), and a pipeline stage handing a job on to the next status.
- ``process <queue>`` (CONSUMER): one handler run by a worker, a child of the span that sent the
  message; error status when the handler raises.
- ``settle <queue>`` (CLIENT): the outcome being recorded, the consequences sent (a hand-on, the
  completion notice, a dead letter) and the message deleted; error status when the outcome is
  ``failed``.

The trace context travels inside the (signed) message envelope as ``"trace"``:
``{"traceparent", "tracestate"}`` in W3C Trace Context form, written and read with
OpenTelemetry's W3C propagator, not in SQS message attributes (SQS allows ten; remotejob keeps
them free). A job therefore links submitter -> worker -> the next pipeline stage in one trace.

Attributes: ``messaging.system`` (``aws_sqs`` on SQS; ``remotejob_embedded`` on the embedded
SQLite queues, which are not a messaging system OpenTelemetry names), ``messaging.destination.name``
(the queue, e.g. ``thumbnails-pending``), ``messaging.operation.type`` and
``messaging.operation.name`` (``send``, ``process``, ``settle``), ``messaging.message.id`` where
known, ``remotejob.job.id`` and, on ``settle``, ``remotejob.job.state``.

Spans go to OpenTelemetry's global tracer provider, or to the one given to
:func:`set_tracer_provider`. Without opentelemetry-api installed every function here is a no-op
and nothing is imported; with it but no SDK configured, spans are the API's non-recording ones
and envelopes carry no trace.

Example::

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)   # in the submitter and in every worker process
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from .keys import queue_name

if TYPE_CHECKING:
    from .context import Context
    from .lifecycle import Delivery

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_FIELDS = ("traceparent", "tracestate")
_NOT_LOADED: Any = object()
_otel: Any = _NOT_LOADED
_provider: Any = None
_tracer: Any = None


def set_tracer_provider(provider: Any) -> None:
    """Send remotejob's spans to ``provider`` (an OpenTelemetry ``TracerProvider``) instead of
    the global one; None goes back to the global provider."""
    global _provider, _tracer
    _provider, _tracer = provider, None


def _api() -> Any:
    """The OpenTelemetry API pieces we use, imported on first use; None when not installed."""
    global _otel
    if _otel is _NOT_LOADED:
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError:
            _otel = None
        else:
            _otel = _Api(context, trace, TraceContextTextMapPropagator())
    return _otel


class _Api:
    def __init__(self, context: Any, trace: Any, propagator: Any) -> None:
        self.context, self.trace, self.propagator = context, trace, propagator

    def tracer(self) -> Any:
        global _tracer
        if _tracer is None:  # the global provider's is a proxy that follows it once it is set
            _tracer = self.trace.get_tracer("remotejob", tracer_provider=_provider)
        return _tracer


def system(ctx: Context) -> str:
    """``messaging.system`` for a job system's queues."""
    return "remotejob_embedded" if ctx.queues.location.startswith("sqlite://") else "aws_sqs"


def _attributes(ctx: Context, queue: str, operation: str, job_id: str | None) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": system(ctx),
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }
    if job_id is not None:
        attributes["remotejob.job.id"] = job_id
    return attributes


def carrier() -> dict[str, str] | None:
    """The current span's W3C trace context for an envelope's ``trace`` field; None when
    OpenTelemetry is absent or no valid span is current."""
    api = _api()
    if api is None or not api.trace.get_current_span().get_span_context().is_valid:
        return None
    found: dict[str, str] = {}
    api.propagator.inject(found)
    doc = {name: found[name] for name in _FIELDS if name in found}
    if len(doc.get("tracestate", "")) > 512:  # envelope.decode's bound: pass on the parent only
        del doc["tracestate"]
    return doc if "traceparent" in doc else None


@contextmanager
def send(ctx: Context, queue: str, job_id: str | None = None) -> Iterator[Any]:
    """A ``send <queue>`` PRODUCER span around sending; envelopes built inside it should carry
    :func:`carrier`. Yields the span (None without OpenTelemetry)."""
    api = _api()
    if api is None:
        yield None
        return
    with api.tracer().start_as_current_span(
        f"send {queue}", kind=api.trace.SpanKind.PRODUCER, attributes=_attributes(ctx, queue, "send", job_id)
    ) as span:
        yield span


def sends(function: Callable[Concatenate[Context, Any, str, P], list[str]]) -> Callable[
        Concatenate[Context, Any, str, P], list[str]]:
    """Decorate ``batch.submit_many``/``trigger_many`` (``ctx, items, status, ...`` returning the
    job ids) with one ``send`` span for the whole call."""

    @functools.wraps(function)
    def sending(ctx: Context, items: Any, status: str, /, *args: P.args, **kwargs: P.kwargs) -> list[str]:
        if _api() is None:
            return function(ctx, items, status, *args, **kwargs)
        with send(ctx, queue_name(ctx.name, status)) as span:
            ids = function(ctx, items, status, *args, **kwargs)
            if len(ids) == 1:
                span.set_attribute("remotejob.job.id", ids[0])
            else:
                span.set_attribute("messaging.batch.message_count", len(ids))
            return ids

    return sending


def process(d: Delivery) -> AbstractContextManager[Any]:
    """A ``process <queue>`` CONSUMER span around a handler run, a child of the span that sent
    the message (from its envelope's ``trace``)."""
    api = _api()
    if api is None:
        return nullcontext()
    parent = None if d.envelope.trace is None else api.propagator.extract(d.envelope.trace)
    attributes = _attributes(d.ctx, d.queue, "process", d.id)
    attributes["messaging.message.id"] = d.message.message_id
    attributes["remotejob.job.attempt"] = d.receive_count
    return api.tracer().start_as_current_span(  # type: ignore[no-any-return]
        f"process {d.queue}", context=parent, kind=api.trace.SpanKind.CONSUMER, attributes=attributes
    )


def record_error(exc: BaseException) -> None:
    """Mark the current span failed with ``exc`` (a handler that raised)."""
    api = _api()
    if api is None:
        return
    span = api.trace.get_current_span()
    if span.is_recording():
        span.record_exception(exc)
        span.set_attribute("error.type", type(exc).__qualname__)
        span.set_status(api.trace.Status(api.trace.StatusCode.ERROR, str(exc)[:1024]))


def settles(function: Callable[Concatenate[Delivery, P], R]) -> Callable[Concatenate[Delivery, P], R]:
    """Decorate ``lifecycle.finish`` with a ``settle <queue>`` CLIENT span; the returned status's
    ``state`` becomes ``remotejob.job.state`` (``failed`` sets the error status)."""

    @functools.wraps(function)
    def settling(d: Delivery, /, *args: P.args, **kwargs: P.kwargs) -> R:
        api = _api()
        if api is None:
            return function(d, *args, **kwargs)
        attributes = _attributes(d.ctx, d.queue, "settle", d.id)
        attributes["messaging.message.id"] = d.message.message_id
        with api.tracer().start_as_current_span(
            f"settle {d.queue}", kind=api.trace.SpanKind.CLIENT, attributes=attributes
        ) as span:
            result = function(d, *args, **kwargs)
            state = getattr(result, "state", None)
            if state is not None:
                span.set_attribute("remotejob.job.state", "handed" if state == "pending" else str(state))
            if state == "failed":
                error = str(getattr(result, "error", None) or "failed")
                span.set_status(api.trace.Status(api.trace.StatusCode.ERROR, error[:1024]))
            return result

    return settling
