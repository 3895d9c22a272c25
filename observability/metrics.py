"""Instruments recorded twice: to OpenTelemetry (exported over OTLP) and to Prometheus (``/metrics``).

One call site records one measurement; each side keeps its own conventions (Prometheus label
values by position, OTel attributes by name). With no OTLP endpoint the OTel meter is a no-op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _otel_name(prometheus_name: str) -> str:
    """``kzero_request_duration_seconds`` -> ``kzero.request.duration`` (units go in ``unit``)."""
    name = prometheus_name.removesuffix("_total").removesuffix("_seconds")
    return name.replace("_", ".", 1).replace("_", ".")


class DualCounter:
    def __init__(self, meter: metrics.Meter, registry: CollectorRegistry | None, name: str, doc: str,
                 labels: Sequence[str], unit: str = "1") -> None:
        self._labels = tuple(labels)
        self._prom = Counter(name, doc, self._labels, registry=registry) if registry is not None else None
        self._otel = meter.create_counter(_otel_name(name), unit=unit, description=doc)

    def add(self, value: float = 1, *label_values: str) -> None:
        if self._prom is not None:
            (self._prom.labels(*label_values) if self._labels else self._prom).inc(value)
        self._otel.add(value, dict(zip(self._labels, label_values, strict=True)))


class DualHistogram:
    def __init__(self, meter: metrics.Meter, registry: CollectorRegistry | None, name: str, doc: str,
                 labels: Sequence[str], buckets: Sequence[float], unit: str = "1") -> None:
        self._labels = tuple(labels)
        self._prom = (Histogram(name, doc, self._labels, buckets=buckets, registry=registry)
                      if registry is not None else None)
        self._otel = meter.create_histogram(_otel_name(name), unit=unit, description=doc,
                                            explicit_bucket_boundaries_advisory=list(buckets))

    def record(self, value: float, *label_values: str) -> None:
        if self._prom is not None:
            (self._prom.labels(*label_values) if self._labels else self._prom).observe(value)
        self._otel.record(value, dict(zip(self._labels, label_values, strict=True)))

    def record_many(self, values: Iterable[float], *label_values: str) -> None:
        prom = None
        if self._prom is not None:
            prom = self._prom.labels(*label_values) if self._labels else self._prom
        attributes = dict(zip(self._labels, label_values, strict=True))
        for value in values:
            if prom is not None:
                prom.observe(value)
            self._otel.record(value, attributes)


Reading = Callable[[], Iterable[tuple[Sequence[str], float]]]


class DualGauge:
    """A gauge whose values are read when scraped or exported: those ``set`` plus what each watched
    ``reading`` yields as (label values, value) pairs."""

    def __init__(self, meter: metrics.Meter, registry: CollectorRegistry | None, name: str, doc: str,
                 labels: Sequence[str], unit: str = "1") -> None:
        self._labels = tuple(labels)
        self._readings: list[Reading] = []
        self._values: dict[tuple[str, ...], float] = {}
        self._prom = Gauge(name, doc, self._labels, registry=registry) if registry is not None else None
        if self._prom is not None:
            self._prom.collect = self._collect_prometheus(self._prom.collect)  # type: ignore[method-assign]
        meter.create_observable_gauge(_otel_name(name), callbacks=[self._observe], unit=unit, description=doc)

    def set(self, value: float, *label_values: str) -> None:
        self._values[tuple(label_values)] = value

    def watch(self, reading: Reading) -> None:
        """Read live values at each scrape/export (e.g. a queue depth, consumer lag)."""
        self._readings.append(reading)

    def _current(self) -> dict[tuple[str, ...], float]:
        values = dict(self._values)
        for reading in self._readings:
            for label_values, value in reading():
                values[tuple(label_values)] = value
        return values

    def _collect_prometheus(self, collect: Callable[[], list]) -> Callable[[], list]:
        def refreshed() -> list:
            assert self._prom is not None
            current = self._current()
            if self._labels:
                self._prom.clear()  # label sets no longer read (a revoked partition) disappear
            for label_values, value in current.items():
                (self._prom.labels(*label_values) if self._labels else self._prom).set(value)
            return collect()

        return refreshed

    def _observe(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, dict(zip(self._labels, labels, strict=True)))
                for labels, value in self._current().items()]
