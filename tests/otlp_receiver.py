"""A real OTLP receiver for tests: gRPC and plain HTTP (protobuf) endpoints on free local ports.

Child processes are pointed at it with ``receiver.env()`` (or ``env("http/protobuf")``); tests then
``wait_for`` the spans they expect and assert on decoded ``Span`` values. Metrics are kept only as
far as needed to assert that a named metric arrived from a service with some attributes.

    with OtlpReceiver() as receiver:
        proc = subprocess.Popen(cmd, env={**os.environ, **receiver.env()})
        spans = receiver.wait_for(lambda spans: any(s.name == "predict" for s in spans))
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple

import grpc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class Span:
    """One received span, decoded to plain Python values (ids as lowercase hex)."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str  # "SERVER", "CLIENT", "PRODUCER", "CONSUMER", "INTERNAL" or "UNSPECIFIED"
    attributes: dict[str, object] = field(hash=False)  # arrays decode to tuples, as the SDK stores them
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id)
    service: str
    resource: dict[str, object] = field(hash=False)
    status_code: str  # "UNSET", "OK" or "ERROR"
    start_ns: int
    end_ns: int
    events: tuple[str, ...]


class Metric(NamedTuple):
    """One metric from one export: its data points' attribute dicts and its data kind."""

    service: str
    name: str
    points: tuple[dict[str, object], ...]
    kind: str  # "sum", "gauge", "histogram", "exponential_histogram" or "summary"


def _value(value: AnyValue) -> object:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, object]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _span(span: trace_pb2.Span, service: str, resource: dict[str, object]) -> Span:
    return Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=span.name,
        kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        attributes=_attributes(span.attributes),
        links=tuple((link.trace_id.hex(), link.span_id.hex()) for link in span.links),
        service=service,
        resource=resource,
        status_code=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        events=tuple(event.name for event in span.events),
    )


