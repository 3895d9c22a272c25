"""Metrics every kzero server records, predictor or transformer: Prometheus on ``/metrics`` (next to
KServe's own) and the same measurements over OTLP when a meter is passed in."""

from __future__ import annotations

from opentelemetry import metrics
from prometheus_client import REGISTRY, CollectorRegistry

from observability.metrics import LATENCY_BUCKETS, DualCounter, DualHistogram


class ServerMetrics:
    """Created once in ``main``; tests pass their own registry (and meter)."""

    def __init__(
        self, registry: CollectorRegistry | None = REGISTRY, meter: metrics.Meter | None = None,
        scope: str = "kzero.serving",
    ) -> None:
        self._meter = meter = meter or metrics.NoOpMeter(scope)
        self._requests = DualCounter(
            meter, registry, "kzero_requests_total", "Requests by route, method and status code",
            ["route", "method", "code"], unit="{request}")
        self._latency = DualHistogram(
            meter, registry, "kzero_request_duration_seconds", "Request latency by route", ["route", "method"],
            LATENCY_BUCKETS, unit="s")
        self._client_retries = DualCounter(
            meter, registry, "kzero_client_retries_total", "Calls to a predictor retried, by its model",
            ["model"], unit="{retry}")

    def request(self, route: str, method: str, code: int, seconds: float) -> None:
        self._requests.add(1, route, method, str(code))
        self._latency.record(seconds, route, method)

    def retried(self, model: str) -> None:
        """A call this server made to a predictor is retried."""
        self._client_retries.add(1, model)
