"""Metrics of a predictor server: the batcher, the model and its start, on top of every server's
(``serving.metrics``), to Prometheus and OTLP alike."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from opentelemetry import metrics
from prometheus_client import REGISTRY, CollectorRegistry

from observability.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, DualCounter, DualGauge, DualHistogram
from serving.metrics import ServerMetrics

TOKEN_RATE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class PredictorMetrics(ServerMetrics):
    """Created once in ``main``; tests pass their own registry (and meter)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, meter: metrics.Meter | None = None) -> None:
        super().__init__(registry, meter, scope="kzero.predictors")
        meter = self._meter
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
