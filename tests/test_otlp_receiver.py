"""The OTLP test receiver against the real OTel SDK exporters, over gRPC and HTTP/protobuf."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, StatusCode

from tests.otlp_receiver import OtlpReceiver, Span, tree

PROTOCOLS = ["grpc", "http/protobuf"]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def span_exporter(receiver: OtlpReceiver, protocol: str) -> SpanExporter:
    if protocol == "grpc":
        return GrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True)
    return HttpSpanExporter(endpoint=receiver.http_endpoint + "/v1/traces")


def metric_exporter(receiver: OtlpReceiver, protocol: str) -> MetricExporter:
    if protocol == "grpc":
        return GrpcMetricExporter(endpoint=receiver.grpc_endpoint, insecure=True)
    return HttpMetricExporter(endpoint=receiver.http_endpoint + "/v1/metrics")


def emit_spans(exporter: SpanExporter, service: str) -> dict[str, str]:
    """Parent SERVER span with a CLIENT child, then a linked PRODUCER span; returns their span ids."""
    provider = TracerProvider(resource=Resource.create({"service.name": service, "deployment.environment": "test"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("kzero.test")
    try:
        with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
            with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
                child.add_event("sent")
        attributes = {"s": "text", "i": 7, "f": 0.5, "b": True, "strs": ["a", "b"], "ints": [1, 2]}
        with tracer.start_as_current_span(
            "linked", kind=SpanKind.PRODUCER, links=[Link(parent.get_span_context())], attributes=attributes
        ) as linked:
            linked.set_status(StatusCode.ERROR)
        assert provider.force_flush(timeout_millis=5000)
    finally:
        provider.shutdown()
    return {
        "trace": format(parent.get_span_context().trace_id, "032x"),
        "parent": format(parent.get_span_context().span_id, "016x"),
        "child": format(child.get_span_context().span_id, "016x"),
        "linked_trace": format(linked.get_span_context().trace_id, "032x"),
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_spans_arrive_decoded(receiver: OtlpReceiver, protocol: str) -> None:
    ids = emit_spans(span_exporter(receiver, protocol), service=f"svc-{protocol}")

    # force_flush returned only after the export call was answered, so no waiting is needed.
    spans = {span.name: span for span in receiver.spans()}
    assert sorted(spans) == ["child", "linked", "parent"], tree(receiver.spans())
    parent, child, linked = spans["parent"], spans["child"], spans["linked"]
    assert (parent.trace_id, parent.span_id, parent.parent_span_id) == (ids["trace"], ids["parent"], None)
    assert (child.trace_id, child.span_id, child.parent_span_id) == (ids["trace"], ids["child"], ids["parent"])
    assert (parent.kind, child.kind, linked.kind) == ("SERVER", "CLIENT", "PRODUCER")
    assert linked.trace_id == ids["linked_trace"] != ids["trace"]
    assert linked.links == ((ids["trace"], ids["parent"]),)
    assert linked.attributes == {"s": "text", "i": 7, "f": 0.5, "b": True, "strs": ("a", "b"), "ints": (1, 2)}
    assert (parent.status_code, linked.status_code) == ("UNSET", "ERROR")
    assert child.events == ("sent",)
    assert parent.start_ns <= child.start_ns <= child.end_ns <= parent.end_ns
    assert {span.service for span in spans.values()} == {f"svc-{protocol}"}
    assert parent.resource["deployment.environment"] == "test"
    assert receiver.trace(ids["trace"]) == [child, parent]  # export order: child ended first
    assert receiver.spans(name="child", service=f"svc-{protocol}") == [child]
    assert receiver.spans(service="other") == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_metrics_arrive(receiver: OtlpReceiver, protocol: str) -> None:
    service = f"metrics-{protocol}"
    reader = PeriodicExportingMetricReader(metric_exporter(receiver, protocol), export_interval_millis=60_000)
    provider = MeterProvider(resource=Resource.create({"service.name": service}), metric_readers=[reader])
    meter = provider.get_meter("kzero.test")
    try:
        meter.create_counter("kzero.requests").add(3, {"route": "/predict", "code": 200})
        meter.create_histogram("kzero.latency", unit="s").record(0.25, {"route": "/predict"})
        assert provider.force_flush(timeout_millis=5000)
    finally:
        provider.shutdown()

    assert receiver.metric_names(service) == {"kzero.requests", "kzero.latency"}
    assert receiver.metric_names("other") == set()
    assert {"route": "/predict", "code": 200} in receiver.points("kzero.requests")
    assert {"route": "/predict"} in receiver.points("kzero.latency", service=service)
    kinds = {metric.name: metric.kind for metric in receiver.metrics()}
    assert kinds == {"kzero.requests": "sum", "kzero.latency": "histogram"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_env_points_default_exporters_here(
    receiver: OtlpReceiver, protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = receiver.env(protocol)
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == protocol
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Exporters built without arguments read the endpoint (and insecure flag) from the environment.
    exporter = GrpcSpanExporter() if protocol == "grpc" else HttpSpanExporter()
    ids = emit_spans(exporter, service="from-env")

    spans = receiver.wait_for(lambda spans: len(spans) == 3, timeout_s=5)
    assert {span.trace_id for span in spans} == {ids["trace"], ids["linked_trace"]}
    assert receiver.export_calls >= 1


def test_env_rejects_unknown_protocol(receiver: OtlpReceiver) -> None:
    with pytest.raises(ValueError, match="'http/json'"):
        receiver.env("http/json")


def test_wait_for_times_out_with_summary(receiver: OtlpReceiver) -> None:
    emit_spans(span_exporter(receiver, "grpc"), service="summary-svc")

    with pytest.raises(AssertionError) as failure:
        receiver.wait_for(lambda spans: any(span.name == "missing" for span in spans), timeout_s=0.3)
    message = str(failure.value)
    assert "3 spans from 1 export calls" in message
    assert "summary-svc: child x1" in message


def test_clear_forgets_everything(receiver: OtlpReceiver) -> None:
    emit_spans(span_exporter(receiver, "grpc"), service="clear-svc")
    assert receiver.spans() and receiver.export_calls == 1

    receiver.clear()
    assert (receiver.spans(), receiver.metrics(), receiver.export_calls) == ([], [], 0)


def post(url: str, body: bytes, content_type: str = "application/x-protobuf") -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        error.close()
        return error.code


def test_http_rejects_bad_requests(receiver: OtlpReceiver) -> None:
    assert post(receiver.http_endpoint + "/v1/traces", b"") == 200  # empty message is valid protobuf
    assert post(receiver.http_endpoint + "/v1/logs", b"") == 404
    assert post(receiver.http_endpoint + "/v1/traces", b"{}", "application/json") == 415
    assert post(receiver.http_endpoint + "/v1/traces", b"\xff\xff\xff") == 400
    assert receiver.export_calls == 1


def test_endpoints_need_a_started_receiver() -> None:
    receiver = OtlpReceiver(http=False)
    with pytest.raises(RuntimeError, match="not started"):
        receiver.grpc_endpoint  # noqa: B018
    with receiver:
        assert receiver.grpc_endpoint.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="http=False"):
            receiver.http_endpoint  # noqa: B018


def span(name: str, span_id: str, parent: str | None, start_ns: int) -> Span:
    return Span(
        trace_id="a" * 32, span_id=span_id, parent_span_id=parent, name=name, kind="INTERNAL", attributes={},
        links=(), service="svc", resource={}, status_code="UNSET", start_ns=start_ns, end_ns=start_ns + 1, events=(),
    )


def test_tree_indents_children_under_parents() -> None:
    spans = [
        span("second-child", "3" * 16, "1" * 16, 3),
        span("root", "1" * 16, None, 1),
        span("first-child", "2" * 16, "1" * 16, 2),
        span("orphan", "4" * 16, "9" * 16, 4),  # parent not received: shown as a root
    ]
    lines = tree(spans).splitlines()
    assert lines[0] == f"trace {'a' * 32}"
    assert [line.split(" [")[0] for line in lines[1:]] == ["  root", "    first-child", "    second-child", "  orphan"]
