"""Tracing from the standard ``OTEL_*`` variables; with no endpoint, spans are made but not exported.

An unreachable collector never blocks a request: spans leave through a bounded background
queue (``BatchSpanProcessor``) that drops when full.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter


@dataclass(frozen=True)
class Telemetry:
    tracer_provider: TracerProvider
    exporting: bool

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()


def _exporter(env: Mapping[str, str]) -> SpanExporter | None:
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint or env.get("OTEL_TRACES_EXPORTER", "otlp") == "none":
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected 'grpc' or 'http/protobuf'")
    # The exporter reads the endpoint, headers and timeout from the same environment itself.
    return OTLPSpanExporter()


def setup_telemetry(service_name: str, env: Mapping[str, str], *, set_global: bool = True) -> Telemetry:
    """Build the tracer provider. Only a process's ``main`` calls this with ``set_global``."""
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER
    exporter = _exporter(env)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return Telemetry(provider, exporting=exporter is not None)
