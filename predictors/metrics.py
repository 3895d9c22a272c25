"""Metrics of a predictor or transformer server: Prometheus on ``/metrics`` (with KServe's own) and
the same measurements over OTLP when a meter is passed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry import metrics
from prometheus_client import REGISTRY, CollectorRegistry

from observability.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, DualCounter, DualGauge, DualHistogram

TOKEN_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class PredictorMetrics:
    """Created once in ``main``; tests pass their own registry (and meter)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.NoOpMeter("kzero.predictors")
        self._requests = DualCounter(
            meter, registry, "kzero_requests_total", "Requests by route, method and status code",
            ["route", "method", "code"], unit="{request}")
        self._latency = DualHistogram(
            meter, registry, "kzero_request_duration_seconds", "Request latency by route", ["route", "method"],
            LATENCY_BUCKETS, unit="s")
        self._batch_size = DualHistogram(
            meter, registry, "kzero_batch_size", "Items per forward pass", ["model"], BATCH_BUCKETS, unit="{item}")
        self._queue_wait = DualHistogram(
            meter, registry, "kzero_queue_wait_seconds", "Time an item waited before its batch ran", ["model"],
            LATENCY_BUCKETS, unit="s")
        self._queue_depth = DualGauge(
            meter, registry, "kzero_queue_depth", "Items waiting for a batch", ["model"], unit="{item}")
        self._model_ready = DualGauge(
            meter, registry, "kzero_model_ready", "1 when the model is loaded and warmed up", ["model"])
        self._cold_start = DualGauge(
            meter, registry, "kzero_cold_start_seconds", "Seconds spent in each start-up phase", ["phase"], unit="s")
        self._generated_tokens = DualCounter(
            meter, registry, "kzero_generated_tokens_total", "Completion tokens generated", ["model"],
            unit="{token}")
        self._tokens_per_second = DualHistogram(
            meter, registry, "kzero_generation_tokens_per_second", "Completion tokens per second of each batch",
            ["model"], TOKEN_RATE_BUCKETS, unit="{token}/s")
        self._client_retries = DualCounter(
            meter, registry, "kzero_client_retries_total", "Calls to a predictor retried, by its model", ["model"],
            unit="{retry}")

    def request(self, route: str, method: str, code: int, seconds: float) -> None:
        self._requests.add(1, route, method, str(code))
        self._latency.record(seconds, route, method)

    def observe_batch(self, model: str, size: int, waits: Sequence[float]) -> None:
        self._batch_size.record(size, model)
        self._queue_wait.record_many(waits, model)

    def generated(self, model: str, tokens: int, seconds: float) -> None:
        """``tokens`` completion tokens produced by one batch that took ``seconds``."""
        if tokens <= 0:
            return
        self._generated_tokens.add(tokens, model)
        if seconds > 0:
            self._tokens_per_second.record(tokens / seconds, model)

    def watch_queue(self, model: str, depth: Callable[[], int]) -> None:
        self._queue_depth.watch(lambda: [((model,), float(depth()))])

    def model_ready(self, model: str, ready: bool) -> None:
        self._model_ready.set(1.0 if ready else 0.0, model)

    def cold_start(self, phase: str, seconds: float) -> None:
        self._cold_start.set(seconds, phase)

    def retried(self, model: str) -> None:
        self._client_retries.add(1, model)
