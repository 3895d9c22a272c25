"""CloudEvents 1.0 as a frozen value, the kzero event types, and the JSON event format.

Pure functions only: the bindings (Kafka, HTTP) turn an ``Event`` into bytes and back; this module
knows nothing about transports.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

from events.errors import MalformedEvent

SPECVERSION = "1.0"
REQUEST_TYPE = "dev.kzero.inference.request"
RESULT_TYPE = "dev.kzero.inference.result"
ERROR_TYPE = "dev.kzero.inference.error"
DOCUMENT_UPSERT_TYPE = "dev.kzero.document.upsert"
DOCUMENT_DELETE_TYPE = "dev.kzero.document.delete"
KNATIVE_KAFKA_TYPE = "dev.knative.kafka.event"
# A request event with this extension carries an OpenAI request body for that route (not a v1 body);
# its result carries the OpenAI response body. The batch API sends these.
OPENAI_URL = "openaiurl"
OPENAI_URLS = ("/v1/embeddings", "/v1/chat/completions", "/v1/completions")
JSON = "application/json"
# The JSON event format's media type; both bindings use it for structured mode.
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json; charset=UTF-8"

REQUIRED = ("specversion", "id", "source", "type")
# Extensions a reply carries over from the request it answers.
CORRELATION = ("jobid", "partitionkey", "traceparent", "tracestate")
TRACE_CONTEXT = ("traceparent", "tracestate")
MAX_ERROR_MESSAGE = 1000

# The spec only recommends at most 20 characters, and Knative's KafkaSource sends longer names
# (kafkaheader<header>, e.g. kafkaheadertraceparent), so length is not limited.
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def is_json_content_type(content_type: str | None) -> bool:
    """Whether data of this content type is a JSON value; an absent content type means JSON."""
    if content_type is None:
        return True
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in (JSON, "text/json") or media_type.endswith("+json")


def attribute_value(name: str, value: str | int | bool) -> str:
    """The canonical string of an attribute value given by a caller (CloudEvents Boolean/Integer)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return str(value)
    raise MalformedEvent(name, f"must be a string, integer or boolean, got {type(value).__name__}")


@dataclass(frozen=True)
class Event:
    """One CloudEvent: string attributes and data.

    ``data`` is a JSON value (dict, list, str, number, bool, None) when ``datacontenttype`` is JSON or
    absent, and ``bytes`` (or None) otherwise; None means the event has no data. ``data`` is not
    copied, so treat it as read-only.
    """

    attributes: Mapping[str, str]
    data: Any = None

    def __post_init__(self) -> None:
        attributes = dict(self.attributes)
        for name, value in attributes.items():
            if not isinstance(name, str) or not _ATTRIBUTE_NAME.fullmatch(name):
                raise MalformedEvent(str(name), "attribute names are lowercase ASCII letters and digits")
            if name == "data":
                raise MalformedEvent(name, "reserved for the event data, not an attribute name")
            if not isinstance(value, str):
                raise MalformedEvent(name, f"attribute values are strings, got {type(value).__name__}")
        for name in REQUIRED:
            if not attributes.get(name):
                raise MalformedEvent(name, "required attribute missing or empty")
        if attributes["specversion"] != SPECVERSION:
            raise MalformedEvent("specversion", f"must be {SPECVERSION!r}, got {attributes['specversion']!r}")
        if "time" in attributes and not _RFC3339.fullmatch(attributes["time"]):
            raise MalformedEvent("time", f"not an RFC 3339 timestamp: {attributes['time']!r}")
        if attributes.get("datacontenttype") == "":
            raise MalformedEvent("datacontenttype", "must not be empty")
        if is_json_content_type(attributes.get("datacontenttype")):
            if isinstance(self.data, bytes | bytearray | memoryview):
                raise MalformedEvent("data", "bytes need a non-JSON datacontenttype")
        elif not isinstance(self.data, bytes | None):
            raise MalformedEvent("data", f"must be bytes for datacontenttype {attributes['datacontenttype']!r}")
        object.__setattr__(self, "attributes", MappingProxyType(attributes))

    def __hash__(self) -> int:
        # data may be a dict; attributes (id and source among them) identify an event well enough.
        return hash(frozenset(self.attributes.items()))

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def type(self) -> str:
        return self.attributes["type"]

    @property
    def source(self) -> str:
        return self.attributes["source"]

    @property
    def specversion(self) -> str:
        return self.attributes["specversion"]

    @property
    def datacontenttype(self) -> str | None:
        return self.attributes.get("datacontenttype")

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.attributes.get(name, default)

    def with_attributes(self, **changes: str | int | bool | None) -> Event:
        """A copy with attributes set; a value of None removes the attribute."""
        attributes = dict(self.attributes)
        for name, value in changes.items():
            if value is None:
                attributes.pop(name, None)
            else:
                attributes[name] = attribute_value(name, value)
        return Event(attributes, self.data)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_event(
    type: str,
    source: str,
    data: Any,
    *,
    id: str | None = None,
    datacontenttype: str = JSON,
    time: str | None = None,
    **extensions: str | int | bool | None,
) -> Event:
    """A new event with a uuid4 id and the current UTC time unless given; None extensions are skipped."""
    attributes = {
        "specversion": SPECVERSION,
        "id": id if id is not None else str(uuid.uuid4()),
        "source": source,
        "type": type,
        "time": time if time is not None else now_rfc3339(),
        "datacontenttype": datacontenttype,
    }
    attributes.update({name: attribute_value(name, value) for name, value in extensions.items() if value is not None})
    return Event(attributes, data)


