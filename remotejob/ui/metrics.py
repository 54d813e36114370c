"""The ui's ``/metrics``: what its index knows, in Prometheus's text format."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .index import Index


class _IndexCollector(Collector):
    def __init__(self, index: Index) -> None:
        self.index = index

    def collect(self) -> list[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("remotejob_index_jobs", "Jobs in the dashboard's index, by status queue "
                                 "and state.", labels=["queue", "state"])
        for (queue, state), n in sorted(self.index.counts().items()):
            jobs.add_metric([queue, state], n)
        messages = GaugeMetricFamily("remotejob_queue_messages", "Approximate messages in a queue, by kind.",
                                     labels=["queue", "kind"])
        oldest = GaugeMetricFamily("remotejob_queue_oldest_message_age_seconds",
                                   "Age of the oldest waiting message (the oldest pending job's, on SQS).",
                                   labels=["queue"])
        now = time.time()
        waiting = self.index.oldest_waiting()
        for status, depth in sorted(self.index.depths.items()):
            if depth is None:
                continue
            messages.add_metric([status, "waiting"], depth.waiting)
            messages.add_metric([status, "in_flight"], depth.in_flight)
            messages.add_metric([status, "delayed"], depth.delayed)
            age = getattr(depth, "oldest_age_s", None)
            if age is None and status in waiting and (depth.waiting or depth.delayed):
                age = now - waiting[status]
            if age is not None:
                oldest.add_metric([status], age)
        synced = GaugeMetricFamily("remotejob_index_synced_timestamp_seconds",
                                   "When the index last finished a refresh.")
        synced.add_metric([], self.index.synced_at)
        return [jobs, messages, oldest, synced]


def exposition(index: Index) -> tuple[bytes, str]:
    """The metrics page's body and content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_IndexCollector(index))
    return generate_latest(registry), CONTENT_TYPE_LATEST
