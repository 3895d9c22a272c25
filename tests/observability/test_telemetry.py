"""``setup_telemetry`` from OTEL_* variables, exporting to a real OTLP receiver over gRPC and HTTP."""

from __future__ import annotations

import socket
import time

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from observability.telemetry import TelemetryConfigError, resource_attributes, sampler, setup_telemetry
from tests.otlp_receiver import OtlpReceiver


@pytest.fixture
def receiver() -> OtlpReceiver:
    with OtlpReceiver() as r:
        yield r


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_resource_from_env() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod, team=ml%20platform,service.name=ignored",
           "OTEL_SERVICE_NAME": "svc"}
    attributes = resource_attributes(env, "default")
    assert attributes == {"deployment.environment": "prod", "team": "ml platform", "service.name": "svc"}
    assert resource_attributes({}, "default") == {"service.name": "default"}
    assert resource_attributes({"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, "d")["service.name"] == (
        "from-attrs")


def test_bad_resource_attributes_name_the_variable() -> None:
    with pytest.raises(TelemetryConfigError, match="OTEL_RESOURCE_ATTRIBUTES"):
        resource_attributes({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "x")


def test_samplers() -> None:
    assert sampler({}) is DEFAULT_ON
    assert sampler({"OTEL_TRACES_SAMPLER": "always_off"}) is ALWAYS_OFF
    assert sampler({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}) is DEFAULT_OFF
    ratio = sampler({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert isinstance(ratio, TraceIdRatioBased) and ratio.rate == 0.25
    assert isinstance(sampler({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}), ParentBasedTraceIdRatio)


@pytest.mark.parametrize("env", [
    {"OTEL_TRACES_SAMPLER": "sometimes"},
    {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
    {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
])
def test_bad_sampler_names_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(TelemetryConfigError, match="OTEL_TRACES_SAMPLER"):
        sampler(env)


def test_bad_protocol_names_the_variable() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
    with pytest.raises(TelemetryConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        setup_telemetry("x", env, set_global=False)


def test_no_endpoint_exports_nothing_but_still_makes_spans() -> None:
    telemetry = setup_telemetry("x", {}, set_global=False)
    assert not telemetry.exporting
    with telemetry.tracer("t").start_as_current_span("s") as span:
        assert span.get_span_context().is_valid  # context still flows to the next hop
    telemetry.meter("m").create_counter("c").add(1)  # a no-op meter accepts measurements
    telemetry.shutdown()


def test_traces_exporter_none_turns_tracing_export_off(receiver: OtlpReceiver) -> None:
    telemetry = setup_telemetry("x", {**receiver.env(), "OTEL_TRACES_EXPORTER": "none"}, set_global=False)
    with telemetry.tracer("t").start_as_current_span("s"):
        pass
    telemetry.tracer_provider.force_flush()
    telemetry.shutdown()
    assert receiver.spans(name="s") == []


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_spans_and_metrics_reach_the_collector(receiver: OtlpReceiver, protocol: str) -> None:
    env = {**receiver.env(protocol), "OTEL_SERVICE_NAME": "kzero-test",
           "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=ci"}
    telemetry = setup_telemetry("ignored", env, set_global=False)
    assert telemetry.exporting
    tracer = telemetry.tracer("t")
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child"):
        pass
    telemetry.meter("m").create_counter("kzero.test.count").add(3, {"k": "v"})
    telemetry.shutdown()
    spans = receiver.wait_for(lambda s: len(s) >= 2, timeout_s=10)
    by_name = {s.name: s for s in spans}
    assert by_name["child"].parent_span_id == by_name["parent"].span_id
    assert by_name["child"].trace_id == by_name["parent"].trace_id
    assert by_name["parent"].service == "kzero-test"
    assert by_name["parent"].resource["deployment.environment"] == "ci"
    assert "kzero.test.count" in receiver.metric_names("kzero-test")
    assert receiver.points("kzero.test.count")[0]["k"] == "v"


def test_ratio_sampler_zero_exports_no_spans(receiver: OtlpReceiver) -> None:
    env = {**receiver.env(), "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}
    telemetry = setup_telemetry("x", env, set_global=False)
    with telemetry.tracer("t").start_as_current_span("dropped") as span:
        assert not span.is_recording()
    telemetry.shutdown()
    assert receiver.spans(name="dropped") == []


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_down_never_blocks(protocol: str) -> None:
    port = _closed_port()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
           "OTEL_BSP_SCHEDULE_DELAY": "10"}
    telemetry = setup_telemetry("x", env, set_global=False)
    tracer = telemetry.tracer("t")
    started = time.perf_counter()
    for _ in range(2000):
        with tracer.start_as_current_span("s"):
            pass
    making = time.perf_counter() - started
    assert making < 2.0, f"making 2000 spans with the collector down took {making:.2f}s"
    started = time.perf_counter()
    telemetry.shutdown(timeout_s=1.0)
    assert time.perf_counter() - started < 1.5


def _traceparent() -> str:
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier["traceparent"]


def test_with_no_exporter_spans_carry_ids_and_the_sampling_decision_but_record_nothing() -> None:
    telemetry = setup_telemetry("x", {}, set_global=False)
    tracer = telemetry.tracer("t")
    with tracer.start_as_current_span("parent") as parent, tracer.start_as_current_span("child") as child:
        assert not parent.is_recording() and not child.is_recording()
        p, c = parent.get_span_context(), child.get_span_context()
        assert p.is_valid and c.is_valid and c.trace_id == p.trace_id and c.span_id != p.span_id
        assert c.trace_flags.sampled  # parent-based always-on: downstream hops go on sampling
        assert _traceparent() == f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}"
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    caller = set_span_in_context(NonRecordingSpan(remote))
    with tracer.start_as_current_span("in a caller's trace", context=caller) as s:
        assert s.get_span_context().trace_id == 0xABC and not s.get_span_context().trace_flags.sampled
    off = setup_telemetry("x", {"OTEL_TRACES_SAMPLER": "always_off"}, set_global=False).tracer("t")
    assert not off.start_span("dropped").get_span_context().trace_flags.sampled
    telemetry.shutdown()


def test_a_processor_added_later_makes_the_tracers_handed_out_record() -> None:
    telemetry = setup_telemetry("x", {}, set_global=False)
    tracer = telemetry.tracer("t")
    spans = InMemorySpanExporter()
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    with tracer.start_as_current_span("parent"), tracer.start_as_current_span("child", attributes={"k": "v"}):
        pass
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["child"].parent.span_id == by_name["parent"].context.span_id
    assert by_name["child"].attributes["k"] == "v"