def request_event(
    instances: list[Any],
    *,
    source: str,
    parameters: dict[str, Any] | None = None,
    jobid: str | None = None,
    partitionkey: str | None = None,
    id: str | None = None,
) -> Event:
    data: dict[str, Any] = {"instances": instances}
    if parameters is not None:
        data["parameters"] = parameters
    return new_event(REQUEST_TYPE, source, data, id=id, jobid=jobid, partitionkey=partitionkey)


def validate_request(event: Event) -> dict[str, Any]:
    """The v1 request body of an inference request event, checked."""
    if event.type != REQUEST_TYPE:
        raise MalformedEvent("type", f"expected {REQUEST_TYPE!r}, got {event.type!r}")
    data = event.data
    if not isinstance(data, dict):
        raise MalformedEvent("data", "must be a JSON object with 'instances'")
    instances = data.get("instances")
    if not isinstance(instances, list) or not instances:
        raise MalformedEvent("data.instances", "must be a non-empty list")
    if "parameters" in data and not isinstance(data["parameters"], dict):
        raise MalformedEvent("data.parameters", "must be a JSON object")
    return data


def openai_request_event(
    url: str, body: dict[str, Any], *, source: str, id: str, jobid: str | None = None,
    partitionkey: str | None = None,
) -> Event:
    """A request for an OpenAI route (one of ``OPENAI_URLS``) with its OpenAI body as the data."""
    return new_event(REQUEST_TYPE, source, body, id=id, jobid=jobid, partitionkey=partitionkey,
                     **{OPENAI_URL: url})


def validate_openai_request(event: Event) -> tuple[str, dict[str, Any]]:
    """The route and OpenAI body of a request event carrying ``openaiurl``, checked."""
    if event.type != REQUEST_TYPE:
        raise MalformedEvent("type", f"expected {REQUEST_TYPE!r}, got {event.type!r}")
    url = event.get(OPENAI_URL)
    if url not in OPENAI_URLS:
        raise MalformedEvent(OPENAI_URL, f"must be one of {', '.join(OPENAI_URLS)}, got {url!r}")
    if not isinstance(event.data, dict):
        raise MalformedEvent("data", "must be a JSON object: the OpenAI request body")
    if event.data.get("stream"):
        raise MalformedEvent("data.stream", "a request event cannot be streamed")
    return url, event.data


def _copied(event: Event, names: tuple[str, ...]) -> dict[str, str | None]:
    return {name: event.get(name) for name in names}


def result_event(request: Event, response: dict[str, Any], *, source: str) -> Event:
    """The result of ``request``: data is the v1 response body, correlated by ``requestid``."""
    return new_event(RESULT_TYPE, source, response, requestid=request.id, **_copied(request, CORRELATION))


