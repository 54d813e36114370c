"""``remotejob metrics``: publish the scaling signal (:mod:`remotejob.scaling`) to CloudWatch, so
that an ECS service (target tracking), an EC2 Auto Scaling group or an alarm can act on it.

Each round reads every chosen status's backlog (one depth read per queue of the status) and
puts, in one ``PutMetricData`` request per 20 values, with dimensions ``JobSystem=<name>`` and
``Status=<status>``: ``Backlog``, and, given a worker count, ``Workers`` and
``BacklogPerWorker`` (all unit Count). ``--ecs-service`` reads the running task count with ECS
``DescribeServices`` (no running task: per worker = the backlog, so a service at zero scales
out). The CloudWatch and ECS clients come from boto3's default session: credentials, region
and endpoints from the standard AWS chain and variables (``AWS_ENDPOINT_URL_CLOUDWATCH``,
``AWS_ENDPOINT_URL_ECS``); botocore's failures become one-line errors (exit 3).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click

from .. import scaling
from ..errors import ConfigError, NotFound
from .app import Context, emit_json, main, out, pass_context, table

NAMESPACE = "remotejob"
"""The CloudWatch namespace by default (``iam-policy --role scaler`` allows this one)."""
PER_REQUEST = 20
"""Values per PutMetricData request (CloudWatch accepts up to 1,000; 20 was its old limit)."""


class _Aws:
    """The CloudWatch and ECS clients (created on first use) and their calls."""

    def __init__(self) -> None:
        from ..backends._aws import LazyClient

        self.cloudwatch = LazyClient("cloudwatch", None, None, None)
        self.ecs = LazyClient("ecs", None, None, None)

    def running(self, cluster: str, service: str) -> int:
        """The ECS service's ``runningCount``.

        Raises:
            NotFound: no such service in the cluster (or no such cluster).
            BackendUnavailable: ECS cannot be reached or refuses the call.
        """
        from ..backends._aws import Translate

        subject = f"service {service!r} of cluster {cluster!r}"
        with Translate("ECS", self.ecs.endpoint(), "describing", subject):
            reply = self.ecs.get().describe_services(cluster=cluster, services=[service])
        found = [s for s in reply.get("services", []) if s.get("status") != "INACTIVE"]
        if not found:
            reasons = ", ".join(sorted({str(f.get("reason")) for f in reply.get("failures", [])}))
            raise NotFound(f"ECS has no {subject} ({reasons or 'INACTIVE'}): check --ecs-service "
                           "CLUSTER/SERVICE and the region (AWS_REGION)")
        return int(found[0].get("runningCount", 0))

    def put(self, namespace: str, data: list[dict[str, Any]]) -> None:
        """PutMetricData, :data:`PER_REQUEST` values a request."""
        from ..backends._aws import Translate

        with Translate("CLOUDWATCH", self.cloudwatch.endpoint(), "putting metrics in",
                       f"namespace {namespace!r}"):
            client = self.cloudwatch.get()
            for start in range(0, len(data), PER_REQUEST):
                client.put_metric_data(Namespace=namespace, MetricData=data[start:start + PER_REQUEST])


def metric_data(name: str, entries: Sequence[scaling.Backlog], workers: int | None,
                when: datetime) -> list[dict[str, Any]]:
    """The ``MetricData`` of one round: per status, ``Backlog``, and with ``workers``,
    ``Workers`` and ``BacklogPerWorker``."""
    data: list[dict[str, Any]] = []
    for entry in entries:
        dimensions = [{"Name": "JobSystem", "Value": name}, {"Name": "Status", "Value": entry.status}]
        values: list[tuple[str, float]] = [("Backlog", entry.backlog)]
        if workers is not None:
            values += [("Workers", workers), ("BacklogPerWorker", scaling.per_worker(entry.backlog, workers))]
        data += [{"MetricName": metric, "Dimensions": dimensions, "Timestamp": when, "Value": float(value),
                  "Unit": "Count"} for metric, value in values]
    return data


def _service(value: str | None) -> tuple[str, str] | None:
    if value is None:
        return None
    try:
        return scaling.ecs_service(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--ecs-service") from None


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGTERM or SIGINT while the block runs (on the main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@main.command()
@click.option("--cloudwatch", is_flag=True,
              help="Publish to CloudWatch with PutMetricData (the one sink for now: required).")
@click.option("--status", "statuses", multiple=True, metavar="S",
              help="A status whose backlog to publish (repeat for several; default: pending).")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="The workers (or tasks) serving the status now: also publish Workers and "
                   "BacklogPerWorker.")
@click.option("--ecs-service", default=None, metavar="CLUSTER/SERVICE",
              help="Read the worker count from this ECS service's runningCount, each round.")
@click.option("--namespace", default=NAMESPACE, show_default=True, help="The CloudWatch namespace.")
@click.option("--every", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Publish every SECONDS until SIGTERM or SIGINT (default: once).")
@click.option("--json", "as_json", is_flag=True, help="Print what was put as one JSON object a round.")
@pass_context
def metrics(ctx: Context, cloudwatch: bool, statuses: tuple[str, ...], workers: int | None,
            ecs_service: str | None, namespace: str, every: float | None, as_json: bool) -> None:
    """Publish each status's backlog (waiting + in flight, over its priority levels' queues) to
    CloudWatch, and per worker given --workers or --ecs-service, for target tracking.

    Metrics Backlog, Workers and BacklogPerWorker (unit Count) in namespace remotejob, with
    dimensions JobSystem=NAME and Status=STATUS. With --ecs-service, a service with no task
    running has a backlog per worker of the whole backlog, so it scales out from zero.
    Endpoints: AWS_ENDPOINT_URL_CLOUDWATCH, AWS_ENDPOINT_URL_ECS. IAM: iam-policy --role scaler.

    \b
    Example:
      remotejob metrics --cloudwatch --ecs-service jobs/thumbnail-workers --every 60
      remotejob metrics --cloudwatch --status pending --workers 4 --json
    """
    if not cloudwatch:
        raise click.UsageError("CloudWatch is the one place metrics publishes to for now: pass --cloudwatch "
                               "(remotejob stats --json --workers N prints the same numbers)")
    if workers is not None and ecs_service is not None:
        raise click.UsageError("give the worker count once: --workers N or --ecs-service CLUSTER/SERVICE")
    where = _service(ecs_service)
    with ctx.errors():
        q = ctx.connect(statuses=statuses or ("pending",))
        aws = _Aws()
        with _stop_on_signals() as stop:
            while True:
                count = aws.running(*where) if where is not None else workers
                entries = scaling.backlog(q)
                now = datetime.now(UTC)
                aws.put(namespace, metric_data(q.name, entries, count, now))
                _report(q.name, namespace, ecs_service, count, entries, now, as_json)
                if every is None or stop.wait(every):
                    break


def _report(name: str, namespace: str, ecs_service: str | None, workers: int | None,
            entries: Sequence[scaling.Backlog], when: datetime, as_json: bool) -> None:
    if as_json:
        emit_json({"name": name, "namespace": namespace, "at": when.isoformat(), "workers": workers,
                   "ecs_service": ecs_service, "backlog": [e.doc(workers) for e in entries]})
        return
    columns = ["status", "Backlog"] + (["Workers", "BacklogPerWorker"] if workers is not None else [])
    rows = [[e.status, e.backlog] + ([workers, f"{scaling.per_worker(e.backlog, workers):g}"]
                                     if workers is not None else []) for e in entries]
    table(columns, rows, title=f"put in CloudWatch {namespace} (JobSystem={name}) at {when:%H:%M:%S}Z")
    out.file.flush()
