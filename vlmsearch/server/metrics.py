"""Prometheus metrics: requests, latency, in-flight requests, and per-collection state.

Each app gets its own registry, so several apps (tests) can live in one process.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from vlmsearch.server.security import ASGIApp, Receive, Scope, Send

# Latency buckets in seconds: 1 ms (a cached thumbnail) up to 30 s (a rerank on CPU).
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self, registry_source: Any) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vlmsearch_http_requests_total",
            "HTTP requests by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "vlmsearch_http_request_seconds",
            "HTTP request latency by route.",
            ["method", "route"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vlmsearch_http_in_flight", "Requests being answered.", registry=self.registry
        )
        self.thumbnails = Counter(
            "vlmsearch_thumbnails_made_total", "Thumbnails generated.", registry=self.registry
        )
        self.registry.register(_CollectionCollector(registry_source))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CollectionCollector:
    """Rows, generation and reloads of each served collection, read at scrape time."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Any:
        rows = GaugeMetricFamily("vlmsearch_collection_images", "Indexed images.", labels=["name"])
        gen = GaugeMetricFamily(
            "vlmsearch_collection_generation", "Committed generation served.", labels=["name"]
        )
        reloads = GaugeMetricFamily(
            "vlmsearch_collection_reloads", "Reloads after a new commit.", labels=["name"]
        )
        for name, served in self.source.items.items():
            if not served.available:
                continue
            rows.add_metric([name], len(served.current()))
            gen.add_metric([name], served.generation)
            reloads.add_metric([name], served.reloads)
        yield from (rows, gen, reloads)


class MetricsMiddleware:
    """Times every HTTP request under its route template (never the raw path, whose
    unbounded variety would blow up the label set)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, name, str(status)).inc()
            self.metrics.latency.labels(method, name).observe(time.perf_counter() - start)
