"""CloudEvents Kafka protocol binding 1.0 over a frozen record type, plus Knative's wrapping of plain records.

The mapping is written out here rather than delegated to ``cloudevents.kafka``: that SDK invents an
``id`` and ``time`` for events that lack them, sets structured mode's content-type to the data's
(sdk-python#295), keeps the record key as raw bytes, and turns every header of a structured record
into an attribute. tests/events/test_kafka_binding.py pins each of those against the SDK.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from events.errors import MalformedEvent
from events.event import (
    JSON,
    KNATIVE_KAFKA_TYPE,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    Event,
    decode_data,
    dumps_json,
    encode_data,
    from_structured_dict,
    is_json_content_type,
    to_structured_dict,
)

__all__ = ["STRUCTURED_CONTENT_TYPE", "KafkaRecord", "Mode", "from_client_record", "from_record", "to_record"]

Mode = Literal["binary", "structured"]
OCTET_STREAM = "application/octet-stream"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class KafkaRecord:
    """A Kafka record as the binding sees it; partition, offset and timestamp are set on consumed records."""

    topic: str
    value: bytes | None
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None
    offset: int | None = None
    timestamp_ms: int | None = None

    def __post_init__(self) -> None:
        # Accept any iterable of pairs but keep an immutable copy.
        object.__setattr__(self, "headers", tuple((name, value) for name, value in self.headers))

    def header(self, name: str) -> bytes | None:
        """The value of a header, matched case-insensitively; the last one wins."""
        wanted = name.lower()
        found = None
        for key, value in self.headers:
            if key.lower() == wanted:
                found = value
        return found


def from_client_record(record: Any) -> KafkaRecord:
    """Map a kafka-python ``ConsumerRecord`` (consumed without deserializers) to a ``KafkaRecord``."""
    return KafkaRecord(
        topic=record.topic,
        value=record.value,
        key=record.key,
        # Kafka allows null header values; the binding has no use for the distinction.
        headers=tuple((name, value if value is not None else b"") for name, value in record.headers or ()),
        partition=record.partition,
        offset=record.offset,
        timestamp_ms=record.timestamp if record.timestamp is not None and record.timestamp >= 0 else None,
    )


def to_record(event: Event, topic: str, mode: Mode = "binary") -> KafkaRecord:
    """The record for ``event``; its key is the ``partitionkey`` attribute, which is also kept as an attribute."""
    partitionkey = event.get("partitionkey")
    key = partitionkey.encode() if partitionkey is not None else None
    if mode == "structured":
        headers = (("content-type", STRUCTURED_CONTENT_TYPE.encode()),)
        return KafkaRecord(topic, dumps_json(to_structured_dict(event)), key, headers)
    if mode != "binary":
        raise ValueError(f"mode must be 'binary' or 'structured', got {mode!r}")
    attribute_headers = tuple(
        (f"ce_{name}", value.encode()) for name, value in event.attributes.items() if name != "datacontenttype"
    )
    content_type = event.datacontenttype
    type_header = (("content-type", content_type.encode()),) if content_type is not None else ()
    return KafkaRecord(topic, encode_data(event), key, type_header + attribute_headers)


def from_record(record: KafkaRecord) -> Event:
    """The event a record carries, in whichever mode it was written; a plain record is wrapped as Knative does."""
    if record.value is None:
        raise MalformedEvent("value", "empty record (a tombstone carries no event)")
    content_type = _header_text("content-type", record.header("content-type"))
    media_type = content_type.split(";", 1)[0].strip().lower() if content_type is not None else ""
    if media_type.startswith("application/cloudevents"):
        return _from_structured(record, media_type)
    if record.header("ce_specversion") is not None:
        return _from_binary(record, content_type)
    return _wrap_plain(record, content_type)


def _header_text(name: str, value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        raise MalformedEvent(name, "header value is not UTF-8") from e


def _key_text(key: bytes) -> str:
    """The record key as an attribute value: UTF-8 text, or base64 of the bytes when they are not UTF-8."""
    try:
        return key.decode()
    except UnicodeDecodeError:
        return base64.b64encode(key).decode("ascii")


def _with_key(event: Event, key: bytes | None) -> Event:
    if key is None or event.get("partitionkey") is not None:
        return event
    return event.with_attributes(partitionkey=_key_text(key))


def _from_structured(record: KafkaRecord, media_type: str) -> Event:
    if media_type.startswith("application/cloudevents-batch"):
        raise MalformedEvent("content-type", "the batch format is not defined for Kafka")
    if media_type != "application/cloudevents+json":
        raise MalformedEvent("content-type", f"unsupported event format {media_type!r}")
    assert record.value is not None  # checked by from_record
    try:
        structured = json.loads(record.value)
    except ValueError as e:
        raise MalformedEvent("value", f"structured event is not valid JSON: {e}") from e
    return _with_key(from_structured_dict(structured), record.key)


def _from_binary(record: KafkaRecord, content_type: str | None) -> Event:
    # Only ce_* headers are attributes: others (a per-hop traceparent header, say) belong to the transport.
    attributes = {
        name.lower()[3:]: _header_text(name, value) for name, value in record.headers if name.lower().startswith("ce_")
    }
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    assert record.value is not None  # checked by from_record
    return _with_key(Event(attributes, decode_data(record.value, content_type)), record.key)


def _wrap_plain(record: KafkaRecord, content_type: str | None) -> Event:
    """A record that is not a CloudEvent, as Knative's KafkaSource presents it.

    Data is the decoded JSON when the value parses as JSON and the content type allows it; otherwise the
    raw bytes, typed by the record's content-type or application/octet-stream.
    """
    if record.partition is None or record.offset is None:
        raise MalformedEvent("offset", "wrapping a plain record needs its partition and offset")
    assert record.value is not None  # checked by from_record
    data: Any = record.value
    datacontenttype = content_type if content_type is not None and not is_json_content_type(content_type) else None
    if datacontenttype is None:
        try:
            data = json.loads(record.value)
            datacontenttype = content_type or JSON
        except ValueError:
            datacontenttype = OCTET_STREAM
    attributes = {
        "specversion": SPECVERSION,
        "id": f"partition:{record.partition}/offset:{record.offset}",
        "source": f"/kzero/kafka#{record.topic}",
        "type": KNATIVE_KAFKA_TYPE,
        "subject": f"partition:{record.partition}#{record.offset}",
        "datacontenttype": datacontenttype,
    }
    if record.timestamp_ms is not None:
        attributes["time"] = _rfc3339_ms(record.timestamp_ms)
    if record.key is not None:
        attributes["key"] = attributes["partitionkey"] = _key_text(record.key)
    return Event(attributes, data)


def _rfc3339_ms(timestamp_ms: int) -> str:
    moment = _EPOCH + timedelta(milliseconds=timestamp_ms)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{timestamp_ms % 1000:03d}Z"
