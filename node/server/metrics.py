"""Prometheus metrics of one node application, in a registry of its own.

A per-application :class:`CollectorRegistry` (not prometheus-client's global one) lets several
nodes run in one process, as the federation tests do.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from node.storage import AppendResult, SetInfo

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class _SyncCollector(Collector):
    """Sync outcomes and evidence (forks, rollbacks) counted by node.federation.sync."""

    def collect(self) -> Iterator[Metric]:
        from node.federation.sync import sync_counters

        family = CounterMetricFamily(
            "hashfed_sync_events",
            "Subscription syncs by outcome, records mirrored, and misbehaviour evidence kept "
            "(evidence:fork, evidence:rollback), in this process",
            labels=["event"],
        )
        for event, count in sorted(sync_counters.items()):
            family.add_metric([event], count)
        yield family


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_SyncCollector())
        self.requests = Counter(
            "hashfed_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "hashfed_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.records_appended = Counter(
            "hashfed_records_appended",
            "Records appended to a set's log by this process (duplicates not counted)",
            ["set"],
            registry=self.registry,
        )
        self.checkpoints_signed = Counter(
            "hashfed_checkpoints_signed",
            "Checkpoints signed by this process",
            ["set"],
            registry=self.registry,
        )
        self.set_size = Gauge(
            "hashfed_set_size",
            "Records in a set's log (integrated tree size)",
            ["set"],
            registry=self.registry,
        )
        self.checkpoint_size = Gauge(
            "hashfed_set_checkpoint_size",
            "Tree size of a set's latest signed checkpoint",
            ["set"],
            registry=self.registry,
        )
        self.tile_cache_bytes = Gauge(
            "hashfed_tile_cache_bytes",
            "Bytes of immutable tiles and entry bundles held in memory",
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def appended(self, set_name: str, results: list[AppendResult]) -> None:
        count = sum(1 for r in results if r.status == "appended")
        if count:
            self.records_appended.labels(set_name).inc(count)

    def checkpoint_signed(self, set_name: str, _note: bytes) -> None:
        self.checkpoints_signed.labels(set_name).inc()

    def update_sets(self, sets: list[SetInfo]) -> None:
        for info in sets:
            self.set_size.labels(info.name).set(info.size)
            self.checkpoint_size.labels(info.name).set(info.checkpoint_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
