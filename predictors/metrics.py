"""Prometheus metrics of a predictor server, served on ``/metrics`` with KServe's own."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class PredictorMetrics:
    """Created once in ``main``; tests pass their own registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "kzero_requests_total", "Requests by route, method and status code", ["route", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "kzero_request_duration_seconds", "Request latency by route", ["route", "method"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.batch_size = Histogram(
            "kzero_batch_size", "Items per forward pass", ["model"], buckets=_BATCH_BUCKETS, registry=registry
        )
        self.queue_wait = Histogram(
            "kzero_queue_wait_seconds", "Time an item waited before its batch ran", ["model"],
            buckets=_LATENCY_BUCKETS, registry=registry,
        )
        self.queue_depth = Gauge("kzero_queue_depth", "Items waiting for a batch", ["model"], registry=registry)
        self.model_ready = Gauge("kzero_model_ready", "1 when the model is loaded and warmed up", ["model"],
                                 registry=registry)
        self.cold_start = Gauge(
            "kzero_cold_start_seconds", "Seconds spent in each start-up phase", ["phase"], registry=registry
        )
        self.generated_tokens = Counter(
            "kzero_generated_tokens_total", "Completion tokens generated", ["model"], registry=registry
        )

    def observe_batch(self, model: str, size: int, waits: Sequence[float]) -> None:
        self.batch_size.labels(model).observe(size)
        wait = self.queue_wait.labels(model)
        for seconds in waits:
            wait.observe(seconds)
