"""PredictorMetrics: one call records to Prometheus (names and labels unchanged) and to OpenTelemetry."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from predictors.metrics import PredictorMetrics


@pytest.fixture
def otel() -> Iterator[tuple[Meter, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider.get_meter("test"), reader
    provider.shutdown()


def otel_points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    points: dict[str, list] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
    return points


def test_every_measurement_reaches_prometheus_and_otel(otel: tuple[Meter, InMemoryMetricReader]) -> None:
    meter, reader = otel
    registry = CollectorRegistry()
    metrics = PredictorMetrics(registry, meter)
    depth = [3]

    metrics.request("/v1/models/{model_name}:predict", "POST", 200, 0.02)
    metrics.request("/v1/models/{model_name}:predict", "POST", 503, 0.001)
    metrics.observe_batch("m", 4, [0.001, 0.002, 0.003, 0.004])
    metrics.generated("m", 40, 2.0)
    metrics.generated("m", 0, 1.0)  # an embedding batch: nothing to count
    metrics.watch_queue("m", lambda: depth[0])
    metrics.model_ready("m", True)
    metrics.cold_start("load", 1.5)
    metrics.retried("smol")
    metrics.retried("smol")

    get = registry.get_sample_value
    route = {"route": "/v1/models/{model_name}:predict", "method": "POST"}
    assert get("kzero_requests_total", {**route, "code": "200"}) == 1
    assert get("kzero_requests_total", {**route, "code": "503"}) == 1
    assert get("kzero_request_duration_seconds_count", route) == 2
    assert get("kzero_batch_size_count", {"model": "m"}) == 1 and get("kzero_batch_size_sum", {"model": "m"}) == 4
    assert get("kzero_batch_size_bucket", {"model": "m", "le": "4.0"}) == 1
    assert get("kzero_queue_wait_seconds_count", {"model": "m"}) == 4
    assert get("kzero_generated_tokens_total", {"model": "m"}) == 40
    assert get("kzero_generation_tokens_per_second_sum", {"model": "m"}) == 20
    assert get("kzero_generation_tokens_per_second_count", {"model": "m"}) == 1
    assert get("kzero_queue_depth", {"model": "m"}) == 3
    depth[0] = 7
    assert get("kzero_queue_depth", {"model": "m"}) == 7  # read live at each scrape
    assert get("kzero_model_ready", {"model": "m"}) == 1
    assert get("kzero_cold_start_seconds", {"phase": "load"}) == 1.5
    assert get("kzero_client_retries_total", {"model": "smol"}) == 2

    points = otel_points(reader)
    assert {"kzero.requests", "kzero.request.duration", "kzero.batch.size", "kzero.queue.wait",
            "kzero.generated.tokens", "kzero.generation.tokens.per.second", "kzero.queue.depth",
            "kzero.model.ready", "kzero.cold.start", "kzero.client.retries"} <= set(points)
    assert sorted(p.attributes["code"] for p in points["kzero.requests"]) == ["200", "503"]
    [retries] = points["kzero.client.retries"]
    assert retries.value == 2 and dict(retries.attributes) == {"model": "smol"}
    [depth_point] = points["kzero.queue.depth"]
    assert depth_point.value == 7


def test_without_a_meter_only_prometheus_records() -> None:
    registry = CollectorRegistry()
    metrics = PredictorMetrics(registry)
    metrics.request("/openai/v1/chat/completions", "POST", 200, 0.5)
    assert registry.get_sample_value(
        "kzero_requests_total", {"route": "/openai/v1/chat/completions", "method": "POST", "code": "200"}) == 1