def error_event(
    *,
    code: str,
    message: str,
    attempts: int,
    source: str,
    original: Event | None,
    original_raw: dict[str, Any] | None = None,
    requestid: str | None = None,
    jobid: str | None = None,
    origin: tuple[str, int, int] | None = None,
) -> Event:
    """A dead-letter event for a request that failed for good.

    ``original_raw`` stands in for the request when it could not be parsed into an ``Event`` (the
    caller builds it, e.g. ``{"value_base64": ..., "headers": {...}}``); ``origin`` is the
    (topic, partition, offset) the request was consumed from.
    """
    data = {
        "error": {"code": code, "message": message},
        "attempts": attempts,
        "request": to_structured_dict(original) if original is not None else original_raw,
    }
    extensions: dict[str, str | None] = {
        "requestid": original.id if original is not None else requestid,
        "jobid": (original.get("jobid") if original is not None else None) or jobid,
        "errorcode": code,
        "errormessage": message[:MAX_ERROR_MESSAGE],
    }
    if original is not None:
        extensions.update(_copied(original, TRACE_CONTEXT))
    if origin is not None:
        topic, partition, offset = origin
        extensions.update(sourcetopic=topic, sourcepartition=str(partition), sourceoffset=str(offset))
    return new_event(ERROR_TYPE, source, data, **extensions)


def compact_json(value: Any) -> bytes:
    """Compact UTF-8 JSON as the stdlib writes it with ``allow_nan=False``: TypeError or ValueError for
    what JSON cannot carry (NaN, sets, objects).

    orjson first (a result event of 384 floats took a quarter of the worker's samples in the stdlib
    encoder); it writes NaN and infinities as ``null`` and refuses what the stdlib accepts (int keys,
    integers beyond 64 bits), so output with a ``null`` in it, and anything orjson refuses, is encoded
    again by the stdlib, which decides."""
    try:
        encoded = orjson.dumps(value)
        if b"null" not in encoded:
            return encoded
    except orjson.JSONEncodeError:
        pass
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def dumps_json(value: Any, field: str = "data") -> bytes:
    """``compact_json``; values JSON cannot carry are a MalformedEvent naming ``field``."""
    try:
        return compact_json(value)
    except (TypeError, ValueError) as e:
        raise MalformedEvent(field, f"not JSON-serialisable: {e}") from e


def encode_data(event: Event) -> bytes:
    """The data as a binary-mode payload: JSON-encoded for JSON content types, bytes as they are."""
    if event.data is None:
        return b""
    if isinstance(event.data, bytes):
        return event.data
    return dumps_json(event.data)


def decode_data(payload: bytes, datacontenttype: str | None) -> Any:
    """Inverse of ``encode_data``; an empty payload is no data."""
    if not payload:
        return None
    if not is_json_content_type(datacontenttype):
        return payload
    try:
        return json.loads(payload)
    except ValueError as e:
        raise MalformedEvent("data", f"not valid JSON for datacontenttype {datacontenttype or JSON!r}: {e}") from e


def to_structured_dict(event: Event) -> dict[str, Any]:
    """The event in the CloudEvents JSON format: attributes as members plus data or data_base64."""
    structured: dict[str, Any] = dict(event.attributes)
    if isinstance(event.data, bytes):
        structured["data_base64"] = base64.b64encode(event.data).decode("ascii")
    elif event.data is not None:
        structured["data"] = event.data
    return structured


def _structured_attribute(name: str, value: Any) -> str | None:
    # The JSON format maps CloudEvents Integer and Boolean to JSON numbers and booleans, and null to unset.
    if value is None:
        return None
    if isinstance(value, str | int):  # bool is an int
        return attribute_value(name, value)
    raise MalformedEvent(name, f"attribute values are strings, integers or booleans, got {type(value).__name__}")


def _structured_data(obj: dict[str, Any], datacontenttype: str | None) -> Any:
    if "data_base64" in obj:
        if obj.get("data") is not None:
            raise MalformedEvent("data_base64", "data and data_base64 are mutually exclusive")
        encoded = obj["data_base64"]
        if encoded is None:
            return None
        if not isinstance(encoded, str):
            raise MalformedEvent("data_base64", "must be a base64 string")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise MalformedEvent("data_base64", f"not valid base64: {e}") from e
        return decode_data(payload, datacontenttype)
    data = obj.get("data")
    if data is None or is_json_content_type(datacontenttype):
        return data
    if not isinstance(data, str):
        raise MalformedEvent("data", f"must be a string for datacontenttype {datacontenttype!r}")
    return data.encode()


def from_structured_dict(obj: Any) -> Event:
    """Inverse of ``to_structured_dict``; ``time`` is optional, as the spec says."""
    if not isinstance(obj, dict):
        raise MalformedEvent("event", f"a structured event is a JSON object, got {type(obj).__name__}")
    attributes = {}
    for name, value in obj.items():
        if name in ("data", "data_base64"):
            continue
        text = _structured_attribute(name, value)
        if text is not None:
            attributes[name] = text
    return Event(attributes, _structured_data(obj, attributes.get("datacontenttype")))
