"""Propagation helpers, dual (OTel + Prometheus) instruments and trace-correlated logs."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, generate_latest

from observability import propagation
from observability.logs import JsonFormatter, LogConfig, TraceContextFilter, correlate
from observability.metrics import DualCounter, DualGauge, DualHistogram

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def tracer() -> trace.Tracer:
    return TracerProvider().get_tracer("test")


def test_extract_is_case_insensitive_and_ignores_other_headers() -> None:
    context = propagation.extract({"TraceParent": TRACEPARENT, "Authorization": "secret"})
    span_context = trace.get_current_span(context).get_span_context()
    assert format(span_context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert format(span_context.span_id, "016x") == "b7ad6b7169203331"
    assert not trace.get_current_span(propagation.extract(None)).get_span_context().is_valid
    assert not trace.get_current_span(propagation.extract({"traceparent": "garbage"})).get_span_context().is_valid


def test_inject_round_trips_through_every_carrier(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("s") as span:
        expected = span.get_span_context()
        headers = propagation.inject()
        kafka = propagation.kafka_headers()
        attributes = propagation.cloudevent_attributes()
    assert propagation.inject() == {}  # no span, nothing to carry
    for context in (propagation.extract(headers), propagation.from_kafka_headers(kafka),
                    propagation.extract(attributes)):
        got = trace.get_current_span(context).get_span_context()
        assert (got.trace_id, got.span_id) == (expected.trace_id, expected.span_id)
    assert all(isinstance(v, bytes) for _, v in kafka)
    assert set(attributes) <= {"traceparent", "tracestate"}


def test_from_kafka_headers_skips_empty_values() -> None:
    context = propagation.from_kafka_headers([("traceparent", None), ("other", b"x")])
    assert not trace.get_current_span(context).get_span_context().is_valid


def _otel_points(reader: InMemoryMetricReader) -> dict[str, list]:
    data = reader.get_metrics_data()
    return {m.name: list(m.data.data_points)
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def test_dual_instruments_record_to_both_sides() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    registry = CollectorRegistry()
    dlq = DualCounter(meter, registry, "kzero_dlq_events_total", "dead letters", ["code"])
    batch = DualHistogram(meter, registry, "kzero_batch_size", "batch", ["model"], [1, 2, 4])
    lag = DualGauge(meter, registry, "kzero_consumer_lag", "lag", ["topic", "partition"])
    lag_now = {("requests", "0"): 7.0}
    lag.watch(lambda: lag_now.items())
    dlq.add(2, "rejected")
    batch.record_many([1, 3, 3], "m")
    text = generate_latest(registry).decode()
    assert 'kzero_dlq_events_total{code="rejected"} 2.0' in text
    assert 'kzero_batch_size_count{model="m"} 3.0' in text
    assert 'kzero_consumer_lag{partition="0",topic="requests"} 7.0' in text
    lag_now[("requests", "0")] = 3.0
    lag_now[("requests", "1")] = 1.0
    assert 'kzero_consumer_lag{partition="0",topic="requests"} 3.0' in generate_latest(registry).decode()
    del lag_now[("requests", "1")]  # revoked: the label set goes away
    assert 'partition="1"' not in generate_latest(registry).decode()
    points = _otel_points(reader)
    assert points["kzero.dlq.events"][0].value == 2
    assert dict(points["kzero.dlq.events"][0].attributes) == {"code": "rejected"}
    assert points["kzero.batch.size"][0].count == 3
    assert points["kzero.consumer.lag"][0].value == 3.0
    assert dict(points["kzero.consumer.lag"][0].attributes) == {"topic": "requests", "partition": "0"}


def test_instruments_without_prometheus() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    counter = DualCounter(meter, None, "kzero_retries_total", "retries", [])
    counter.add()
    counter.add()
    assert _otel_points(reader)["kzero.retries"][0].value == 2


def _log_line(config: LogConfig, tracer: trace.Tracer | None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    correlate(handler, config)
    logger = logging.getLogger(f"kzero.test.{config.format}.{tracer is not None}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if tracer is None:
        logger.info("no span here")
    else:
        with tracer.start_as_current_span("s"):
            logger.info("job %s done", "j1", extra={"job_id": "j1"})
    logger.removeHandler(handler)
    return stream.getvalue().strip()


def test_json_logs_carry_the_trace(tracer: trace.Tracer) -> None:
    line = json.loads(_log_line(LogConfig("json"), tracer))
    assert line["message"] == "job j1 done"
    assert line["job_id"] == "j1"
    assert len(line["trace_id"]) == 32 and len(line["span_id"]) == 16
    assert "trace_id" not in json.loads(_log_line(LogConfig("json"), None))


def test_text_logs_carry_the_trace(tracer: trace.Tracer) -> None:
    assert "trace_id=" in _log_line(LogConfig("text"), tracer)
    assert _log_line(LogConfig("text"), None).endswith("no span here")


def test_json_formatter_keeps_exceptions() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    TraceContextFilter().filter(record)
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exception"]


@pytest.mark.parametrize("env,variable", [({"KZERO_LOG_FORMAT": "xml"}, "KZERO_LOG_FORMAT"),
                                          ({"KZERO_LOG_LEVEL": "LOUD"}, "KZERO_LOG_LEVEL")])
def test_bad_log_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ValueError, match=variable):
        LogConfig.from_env(env)
    assert LogConfig.from_env({"KZERO_LOG_FORMAT": "JSON", "KZERO_LOG_LEVEL": "debug"}) == LogConfig("json", "DEBUG")
