"""The batch API's metrics, recorded to OpenTelemetry and (when a registry is given) Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opentelemetry import metrics
from prometheus_client import CollectorRegistry

from observability.metrics import DualCounter, DualGauge


class BatchMetrics:
    def __init__(self, meter: metrics.Meter | None = None, registry: CollectorRegistry | None = None) -> None:
        meter = meter or metrics.NoOpMeter("kzero.batch_api")
        self.batches = DualGauge(meter, registry, "kzero_batches", "Batches known, by status", ["status"])
        self.lines_sent = DualCounter(meter, registry, "kzero_batch_lines_sent_total",
                                      "Batch input lines produced as request events", [])
        self.lines_done = DualCounter(meter, registry, "kzero_batch_lines_done_total",
                                      "Batch lines written to an output or error file, by outcome", ["outcome"])

    def watch_statuses(self, reading: Callable[[], Iterable[tuple[Sequence[str], float]]]) -> None:
        self.batches.watch(reading)
