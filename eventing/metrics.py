"""The worker's metrics, recorded to OpenTelemetry and (when a registry is given) Prometheus."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from opentelemetry import metrics
from prometheus_client import CollectorRegistry

from observability.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, DualCounter, DualGauge, DualHistogram

if TYPE_CHECKING:
    from serving.client import TransientCallError

# Values of the ``outcome`` label of kzero_events_processed_total.
SUCCEEDED = "succeeded"
DEAD_LETTERED = "dead_lettered"


class WorkerMetrics:
    """Instruments of one worker; the default meter records nothing (tests, or no OTLP endpoint)."""

    def __init__(self, meter: metrics.Meter | None = None, registry: CollectorRegistry | None = None) -> None:
        meter = meter or metrics.NoOpMeter("kzero.eventing")
        self._lags: Mapping[tuple[str, str], float] = {}
        self.lag = DualGauge(meter, registry, "kzero_consumer_lag",
                             "Records not yet fetched per assigned partition (highwater - position)",
                             ["topic", "partition"])
        self.lag.watch(self._lag_reading)
        self.dlq_events = DualCounter(meter, registry, "kzero_dlq_events_total",
                                      "Events dead-lettered, by error code", ["code"])
        self.retries = DualCounter(meter, registry, "kzero_retries_total",
                                   "Predictor calls retried, by what failed", ["reason"])
        self.processed = DualCounter(meter, registry, "kzero_events_processed_total",
                                     "Consumed events answered (result or DLQ event acknowledged)", ["outcome"])
        self.batch_size = DualHistogram(meter, registry, "kzero_worker_batch_size", "Events per micro-batch",
                                        [], BATCH_BUCKETS)
        self.latency = DualHistogram(meter, registry, "kzero_event_latency_seconds",
                                     "Seconds from consuming an event to its answer being acknowledged",
                                     [], LATENCY_BUCKETS, unit="s")

    def set_lags(self, lags: Mapping[tuple[str, str], float]) -> None:
        """Replace the cached lag per (topic, partition); only the consumer's thread measures it."""
        self._lags = dict(lags)

    def _lag_reading(self) -> Iterable[tuple[Sequence[str], float]]:
        return list(self._lags.items())  # one reference read: the consumer thread swaps whole dicts

    def retried(self, attempt: int, error: TransientCallError) -> None:
        """A ``call_with_retries`` ``on_retry`` hook."""
        self.retries.add(1, str(error.status or type(error).__name__))