def tree(spans: Sequence[Span]) -> str:
    """Render spans per trace, children indented under their parent, for failure messages."""
    by_id = {span.span_id: span for span in spans}
    children: dict[str | None, list[Span]] = {}
    for span in spans:
        parent = span.parent_span_id if span.parent_span_id in by_id else None
        children.setdefault(parent, []).append(span)
    lines: list[str] = []

    def render(span: Span, depth: int) -> None:
        links = f" links={[span_id for _, span_id in span.links]}" if span.links else ""
        lines.append(f"{'  ' * depth}{span.name} [{span.service}] {span.kind} {span.status_code} "
                     f"span={span.span_id}{links}")
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start_ns):
            render(child, depth + 1)

    roots = sorted(children.get(None, []), key=lambda s: (s.trace_id, s.start_ns))
    for index, root in enumerate(roots):
        if index == 0 or roots[index - 1].trace_id != root.trace_id:
            lines.append(f"trace {root.trace_id}")
        render(root, 1)
    return "\n".join(lines)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._add_traces(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, context: grpc.ServicerContext
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self._receiver._add_metrics(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: OtlpReceiver) -> None:
        super().__init__(("127.0.0.1", 0), _HttpHandler)
        self.receiver = receiver


class _HttpHandler(BaseHTTPRequestHandler):
    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path not in ("/v1/traces", "/v1/metrics"):
            self._reply(HTTPStatus.NOT_FOUND)
            return
        if self.headers.get_content_type() != "application/x-protobuf":
            self._reply(HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return
        try:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                self.server.receiver._add_traces(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
                response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            else:
                self.server.receiver._add_metrics(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
                response = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
        except (DecodeError, OSError):  # gzip.BadGzipFile is an OSError
            self._reply(HTTPStatus.BAD_REQUEST)
            return
        self._reply(HTTPStatus.OK, response)

    def _reply(self, status: HTTPStatus, body: bytes = b"") -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: exporters post every 100 ms and test output should stay readable."""


class OtlpReceiver:
    """Collects OTLP traces and metrics over gRPC and (optionally) HTTP/protobuf; thread-safe."""

    def __init__(self, *, http: bool = True) -> None:
        self._serve_http = http
        self._changed = threading.Condition()
        self._spans: list[Span] = []
        self._metrics: list[Metric] = []
        self._export_calls = 0
        self._grpc_server: grpc.Server | None = None
        self._grpc_port: int | None = None
        self._http_server: _HttpServer | None = None
        self._http_thread: threading.Thread | None = None

    def start(self) -> OtlpReceiver:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="otlp-grpc"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsService(self), server)
        self._grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc_server = server
        if self._serve_http:
            self._http_server = _HttpServer(self)
            # A short poll interval keeps shutdown() quick (it waits for the loop's next poll).
            self._http_thread = threading.Thread(
                target=self._http_server.serve_forever, args=(0.05,), name="otlp-http", daemon=True
            )
            self._http_thread.start()
        return self

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait()
            self._grpc_server = None
        if self._http_server is not None and self._http_thread is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_thread.join()
            self._http_server = self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def grpc_endpoint(self) -> str:
        if self._grpc_server is None:
            raise RuntimeError("OtlpReceiver is not started")
        return f"http://127.0.0.1:{self._grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """Base URL; exporters append /v1/traces or /v1/metrics."""
        if self._http_server is None:
            raise RuntimeError("OtlpReceiver HTTP endpoint is not running (not started, or http=False)")
        return f"http://127.0.0.1:{self._http_server.server_address[1]}"

    @property
    def export_calls(self) -> int:
        """Export requests received so far (traces and metrics, both transports)."""
        with self._changed:
            return self._export_calls

    def env(self, protocol: str = "grpc") -> dict[str, str]:
        """Environment a child process needs to export here promptly over ``protocol``."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        }

    def spans(self, *, name: str | None = None, service: str | None = None, trace_id: str | None = None) -> list[Span]:
        """Received spans so far (a copy), optionally only those matching every given field."""
        with self._changed:
            spans = list(self._spans)
        return [
            span for span in spans
            if (name is None or span.name == name)
            and (service is None or span.service == service)
            and (trace_id is None or span.trace_id == trace_id)
        ]

    def trace(self, trace_id: str) -> list[Span]:
        return self.spans(trace_id=trace_id)

    def metrics(self) -> list[Metric]:
        with self._changed:
            return list(self._metrics)

    def metric_names(self, service: str | None = None) -> set[str]:
        return {metric.name for metric in self.metrics() if service is None or metric.service == service}

    def points(self, name: str, service: str | None = None) -> list[dict[str, object]]:
        """Attribute dicts of every data point received for metric ``name``."""
        return [
            point for metric in self.metrics()
            if metric.name == name and (service is None or metric.service == service)
            for point in metric.points
        ]

    def clear(self) -> None:
        with self._changed:
            self._spans.clear()
            self._metrics.clear()
            self._export_calls = 0

    def wait_for(
        self, predicate: Callable[[list[Span]], bool], timeout_s: float = 30, interval_s: float = 0.1
    ) -> list[Span]:
        """Spans received so far, once ``predicate`` holds for them; AssertionError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if predicate(spans):
                return spans
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"spans did not satisfy the predicate within {timeout_s}s\n{self.summary()}")
            with self._changed:  # woken early by an export; interval_s bounds the wait anyway
                self._changed.wait(min(interval_s, remaining))

    def summary(self) -> str:
        spans = self.spans()
        counts = Counter((span.service, span.name) for span in spans)
        lines = [f"{len(spans)} spans from {self.export_calls} export calls"]
        for (service, name), count in sorted(counts.items()):
            lines.append(f"  {service or '<no service>'}: {name} x{count}")
        return "\n".join(lines)

    def _add_traces(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        spans = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                spans += [_span(span, service, resource) for span in scope_spans.spans]
        with self._changed:
            self._spans += spans
            self._export_calls += 1
            self._changed.notify_all()

    def _add_metrics(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> None:
        metrics = []
        for resource_metrics in request.resource_metrics:
            service = str(_attributes(resource_metrics.resource.attributes).get("service.name", ""))
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data") or ""
                    points = getattr(metric, kind).data_points if kind else []
                    metrics.append(Metric(service, metric.name, tuple(_attributes(p.attributes) for p in points), kind))
        with self._changed:
            self._metrics += metrics
            self._export_calls += 1
            self._changed.notify_all()
