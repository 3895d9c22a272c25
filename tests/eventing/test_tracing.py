"""Trace context in and out of Kafka records and events, in both modes (pure functions, in-memory spans)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from eventing import tracing
from events.event import error_event, request_event, result_event, to_structured_dict
from events.kafka_binding import KafkaRecord, from_record, to_record
from observability import propagation

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def tracer(spans: InMemorySpanExporter) -> trace.Tracer:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider.get_tracer("test")


def _hex(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def _traceparent(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def consumed(record: KafkaRecord, offset: int = 7) -> KafkaRecord:
    return KafkaRecord(record.topic, record.value, record.key, record.headers, partition=2, offset=offset)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_sent_event_carries_the_send_span_in_the_event_and_a_per_hop_header(tracer, spans, mode) -> None:
    event = request_event(["hello"], source="/tests", jobid="job-1", partitionkey="k", id="job-1-1")
    span = tracing.start_send_span(tracer, "requests", event)
    record = tracing.traced_record(event, "requests", mode, span)
    span.end()
    expected = _traceparent(span)
    assert record.header("traceparent") == expected.encode()
    assert from_record(record).get("traceparent") == expected
    if mode == "binary":
        assert record.header("ce_traceparent") == expected.encode()
    else:
        assert json.loads(record.value)["traceparent"] == expected
        assert record.header("content-type").startswith(b"application/cloudevents+json")
    assert record.key == b"k"
    [finished] = spans.get_finished_spans()
    assert finished.name == "send requests" and finished.kind == SpanKind.PRODUCER
    assert finished.attributes == {
        "messaging.system": "kafka", "messaging.operation.type": "send", "messaging.operation.name": "send",
        "messaging.destination.name": "requests", "messaging.message.id": "job-1-1",
        "kzero.request_id": "job-1-1", "kzero.job_id": "job-1",
    }


def test_a_send_span_continues_the_current_or_the_given_context(tracer) -> None:
    event = request_event(["x"], source="/tests", id="r1")
    with tracer.start_as_current_span("job") as job:
        child = tracing.start_send_span(tracer, "t", event)
    assert child.parent.span_id == job.get_span_context().span_id
    replayed = event.with_attributes(traceparent=TRACEPARENT)
    resent = tracing.start_send_span(tracer, "t", replayed, tracing.event_context(replayed))
    assert _hex(resent)[0] == TRACE_ID and resent.parent.span_id == int("b7ad6b7169203331", 16)


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_a_consumer_prefers_the_per_hop_header_then_the_event_context(mode) -> None:
    event = request_event(["x"], source="/tests", id="r1").with_attributes(traceparent=TRACEPARENT)
    hop = "00-11111111111111111111111111111111-2222222222222222-01"

    plain = to_record(event, "t", mode)
    with_hop = KafkaRecord(plain.topic, plain.value, plain.key, (*plain.headers, ("traceparent", hop.encode())))
    for record, trace_id in ((with_hop, "1" * 32), (plain, TRACE_ID)):
        context = tracing.record_context(record, from_record(record))
        assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") == trace_id


def test_a_record_that_is_not_an_event_still_yields_its_ce_traceparent() -> None:
    record = KafkaRecord("t", b"{not json", headers=(("ce_specversion", b"1.0"), ("ce_traceparent",
                                                                                  TRACEPARENT.encode())))
    context = tracing.record_context(record, None)
    assert format(trace.get_current_span(context).get_span_context().trace_id, "032x") == TRACE_ID
    assert not trace.get_current_span(tracing.record_context(KafkaRecord("t", b"x"), None)).get_span_context().is_valid


def test_process_span_is_a_consumer_child_of_the_record_context_with_messaging_attributes(tracer, spans) -> None:
    event = request_event(["secret text"], source="/tests", jobid="j", id="j-1").with_attributes(
        traceparent=TRACEPARENT)

    record = consumed(to_record(event, "requests"))
    span = tracing.start_process_span(tracer, record, from_record(record), "group-a")
    span.end()
    [finished] = spans.get_finished_spans()
    assert finished.name == "process requests" and finished.kind == SpanKind.CONSUMER
    assert format(finished.context.trace_id, "032x") == TRACE_ID
    assert finished.parent.span_id == int("b7ad6b7169203331", 16)
    assert finished.attributes["messaging.destination.partition.id"] == "2"
    assert finished.attributes["messaging.kafka.offset"] == 7
    assert finished.attributes["messaging.consumer.group.name"] == "group-a"
    assert finished.attributes["messaging.message.id"] == "j-1" and finished.attributes["kzero.job_id"] == "j"
    assert "secret text" not in repr(dict(finished.attributes))


def test_a_result_carries_its_send_span_which_is_a_child_of_the_request_span(tracer) -> None:
    request = request_event(["x"], source="/tests", jobid="j", id="j-1").with_attributes(traceparent=TRACEPARENT)
    request_span = tracer.start_span("process requests", context=tracing.event_context(request))
    result = result_event(request, {"predictions": [1]}, source="/worker")
    assert result.get("traceparent") == TRACEPARENT  # copied from the request ...
    span = tracing.start_send_span(tracer, "results", result, trace.set_span_in_context(request_span))
    record = tracing.traced_record(result, "results", "binary", span)
    assert _hex(span)[0] == TRACE_ID
    assert from_record(record).get("traceparent") == _traceparent(span)  # ... then replaced
    assert span.parent.span_id == request_span.get_span_context().span_id


def test_a_dead_letter_carries_its_send_span_and_the_request_keeps_its_own(tracer) -> None:
    request = request_event([""], source="/tests", jobid="j", id="j-2").with_attributes(traceparent=TRACEPARENT)
    request_span = tracer.start_span("process", context=tracing.event_context(request))
    dead = error_event(code="rejected", message="instances[0]: must not be empty", attempts=1, source="/worker",
                       original=request)
    span = tracing.start_send_span(tracer, "dlq", dead, trace.set_span_in_context(request_span))
    event = from_record(tracing.traced_record(dead, "dlq", "structured", span))
    assert event.get("traceparent") == _traceparent(span)
    assert event.data["request"]["traceparent"] == TRACEPARENT
    assert event.data["request"] == to_structured_dict(request)


def test_without_a_recording_tracer_the_context_still_flows() -> None:
    request = request_event(["x"], source="/tests", id="r").with_attributes(traceparent=TRACEPARENT)
    tracer = trace.NoOpTracer()
    span = tracing.start_send_span(tracer, "t", request, tracing.event_context(request))
    record = tracing.traced_record(request, "t", "binary", span)
    assert record.header("traceparent") == TRACEPARENT.encode()
    assert from_record(record).get("traceparent") == TRACEPARENT
    untraced = request_event(["x"], source="/tests", id="r2")
    record = tracing.traced_record(untraced, "t", "binary", tracing.start_send_span(tracer, "t", untraced))
    assert record.header("traceparent") is None and from_record(record).get("traceparent") is None


def test_send_span_ends_with_partition_and_offset_or_an_error(tracer, spans) -> None:
    event = request_event(["x"], source="/tests", id="r")

    class Metadata:
        partition, offset = 3, 42

    tracing.sent(tracing.start_send_span(tracer, "t", event), Metadata())
    tracing.failed(tracing.start_send_span(tracer, "t", event), TimeoutError("broker gone"))
    ok, bad = spans.get_finished_spans()
    assert ok.attributes["messaging.destination.partition.id"] == "3" and ok.attributes["messaging.kafka.offset"] == 42
    assert bad.status.status_code == StatusCode.ERROR and bad.attributes["error.type"] == "TimeoutError"


def test_batch_span_is_a_root_linked_to_every_record_span(tracer, spans) -> None:
    with tracer.start_as_current_span("unrelated"):
        members = [tracer.start_span(f"process {i}") for i in range(3)]
        batch = tracing.start_batch_span(tracer, "requests", members)
    batch.end()
    finished = spans.get_finished_spans()[-1]
    assert finished.parent is None
    assert [link.context.span_id for link in finished.links] == [m.get_span_context().span_id for m in members]
    assert finished.attributes["kzero.batch_size"] == 3


def test_inject_of_a_context_round_trips_through_kafka_headers(tracer) -> None:
    span = tracer.start_span("s")
    headers = propagation.kafka_headers(trace.set_span_in_context(span))
    context = propagation.from_kafka_headers(headers)
    assert trace.get_current_span(context).get_span_context().span_id == span.get_span_context().span_id
