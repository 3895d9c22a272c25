"""CloudEvents Kafka binding: round trips, record layout, malformed records, Knative wrapping, SDK deviations."""

from __future__ import annotations

import base64
import json

import pytest
from cloudevents import kafka as sdk_kafka
from cloudevents.http import CloudEvent
from kafka.consumer.fetcher import ConsumerRecord

from events.errors import MalformedEvent
from events.event import JSON, KNATIVE_KAFKA_TYPE, Event, to_structured_dict
from events.kafka_binding import (
    STRUCTURED_CONTENT_TYPE,
    KafkaRecord,
    Mode,
    from_client_record,
    from_record,
    to_record,
)

TOPIC = "kzero.requests"
BASE = {"specversion": "1.0", "id": "e-1", "source": "/test", "type": "dev.kzero.test"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
EVENTS = [
    Event({**BASE, "datacontenttype": JSON, "time": "2026-11-23T12:00:00.5Z"}, {"instances": ["é", 1.5, None]}),
    Event(BASE, {"instances": [1]}),
    Event(BASE, None),
    Event({**BASE, "datacontenttype": "application/octet-stream"}, b"\x00\xff raw"),
    Event(
        {
            **BASE,
            "datacontenttype": JSON,
            "jobid": "j-1",
            "partitionkey": "user-7",
            "traceparent": TRACEPARENT,
            "tracestate": "vendor=1",
        },
        {"instances": [{"prompt": "hi"}]},
    ),
]
EVENT_IDS = ["json", "no-content-type", "no-data", "bytes", "extensions"]


def binary(headers: dict[str, bytes], value: bytes | None = b"{}", key: bytes | None = None) -> KafkaRecord:
    return KafkaRecord(TOPIC, value, key, tuple(headers.items()), partition=0, offset=7)


CE_HEADERS = {"ce_specversion": b"1.0", "ce_id": b"e-1", "ce_source": b"/test", "ce_type": b"dev.kzero.test"}


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("event", EVENTS, ids=EVENT_IDS)
def test_round_trip(event: Event, mode: Mode) -> None:
    record = to_record(event, TOPIC, mode)
    assert record.topic == TOPIC
    assert from_record(record) == event


def test_binary_layout() -> None:
    event = EVENTS[4]
    record = to_record(event, TOPIC)
    assert record.key == b"user-7"
    assert record.value == b'{"instances":[{"prompt":"hi"}]}'
    assert record.headers == (
        ("content-type", b"application/json"),
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-1"),
        ("ce_source", b"/test"),
        ("ce_type", b"dev.kzero.test"),
        ("ce_jobid", b"j-1"),
        ("ce_partitionkey", b"user-7"),
        ("ce_traceparent", TRACEPARENT.encode()),
        ("ce_tracestate", b"vendor=1"),
    )


def test_structured_layout() -> None:
    event = EVENTS[4]
    record = to_record(event, TOPIC, "structured")
    assert record.key == b"user-7"
    assert record.headers == (("content-type", STRUCTURED_CONTENT_TYPE.encode()),)
    assert json.loads(record.value or b"") == to_structured_dict(event)
    assert json.loads(record.value or b"")["partitionkey"] == "user-7"


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        to_record(EVENTS[0], TOPIC, "batch")  # type: ignore[arg-type]


def test_header_lookup_is_case_insensitive_and_last_wins() -> None:
    record = KafkaRecord(TOPIC, b"", headers=[("Content-Type", b"a"), ("content-type", b"b")])  # type: ignore[arg-type]
    assert record.header("CONTENT-TYPE") == b"b"
    assert record.header("missing") is None
    assert isinstance(record.headers, tuple)


def test_binary_reads_only_ce_headers_as_attributes() -> None:
    record = binary({**CE_HEADERS, "traceparent": TRACEPARENT.encode(), "x-retry": b"2", "CE_JobId": b"j-1"})
    event = from_record(record)
    assert "traceparent" not in event.attributes and "x-retry" not in event.attributes
    assert event.get("jobid") == "j-1"
    assert event.datacontenttype is None and event.data == {}


def test_key_becomes_partitionkey_unless_the_attribute_is_set() -> None:
    assert from_record(binary(CE_HEADERS, key=b"user-7")).get("partitionkey") == "user-7"
    keyed = binary({**CE_HEADERS, "ce_partitionkey": b"from-attribute"}, key=b"from-key")
    assert from_record(keyed).get("partitionkey") == "from-attribute"
    not_utf8 = from_record(binary(CE_HEADERS, key=b"\xff\x00"))
    assert not_utf8.get("partitionkey") == base64.b64encode(b"\xff\x00").decode()


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (binary({k: v for k, v in CE_HEADERS.items() if k != "ce_id"}), "id"),
        (binary({**CE_HEADERS, "ce_specversion": b"0.3"}), "specversion"),
        (binary({**CE_HEADERS, "ce_job-id": b"x"}), "job-id"),
        (binary({**CE_HEADERS, "content-type": b"application/json"}, value=b"{not json"), "data"),
        (binary(CE_HEADERS, value=b"{not json"), "data"),
        (binary({**CE_HEADERS, "ce_source": b"\xff/bad"}), "ce_source"),
        (binary({**CE_HEADERS, "content-type": b"\xfe"}), "content-type"),
        (binary(CE_HEADERS, value=None), "value"),
        (binary({"content-type": b"application/cloudevents-batch+json"}, value=b"[]"), "content-type"),
        (binary({"content-type": b"application/cloudevents+avro"}), "content-type"),
        (binary({"content-type": STRUCTURED_CONTENT_TYPE.encode()}, value=b"{oops"), "value"),
        (binary({"content-type": STRUCTURED_CONTENT_TYPE.encode()}, value=b"[1]"), "event"),
        (
            binary({"content-type": STRUCTURED_CONTENT_TYPE.encode()}, value=json.dumps(BASE | {"id": ""}).encode()),
            "id",
        ),
    ],
    ids=[
        "missing-id",
        "bad-specversion",
        "bad-attribute-name",
        "bad-json-data",
        "bad-json-data-no-content-type",
        "non-utf8-header",
        "non-utf8-content-type",
        "tombstone",
        "batch-on-kafka",
        "unsupported-format",
        "structured-not-json",
        "structured-not-object",
        "structured-empty-id",
    ],
)
def test_malformed_records(record: KafkaRecord, field: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        from_record(record)
    assert caught.value.field == field


def test_knative_wraps_a_plain_json_record() -> None:
    record = KafkaRecord(
        "orders", b'{"instances": [1]}', b"user-7", partition=2, offset=41, timestamp_ms=1_700_000_000_123
    )
    event = from_record(record)
    assert dict(event.attributes) == {
        "specversion": "1.0",
        "id": "partition:2/offset:41",
        "source": "/kzero/kafka#orders",
        "type": KNATIVE_KAFKA_TYPE,
        "subject": "partition:2#41",
        "datacontenttype": JSON,
        "time": "2023-11-14T22:13:20.123Z",
        "key": "user-7",
        "partitionkey": "user-7",
    }
    assert event.data == {"instances": [1]}


@pytest.mark.parametrize(
    ("headers", "datacontenttype"),
    [((), "application/octet-stream"), ((("content-type", b"text/plain"),), "text/plain")],
)
def test_knative_wraps_a_plain_non_json_record(headers: tuple[tuple[str, bytes], ...], datacontenttype: str) -> None:
    record = KafkaRecord("raw", b"\x89PNG not json", b"\xff\xfe", headers, partition=0, offset=3)
    event = from_record(record)
    assert (event.id, event.source, event.get("subject")) == (
        "partition:0/offset:3",
        "/kzero/kafka#raw",
        "partition:0#3",
    )
    assert event.datacontenttype == datacontenttype
    assert event.data == b"\x89PNG not json"
    assert event.get("key") == event.get("partitionkey") == base64.b64encode(b"\xff\xfe").decode()
    assert "time" not in event.attributes


def test_wrapping_needs_partition_and_offset() -> None:
    with pytest.raises(MalformedEvent) as caught:
        from_record(KafkaRecord("raw", b"1"))
    assert caught.value.field == "offset"


def test_from_client_record() -> None:
    client = ConsumerRecord(
        topic=TOPIC,
        partition=1,
        leader_epoch=0,
        offset=9,
        timestamp=-1,
        timestamp_type=-1,
        key=b"k",
        value=b"{}",
        headers=[("ce_id", b"e-1"), ("x-null", None)],
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        serialized_header_size=-1,
    )
    assert from_client_record(client) == KafkaRecord(
        TOPIC, b"{}", b"k", (("ce_id", b"e-1"), ("x-null", b"")), partition=1, offset=9, timestamp_ms=None
    )


# The cloudevents SDK (v1 Kafka API) deviates from the Kafka binding in the ways below; each test pins the
# SDK's behaviour and shows ours. If an SDK upgrade changes one, the first assertion fails and says so.


def sdk_event(**extra: str) -> CloudEvent:
    return CloudEvent.create({**BASE, "datacontenttype": JSON, **extra}, {"instances": [1]})


def test_sdk_deviation_structured_content_type() -> None:
    """sdk-python#295: SDK ``to_structured`` sets the record content-type to the data's datacontenttype
    (application/json), so readers take the record for binary mode; ours is application/cloudevents+json."""
    message = sdk_kafka.to_structured(sdk_event())
    assert message.headers["content-type"] == b"application/json"
    ours = to_record(Event({**BASE, "datacontenttype": JSON}, {"instances": [1]}), TOPIC, "structured")
    assert ours.header("content-type") == STRUCTURED_CONTENT_TYPE.encode()


def test_sdk_deviation_partitionkey_is_raw_bytes() -> None:
    """SDK ``from_binary`` copies the record key into ``partitionkey`` as raw bytes, though attribute values are
    strings; ours decodes it to str."""
    headers = {"ce_specversion": b"1.0", "ce_id": b"e-1", "ce_source": b"/test", "ce_type": b"dev.kzero.test"}
    message = sdk_kafka.KafkaMessage(headers=headers, key=b"user-7", value=b"{}")
    assert sdk_kafka.from_binary(message)["partitionkey"] == b"user-7"
    ours = from_record(KafkaRecord(TOPIC, b"{}", b"user-7", tuple(headers.items())))
    assert ours.get("partitionkey") == "user-7"


def test_sdk_deviation_structured_headers_leak_into_attributes() -> None:
    """SDK ``from_structured`` turns every record header into an attribute (a per-hop ``traceparent`` header
    overrides the event's own; ``content-type`` overwrites datacontenttype); ours reads the value only."""
    structured = json.dumps({**BASE, "datacontenttype": JSON, "traceparent": TRACEPARENT, "data": {"a": 1}}).encode()
    hop = "00-11111111111111111111111111111111-2222222222222222-01"
    headers = {"content-type": STRUCTURED_CONTENT_TYPE.encode(), "traceparent": hop.encode(), "x-retry": b"2"}
    sdk = sdk_kafka.from_structured(sdk_kafka.KafkaMessage(headers=headers, key=None, value=structured))
    assert (sdk["traceparent"], sdk["x-retry"], sdk["datacontenttype"]) == (hop, "2", STRUCTURED_CONTENT_TYPE)
    ours = from_record(KafkaRecord(TOPIC, structured, None, tuple(headers.items())))
    assert ours.get("traceparent") == TRACEPARENT
    assert "x-retry" not in ours.attributes and ours.datacontenttype == JSON


def test_sdk_deviation_missing_id_and_time_are_invented() -> None:
    """SDK ``from_binary`` builds an ``http.CloudEvent``, which fills in a random ``id`` (and ``time``) when the
    record has none, so a malformed event passes; ours rejects the missing id and leaves time unset."""
    headers = {"ce_specversion": b"1.0", "ce_source": b"/test", "ce_type": b"dev.kzero.test"}
    sdk = sdk_kafka.from_binary(sdk_kafka.KafkaMessage(headers=headers, key=None, value=b"{}"))
    assert sdk["id"] and sdk["time"]
    with pytest.raises(MalformedEvent) as caught:
        from_record(KafkaRecord(TOPIC, b"{}", None, tuple(headers.items())))
    assert caught.value.field == "id"
