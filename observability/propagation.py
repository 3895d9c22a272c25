"""W3C trace context (``traceparent``, ``tracestate``, ``baggage``) in and out of every carrier we use:
HTTP headers and gRPC metadata (str -> str), Kafka record headers ((str, bytes) pairs) and the
CloudEvents distributed-tracing extension (``traceparent``/``tracestate`` attributes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from opentelemetry import propagate
from opentelemetry.context import Context

TRACE_HEADERS = ("traceparent", "tracestate", "baggage")
CLOUDEVENT_TRACE_ATTRIBUTES = ("traceparent", "tracestate")


def inject(context: Context | None = None) -> dict[str, str]:
    """The trace headers for ``context`` (default: the current one); empty when there is no span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract(headers: Mapping[str, str] | None) -> Context:
    """A context from HTTP headers or gRPC metadata, whatever their case; empty when none is carried."""
    if not headers:
        return Context()
    lower = {k.lower(): v for k, v in headers.items() if k.lower() in TRACE_HEADERS}
    return propagate.extract(lower, context=Context())


def kafka_headers(context: Context | None = None) -> list[tuple[str, bytes]]:
    """Per-hop Kafka headers for ``context`` (default: the current one)."""
    return [(name, value.encode()) for name, value in inject(context).items()]


def from_kafka_headers(headers: Iterable[tuple[str, bytes | None]]) -> Context:
    text = {}
    for name, value in headers:
        if name.lower() in TRACE_HEADERS and value is not None:
            text[name.lower()] = value.decode("utf-8", "replace")
    return extract(text)


def cloudevent_attributes(context: Context | None = None) -> dict[str, str]:
    """The CloudEvents distributed-tracing extension attributes for ``context``."""
    return {k: v for k, v in inject(context).items() if k in CLOUDEVENT_TRACE_ATTRIBUTES}
