"""CloudEvents HTTP binding: detection, round trips in binary/structured/batch mode, malformed requests."""

from __future__ import annotations

import json

import pytest

from events.errors import MalformedEvent
from events.event import JSON, STRUCTURED_CONTENT_TYPE, Event, to_structured_dict
from events.http_binding import BATCH_CONTENT_TYPE, HttpMode, events_from_http, http_reply, is_cloudevent

BASE = {"specversion": "1.0", "id": "e-1", "source": "/test", "type": "dev.kzero.test"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EVENTS = [
    Event({**BASE, "datacontenttype": JSON, "time": "2026-11-23T12:00:00Z"}, {"instances": ["é"]}),
    Event(BASE, [1, 2]),
    Event(BASE, None),
    Event({**BASE, "datacontenttype": "application/octet-stream"}, b"\x00\xff raw"),
    Event(
        {
            **BASE,
            "datacontenttype": JSON,
            "jobid": "j-1",
            "partitionkey": "p",
            "traceparent": TRACEPARENT,
            "tracestate": "vendor=1",
            "errormessage": 'bad "input" at 100% \u2013 na\u00efve\nline',
        },
        {"instances": [1]},
    ),
]
EVENT_IDS = ["json", "no-content-type", "no-data", "bytes", "extensions"]
CE_HEADERS = {"ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/test", "ce-type": "dev.kzero.test"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Ce-Specversion": "1.0"}, True),
        ({"Content-Type": "application/cloudevents+json; charset=UTF-8"}, True),
        ({"content-type": BATCH_CONTENT_TYPE}, True),
        ({"content-type": "application/json"}, False),
        ({}, False),
    ],
)
def test_is_cloudevent(headers: dict[str, str], expected: bool) -> None:
    assert is_cloudevent(headers) is expected


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("event", EVENTS, ids=EVENT_IDS)
def test_single_event_round_trip(event: Event, mode: HttpMode) -> None:
    headers, body = http_reply([event], mode)
    assert all(value.isascii() and "\n" not in value for value in headers.values())
    assert events_from_http(headers, body) == ([event], mode)


def test_batch_round_trip() -> None:
    headers, body = http_reply(EVENTS, "batch")
    assert headers == {"content-type": BATCH_CONTENT_TYPE}
    assert json.loads(body) == [to_structured_dict(event) for event in EVENTS]
    assert events_from_http(headers, body) == (EVENTS, "batch")


def test_binary_reply_layout() -> None:
    headers, body = http_reply([EVENTS[4]], "binary")
    assert body == b'{"instances":[1]}'
    assert headers["content-type"] == JSON
    assert headers["ce-traceparent"] == TRACEPARENT
    assert headers["ce-errormessage"] == "bad%20%22input%22%20at%20100%25%20%E2%80%93%20na%C3%AFve%0Aline"


def test_structured_reply_layout() -> None:
    headers, body = http_reply([EVENTS[0]], "structured")
    assert headers == {"content-type": STRUCTURED_CONTENT_TYPE}
    assert json.loads(body) == to_structured_dict(EVENTS[0])


def test_binary_request_without_time_and_with_mixed_case_headers() -> None:
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": "e-1",
        "Ce-Source": "/test",
        "Ce-Type": "dev.kzero.test",
        "Content-Type": "application/json",
        "traceparent": TRACEPARENT,
    }
    [event], mode = events_from_http(headers, b'{"instances": [1]}')
    assert mode == "binary"
    assert dict(event.attributes) == {**BASE, "datacontenttype": JSON}
    assert event.data == {"instances": [1]}


def test_knative_kafka_source_delivery() -> None:
    """KafkaSource sends a plain record in binary mode, each record header as a kafkaheader<name> extension."""
    headers = {
        "Ce-Specversion": "1.0",
        "Ce-Id": "partition:0/offset:12",
        "Ce-Source": "/apis/v1/namespaces/kzero/kafkasources/requests#kzero.requests",
        "Ce-Type": "dev.knative.kafka.event",
        "Ce-Subject": "partition:0#12",
        "Ce-Key": "user-7",
        "Ce-Kafkaheadertraceparent": TRACEPARENT,
        "Content-Type": "application/json",
    }
    [event], _ = events_from_http(headers, b'{"instances": [1]}')
    assert (event.type, event.get("key"), event.get("kafkaheadertraceparent")) == (
        "dev.knative.kafka.event",
        "user-7",
        TRACEPARENT,
    )


def test_structured_mode_ignores_ce_headers() -> None:
    body = json.dumps({**BASE, "data": {"a": 1}}).encode()
    [event], mode = events_from_http({"content-type": STRUCTURED_CONTENT_TYPE, "ce-id": "other"}, body)
    assert (mode, event.id, event.data) == ("structured", "e-1", {"a": 1})


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("count", [0, 2])
def test_single_event_modes_need_exactly_one_event(mode: HttpMode, count: int) -> None:
    with pytest.raises(ValueError, match="exactly one event"):
        http_reply(EVENTS[:count], mode)


def structured(obj: object) -> bytes:
    return json.dumps(obj).encode()


@pytest.mark.parametrize(
    ("headers", "body", "field"),
    [
        ({k: v for k, v in CE_HEADERS.items() if k != "ce-id"}, b"{}", "id"),
        ({**CE_HEADERS, "ce-specversion": "0.3"}, b"{}", "specversion"),
        ({**CE_HEADERS, "ce-Job_Id": "x"}, b"{}", "job_id"),
        ({**CE_HEADERS, "content-type": "application/json"}, b"{not json", "data"),
        ({**CE_HEADERS, "ce-subject": "%FF"}, b"{}", "ce-subject"),
        ({"content-type": "application/json"}, b"{}", "ce-specversion"),
        ({"content-type": STRUCTURED_CONTENT_TYPE}, b"{oops", "body"),
        ({"content-type": STRUCTURED_CONTENT_TYPE}, structured(["x"]), "event"),
        ({"content-type": STRUCTURED_CONTENT_TYPE}, structured({**BASE, "specversion": "2.0"}), "specversion"),
        ({"content-type": "application/cloudevents+xml"}, b"<x/>", "content-type"),
        ({"content-type": BATCH_CONTENT_TYPE}, b"[]", "body"),
        ({"content-type": BATCH_CONTENT_TYPE}, structured(BASE), "body"),
        ({"content-type": BATCH_CONTENT_TYPE}, structured([BASE, BASE, {**BASE, "id": None}]), "[2].id"),
        ({"content-type": BATCH_CONTENT_TYPE}, structured([BASE, "x"]), "[1].event"),
    ],
    ids=[
        "missing-id",
        "bad-specversion",
        "bad-attribute-name",
        "bad-json-data",
        "bad-percent-encoding",
        "not-a-cloudevent",
        "structured-not-json",
        "structured-not-object",
        "structured-bad-specversion",
        "unsupported-format",
        "empty-batch",
        "batch-not-array",
        "batch-missing-id",
        "batch-not-object",
    ],
)
def test_malformed_requests(headers: dict[str, str], body: bytes, field: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        events_from_http(headers, body)
    assert caught.value.field == field
