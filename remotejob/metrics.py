"""Prometheus metrics of a worker and of the queues it serves (``pip install 'remotejob[metrics]'``).

``remotejob worker --metrics-port 9100`` (or ``Worker(..., metrics_port=9100)``) serves them at
``http://127.0.0.1:9100/metrics``. Label ``queue`` is a status name (``pending``...), or
``dead`` for the dead-letter queue; the queue gauges also have a status's priority levels
(``pending-high``, ``pending-low``) once their queues exist:

- ``remotejob_jobs_taken_total{queue}``: deliveries the worker took;
- ``remotejob_jobs_succeeded_total{queue}``: outcomes recorded completed (or handed on to the
  next pipeline stage);
- ``remotejob_jobs_failed_total{queue}``: outcomes recorded failed;
- ``remotejob_jobs_retried_total{queue}``: attempts that failed and will be delivered again;
- ``remotejob_jobs_cancelled_total{queue}``: jobs the worker dropped or stopped because they were
  cancelled;
- ``remotejob_jobs_dead_lettered_total{queue}``: jobs (and refused messages) the worker moved to
  the dead-letter queue;
- ``remotejob_handler_duration_seconds{queue}`` (histogram) and ``remotejob_jobs_running{queue}``;
- ``remotejob_queue_messages{queue,kind}`` (``kind``: ``waiting``, ``in_flight``, ``delayed``) and
  ``remotejob_queue_oldest_message_age_seconds{queue}`` for every status queue and the
  dead-letter queue, read from the queues at most every :data:`DEPTH_EVERY_S` seconds (on SQS
  one GetQueueAttributes per queue; SQS does not report the oldest message's age, so that
  gauge is absent there: CloudWatch's ``ApproximateAgeOfOldestMessage`` is its equivalent).

Each worker keeps its metrics in a registry of its own (:attr:`WorkerMetrics.registry`), so
several workers in one process count apart. :func:`queue_collector` adds the queue gauges to
any registry (the ui's ``/metrics`` uses it). Nothing here imports prometheus_client until
metrics are asked for; a worker without them pays one ``if`` per hook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from . import keys, levels
from .errors import ConfigError, RemoteJobError

if TYPE_CHECKING:
    from .backends.base import QueueDepth
    from .context import Context

logger = logging.getLogger(__name__)

DEPTH_EVERY_S = 5.0
"""The least time between two reads of the queues' depths; scrapes in between see the last."""
OUTCOMES = ("succeeded", "failed", "retried", "cancelled", "dead_lettered")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
           600.0, 1800.0, 3600.0, float("inf"))
"""Handler duration buckets, seconds: from quick conversions to hour-long renders."""
INSTALL = "pip install 'remotejob[metrics]'"


class Observer(Protocol):
    """What a worker and the lifecycle tell of a job's life (the worker's metrics hear it)."""

    def taken(self, status: str) -> None:
        """A delivery was taken from the status queue."""

    def handling(self, status: str) -> Any:
        """A context manager around one handler run."""

    def outcome(self, status: str, outcome: str) -> None:
        """One of :data:`OUTCOMES` happened to a job of the status queue."""


def _client() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(f"metrics need the Prometheus client library: {INSTALL}") from None
    return prometheus_client


