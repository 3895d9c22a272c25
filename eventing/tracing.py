"""Trace context across Kafka hops: producer and consumer spans, and where their context travels.

Following the CloudEvents distributed-tracing extension, a produced event carries its producer span's
context twice: in the event's ``traceparent``/``tracestate`` attributes (inside the JSON in structured
mode, ``ce_traceparent`` headers in binary mode) and in a per-hop ``traceparent`` record header, which a
consumer prefers. Only ids, names, sizes and offsets become span attributes, never event data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

from events.event import TRACE_CONTEXT, Event
from events.kafka_binding import KafkaRecord, Mode, to_record
from observability import propagation
from observability import semconv as sc

KAFKA = "kafka"


def _valid(context: Context) -> bool:
    return trace.get_current_span(context).get_span_context().is_valid


def event_context(event: Event) -> Context:
    """The context an event's ``traceparent``/``tracestate`` attributes carry (empty when none)."""
    return propagation.extract({name: value for name in TRACE_CONTEXT if (value := event.get(name))})


def record_context(record: KafkaRecord, event: Event | None) -> Context:
    """The parent for processing a consumed record: its per-hop header, else the event's own context
    (for a record that is not a readable event, its ``ce_traceparent`` header)."""
    context = propagation.from_kafka_headers(record.headers)
    if _valid(context):
        return context
    if event is not None:
        return event_context(event)
    return propagation.extract({
        name: value.decode("utf-8", "replace") for name in TRACE_CONTEXT if (value := record.header(f"ce_{name}"))
    })


def _event_attributes(event: Event) -> dict[str, Any]:
    attributes = {sc.MESSAGING_MESSAGE_ID: event.id, sc.KZERO_REQUEST_ID: event.get("requestid") or event.id}
    if jobid := event.get("jobid"):
        attributes[sc.KZERO_JOB_ID] = jobid
    return attributes


def start_send_span(tracer: trace.Tracer, topic: str, event: Event, parent: Context | None = None) -> Span:
    """A PRODUCER span for sending ``event`` to ``topic`` (parent: ``parent``, else the current context)."""
    attributes = {sc.MESSAGING_SYSTEM: KAFKA, sc.MESSAGING_OPERATION_TYPE: "send",
                  sc.MESSAGING_OPERATION_NAME: "send", sc.MESSAGING_DESTINATION: topic, **_event_attributes(event)}
    return tracer.start_span(f"send {topic}", context=parent, kind=SpanKind.PRODUCER, attributes=attributes)


def traced_record(event: Event, topic: str, mode: Mode, span: Span) -> KafkaRecord:
    """The record for ``event`` with ``span``'s context in the event and in a per-hop header.

    The event's own trace attributes are replaced (a result copies its request's); without a valid
    span context the event is left as it is.
    """
    context = trace.set_span_in_context(span)
    carrier = propagation.cloudevent_attributes(context)
    if carrier:
        event = event.with_attributes(**{name: carrier.get(name) for name in TRACE_CONTEXT})
    record = to_record(event, topic, mode)
    return replace(record, headers=record.headers + tuple(propagation.kafka_headers(context)))


def sent(span: Span, metadata: Any) -> None:
    """End a send span once the broker acknowledged the record (``metadata``: a RecordMetadata)."""
    partition, offset = getattr(metadata, "partition", None), getattr(metadata, "offset", None)
    if partition is not None:
        span.set_attribute(sc.MESSAGING_PARTITION, str(partition))
    if offset is not None and offset >= 0:
        span.set_attribute(sc.MESSAGING_OFFSET, offset)
    span.end()


def failed(span: Span, error: BaseException | str, *, event: str | None = None) -> None:
    """End a span that did not complete: error status, ``error.type`` and (optionally) a named event."""
    kind = error if isinstance(error, str) else type(error).__name__
    span.set_attribute(sc.ERROR_TYPE, kind)
    if event is not None:
        span.add_event(event, {sc.ERROR_TYPE: kind})
    span.set_status(Status(StatusCode.ERROR, kind))
    span.end()


def send_future_ends(span: Span, future: Any) -> None:
    """End ``span`` when a kafka-python send future resolves, however it resolves."""
    future.add_callback(lambda metadata: sent(span, metadata))
    future.add_errback(lambda error: failed(span, error))


def start_process_span(
    tracer: trace.Tracer, record: KafkaRecord, event: Event | None, group: str
) -> Span:
    """A CONSUMER span for processing one consumed record, parented to the context it carries."""
    attributes: dict[str, Any] = {
        sc.MESSAGING_SYSTEM: KAFKA, sc.MESSAGING_OPERATION_TYPE: "process", sc.MESSAGING_OPERATION_NAME: "process",
        sc.MESSAGING_DESTINATION: record.topic, sc.MESSAGING_GROUP: group,
    }
    if record.partition is not None:
        attributes[sc.MESSAGING_PARTITION] = str(record.partition)
    if record.offset is not None:
        attributes[sc.MESSAGING_OFFSET] = record.offset
    if event is not None:
        attributes.update(_event_attributes(event))
    elif ce_id := record.header("ce_id"):
        attributes[sc.MESSAGING_MESSAGE_ID] = ce_id.decode("utf-8", "replace")
    return tracer.start_span(f"process {record.topic}", context=record_context(record, event),
                             kind=SpanKind.CONSUMER, attributes=attributes)


def start_batch_span(tracer: trace.Tracer, topic: str, spans: Sequence[Span]) -> Span:
    """A root span for one micro-batch, linked to the span of every record in it."""
    links = [Link(s.get_span_context()) for s in spans if s.get_span_context().is_valid]
    attributes = {sc.MESSAGING_SYSTEM: KAFKA, sc.MESSAGING_OPERATION_TYPE: "process",
                  sc.MESSAGING_DESTINATION: topic, sc.MESSAGING_BATCH_COUNT: len(spans),
                  sc.KZERO_BATCH_SIZE: len(spans)}
    return tracer.start_span(f"process batch {topic}", context=Context(), links=links, attributes=attributes)
