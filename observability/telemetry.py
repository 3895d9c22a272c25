"""Tracing and metrics from the standard ``OTEL_*`` variables.

- ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` make the resource;
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the ``_TRACES_``/``_METRICS_`` variants) turns exporting on,
  over ``OTEL_EXPORTER_OTLP_PROTOCOL`` ``grpc`` (default) or ``http/protobuf``;
- ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` pick the sampler (default parent-based always-on);
- ``OTEL_TRACES_EXPORTER``/``OTEL_METRICS_EXPORTER`` ``none`` turn one signal off.

With no endpoint, spans still have ids (so trace context flows on to the next hop, with the sampling
decision, and logs carry trace ids) but are not recorded (``observability.unexported``), and metrics
go to a no-op meter. An unreachable collector never blocks a request: spans leave through a bounded
background queue (``BatchSpanProcessor``) that drops when full, and shutdown waits a bounded time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from opentelemetry import metrics, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_OFF,
    DEFAULT_ON,
    ParentBasedTraceIdRatio,
    Sampler,
    TraceIdRatioBased,
)

from observability.unexported import UnexportedTracerProvider

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http/protobuf")
_SHUTDOWN_S = 3.0


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable has a value we cannot use; the message names it."""


@dataclass(frozen=True)
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: metrics.MeterProvider
    exporting: bool

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider.get_tracer(name)

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def shutdown(self, timeout_s: float = _SHUTDOWN_S) -> None:
        """Flush what is queued, waiting at most ``timeout_s`` (a collector that is down must not
        hold a stopping process)."""
        def run() -> None:
            self.tracer_provider.shutdown()
            shutdown = getattr(self.meter_provider, "shutdown", None)
            if shutdown is not None:
                shutdown(timeout_millis=timeout_s * 1000)

        worker = threading.Thread(target=run, name="kzero-telemetry-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            log.warning("telemetry did not flush within %.1fs; dropping what is left", timeout_s)


def resource_attributes(env: Mapping[str, str], service_name: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,k2=v2``, percent-encoded values) plus the service name."""
    attributes: dict[str, str] = {}
    for pair in (env.get("OTEL_RESOURCE_ATTRIBUTES") or "").split(","):
        if not pair.strip():
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise TelemetryConfigError(f"OTEL_RESOURCE_ATTRIBUTES: {pair.strip()!r} is not key=value")
        attributes[key.strip()] = unquote(value.strip())
    attributes[SERVICE_NAME] = env.get("OTEL_SERVICE_NAME") or attributes.get(SERVICE_NAME) or service_name
    return attributes


def sampler(env: Mapping[str, str]) -> Sampler:
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    fixed = {"always_on": ALWAYS_ON, "always_off": ALWAYS_OFF, "parentbased_always_on": DEFAULT_ON,
             "parentbased_always_off": DEFAULT_OFF}
    if name in fixed:
        return fixed[name]
    if name in ("traceidratio", "parentbased_traceidratio"):
        raw = env.get("OTEL_TRACES_SAMPLER_ARG") or "1.0"
        try:
            ratio = float(raw)
        except ValueError:
            raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a number in [0, 1]") from None
        if not 0.0 <= ratio <= 1.0:
            raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: expected a number in [0, 1]")
        return TraceIdRatioBased(ratio) if name == "traceidratio" else ParentBasedTraceIdRatio(ratio)
    known = ", ".join([*fixed, "traceidratio", "parentbased_traceidratio"])
    raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER={name!r}: expected one of {known}")


def _signal_setting(env: Mapping[str, str], signal: str, setting: str) -> str | None:
    return env.get(f"OTEL_EXPORTER_OTLP_{signal}_{setting}") or env.get(f"OTEL_EXPORTER_OTLP_{setting}")


def _protocol(env: Mapping[str, str], signal: str) -> str:
    protocol = _signal_setting(env, signal, "PROTOCOL") or "grpc"
    if protocol not in PROTOCOLS:
        raise TelemetryConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: expected 'grpc' or 'http/protobuf'")
    return protocol


def _endpoint(env: Mapping[str, str], signal: str, protocol: str) -> str | None:
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not base:
        return None
    if protocol == "grpc":
        return base
    return f"{base.rstrip('/')}/v1/{signal.lower()}"


def _timeout_s(env: Mapping[str, str], signal: str) -> float:
    raw = _signal_setting(env, signal, "TIMEOUT") or "10000"  # the spec gives milliseconds
    try:
        return float(raw) / 1000
    except ValueError:
        raise TelemetryConfigError(f"OTEL_EXPORTER_OTLP_TIMEOUT={raw!r}: expected milliseconds") from None


def _insecure(env: Mapping[str, str], signal: str, endpoint: str) -> bool:
    flag = _signal_setting(env, signal, "INSECURE")
    if flag is not None:
        return flag.strip().lower() == "true"
    return endpoint.startswith("http://")


@dataclass(frozen=True)
class _Target:
    """Where and how one signal (``TRACES`` or ``METRICS``) is exported."""

    protocol: str
    endpoint: str
    timeout_s: float
    insecure: bool


def _target(env: Mapping[str, str], signal: str) -> _Target | None:
    """The signal's OTLP target; None when its exporter is ``none`` or no endpoint is set."""
    if (env.get(f"OTEL_{signal}_EXPORTER") or "otlp").strip().lower() == "none":
        return None
    protocol = _protocol(env, signal)
    endpoint = _endpoint(env, signal, protocol)
    if endpoint is None:
        return None
    return _Target(protocol, endpoint, _timeout_s(env, signal), _insecure(env, signal, endpoint))


def span_exporter(env: Mapping[str, str]) -> SpanExporter | None:
    target = _target(env, "TRACES")
    if target is None:
        return None
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter(endpoint=target.endpoint, insecure=target.insecure, timeout=target.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter(endpoint=target.endpoint, timeout=target.timeout_s)


def _meter_provider(env: Mapping[str, str], resource: Resource) -> metrics.MeterProvider | None:
    target = _target(env, "METRICS")
    if target is None:
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader

    exporter: MetricExporter
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        exporter = GrpcMetricExporter(endpoint=target.endpoint, insecure=target.insecure, timeout=target.timeout_s)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

        exporter = HttpMetricExporter(endpoint=target.endpoint, timeout=target.timeout_s)
    raw = env.get("OTEL_METRIC_EXPORT_INTERVAL") or "60000"
    try:
        interval_ms = float(raw)
    except ValueError:
        raise TelemetryConfigError(f"OTEL_METRIC_EXPORT_INTERVAL={raw!r}: expected milliseconds") from None
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms,
                                           export_timeout_millis=target.timeout_s * 1000)
    return MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)


def setup_telemetry(service_name: str, env: Mapping[str, str], *, set_global: bool = True) -> Telemetry:
    """Build the tracer and meter providers. Only a process's ``main`` calls this with ``set_global``.

    Raises ``TelemetryConfigError`` naming the variable when a setting is unusable.
    """
    resource = Resource.create(resource_attributes(env, service_name))
    # No atexit shutdown: it would wait out the exporter's retries on a down collector after our
    # bounded ``Telemetry.shutdown`` gave up (every main calls that one).
    exporter = span_exporter(env)
    kind = TracerProvider if exporter is not None else UnexportedTracerProvider
    provider = kind(resource=resource, sampler=sampler(env), shutdown_on_exit=False)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = _meter_provider(env, resource)
    exporting = exporter is not None or meter_provider is not None
    telemetry = Telemetry(provider, meter_provider or metrics.NoOpMeterProvider(), exporting)
    if set_global:
        trace.set_tracer_provider(provider)
        if meter_provider is not None:
            metrics.set_meter_provider(meter_provider)
    return telemetry