class WorkerMetrics:
    """One worker's counters, histogram and gauges, and its queues' gauges, in :attr:`registry`.

    Args:
        ctx: the job system (``queue.context``) whose queues the gauges read.
        statuses: the status queues to show at zero before anything happens.

    Raises:
        ConfigError: prometheus_client is not installed.
    """

    def __init__(self, ctx: Context, statuses: tuple[str, ...] = ()) -> None:
        client = _client()
        self.registry: Any = client.CollectorRegistry()
        """The ``prometheus_client.CollectorRegistry`` holding everything below."""
        self.server: Any = None
        self.port: int | None = None
        """The port ``/metrics`` is served on (see :meth:`serve`), else None."""
        counter = client.Counter
        self._taken = counter("remotejob_jobs_taken_total", "Deliveries the worker took.", ["queue"],
                              registry=self.registry)
        helps = {
            "succeeded": "Outcomes recorded completed, or handed on to the next status.",
            "failed": "Outcomes recorded failed.",
            "retried": "Attempts that failed and will be delivered again.",
            "cancelled": "Jobs dropped or stopped because they were cancelled.",
            "dead_lettered": "Jobs and refused messages moved to the dead-letter queue.",
        }
        self._outcomes = {name: counter(f"remotejob_jobs_{name}_total", helps[name], ["queue"],
                                        registry=self.registry) for name in OUTCOMES}
        self._duration = client.Histogram("remotejob_handler_duration_seconds", "Handler run time.",
                                          ["queue"], buckets=BUCKETS, registry=self.registry)
        self._running = client.Gauge("remotejob_jobs_running", "Handlers running now.", ["queue"],
                                     registry=self.registry)
        for status in statuses:  # present (at 0) from the first scrape
            self._taken.labels(status)
            self._duration.labels(status)
            self._running.labels(status)
            for metric in self._outcomes.values():
                metric.labels(status)
        self.registry.register(queue_collector(ctx))
        client.ProcessCollector(registry=self.registry)

    def taken(self, status: str) -> None:
        self._taken.labels(status).inc()

    @contextmanager
    def handling(self, status: str) -> Iterator[None]:
        running = self._running.labels(status)
        running.inc()
        started = time.perf_counter()
        try:
            yield
        finally:
            self._duration.labels(status).observe(time.perf_counter() - started)
            running.dec()

    def outcome(self, status: str, outcome: str) -> None:
        self._outcomes[outcome].labels(status).inc()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve :attr:`registry` at ``http://HOST:PORT/metrics`` on a daemon thread; return
        the port (``port=0`` picks a free one).

        Raises:
            ConfigError: the address cannot be bound (e.g. the port is taken).
        """
        client = _client()
        try:
            self.server, _thread = client.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
        self.port = int(self.server.server_address[1])
        return self.port

    def close(self) -> None:
        """Stop serving (if :meth:`serve` was called)."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def queue_collector(ctx: Context, every_s: float = DEPTH_EVERY_S) -> Any:
    """A Prometheus collector of ``remotejob_queue_messages`` and
    ``remotejob_queue_oldest_message_age_seconds`` for a job system's status and dead-letter
    queues, read at scrape time at most every ``every_s`` seconds; register it with
    ``registry.register(...)``. A queue that cannot be read (not created yet, unreachable) is
    left out of that scrape.

    Raises:
        ConfigError: prometheus_client is not installed.
    """
    _client()
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector

    class QueueCollector(Collector):
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.read_at = -float("inf")
            self.depths: dict[str, QueueDepth] = {}
            self.missing: dict[str, float] = {}  # priority level queues found missing, and when

        def describe(self) -> list[Any]:  # no queue read at registration
            return [GaugeMetricFamily("remotejob_queue_messages", "", labels=["queue", "kind"]),
                    GaugeMetricFamily("remotejob_queue_oldest_message_age_seconds", "", labels=["queue"])]

        def collect(self) -> Iterator[Any]:
            messages = GaugeMetricFamily(
                "remotejob_queue_messages", "Messages in the queue by kind (approximate on SQS).",
                labels=["queue", "kind"])
            oldest = GaugeMetricFamily(
                "remotejob_queue_oldest_message_age_seconds",
                "Age of the oldest message in the queue (not reported on SQS).", labels=["queue"])
            for label, depth in self.read().items():
                messages.add_metric([label, "waiting"], depth.waiting)
                messages.add_metric([label, "in_flight"], depth.in_flight)
                messages.add_metric([label, "delayed"], depth.delayed)
                if depth.oldest_age_s is not None:
                    oldest.add_metric([label], depth.oldest_age_s)
            yield messages
            yield oldest

        def read(self) -> dict[str, QueueDepth]:
            with self.lock:  # concurrent scrapes share one read
                if time.monotonic() - self.read_at >= every_s:
                    self.depths = _depths(ctx, self.missing)
                    self.read_at = time.monotonic()
                return self.depths

    return QueueCollector()


def _depths(ctx: Context, missing: dict[str, float]) -> dict[str, QueueDepth]:
    found = {}
    for label in (*ctx.statuses, keys.DEAD):
        name = keys.dead_letter_name(ctx.name) if label == keys.DEAD else keys.queue_name(ctx.name, label)
        try:
            found[label] = ctx.queues.depth(name)
        except RemoteJobError as exc:
            logger.debug("metrics: cannot read the depth of %s: %s", name, exc)
    found.update(levels.level_depths(ctx, missing))
    return found
