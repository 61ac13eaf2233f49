"""Prometheus metrics of one server: requests, latency, batch sizes, cache hits and builds.

Each server has its own `CollectorRegistry` (so several apps in one process never mix their
counts). Request counters and histograms are updated as requests finish; the per-task cache
statistics are read from the `TaskHost` when `/metrics` is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spa.tasks import TaskHost

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
UNKNOWN_TASK = "(unknown)"  # label of requests for unregistered tasks (bounded label values)


class _HostCollector(Collector):
    """Cache statistics of every registered task, read from the host at scrape time."""

    def __init__(self, host: TaskHost) -> None:
        self.host = host

    def collect(self) -> Iterator:
        hits = CounterMetricFamily(
            "spa_cache_hits", "Calls served by a cached task model", labels=["task"]
        )
        builds = CounterMetricFamily(
            "spa_task_builds", "Task model materialisations", labels=["task"]
        )
        seconds = CounterMetricFamily(
            "spa_task_build_seconds", "Time spent materialising task models", labels=["task"]
        )
        size = GaugeMetricFamily(
            "spa_task_model_bytes", "Bytes a task model holds beyond the base", labels=["task"]
        )
        for name in self.host.tasks:
            try:
                stats = self.host.stats(name)
            except Exception:  # deleted between listing and reading: skip it
                continue
            hits.add_metric([name], stats.hits)
            builds.add_metric([name], stats.builds)
            seconds.add_metric([name], stats.build_seconds)
            size.add_metric([name], stats.bytes)
        cache = GaugeMetricFamily("spa_cache_bytes", "Bytes of all cached task models")
        cache.add_metric([], self.host.cache_bytes_used)
        yield from (hits, builds, seconds, size, cache)


class ServerMetrics:
    """The metrics of one server over `host`; `render` gives the Prometheus text.

    Safe to update from several threads (prometheus_client's metrics are).
    """

    def __init__(self, host: TaskHost) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spa_requests",
            "Prediction requests by task and HTTP status",
            ["task", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spa_request_latency_seconds",
            "Prediction request latency (body read to answer)",
            ["task"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "spa_batch_size",
            "Samples per forward pass",
            ["task"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_HostCollector(host))

    def observe_request(self, task: str, status: int, seconds: float) -> None:
        """Count one prediction request and its latency."""
        self.requests.labels(task, str(status)).inc()
        self.latency.labels(task).observe(seconds)

    def observe_batch(self, task: str, samples: int) -> None:
        """Record the size of one forward pass."""
        self.batch_size.labels(task).observe(samples)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
