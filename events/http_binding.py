"""CloudEvents HTTP protocol binding 1.0: binary, structured and batch mode, for Knative delivery to our servers.

Header values are percent-encoded as the binding requires (space, '"', '%' and anything outside printable
ASCII), so attribute values such as an error message survive HTTP intact.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import quote, unquote

from events.errors import MalformedEvent
from events.event import (
    STRUCTURED_CONTENT_TYPE,
    Event,
    decode_data,
    dumps_json,
    encode_data,
    from_structured_dict,
    to_structured_dict,
)

__all__ = [
    "BATCH_CONTENT_TYPE",
    "STRUCTURED_CONTENT_TYPE",
    "HttpMode",
    "events_from_http",
    "http_reply",
    "is_cloudevent",
]

HttpMode = Literal["binary", "structured", "batch"]
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
_PREFIX = "ce-"
_UNENCODED = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def _media_type(headers: dict[str, str]) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


def is_cloudevent(headers: Mapping[str, str]) -> bool:
    """Whether a request carries CloudEvents, in any mode."""
    lowered = _lowered(headers)
    return "ce-specversion" in lowered or _media_type(lowered).startswith("application/cloudevents")


def events_from_http(headers: Mapping[str, str], body: bytes) -> tuple[list[Event], HttpMode]:
    """The events of a request and the mode they came in; ``time`` is never required."""
    lowered = _lowered(headers)
    media_type = _media_type(lowered)
    if media_type.startswith("application/cloudevents-batch"):
        if media_type != BATCH_CONTENT_TYPE:
            raise MalformedEvent("content-type", f"unsupported batch format {media_type!r}")
        return _batch(_json_body(body)), "batch"
    if media_type.startswith("application/cloudevents"):
        if media_type != "application/cloudevents+json":
            raise MalformedEvent("content-type", f"unsupported event format {media_type!r}")
        return [from_structured_dict(_json_body(body))], "structured"
    if "ce-specversion" in lowered:
        return [_from_binary(lowered, body)], "binary"
    raise MalformedEvent("ce-specversion", "not a CloudEvent: no ce-specversion header or cloudevents content-type")


def _json_body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise MalformedEvent("body", f"not valid JSON: {e}") from e


def _batch(items: Any) -> list[Event]:
    if not isinstance(items, list):
        raise MalformedEvent("body", f"a batch is a JSON array, got {type(items).__name__}")
    if not items:
        raise MalformedEvent("body", "empty batch")
    events = []
    for index, item in enumerate(items):
        try:
            events.append(from_structured_dict(item))
        except MalformedEvent as e:
            raise MalformedEvent(f"[{index}].{e.field}", e.problem) from e
    return events


def _from_binary(headers: dict[str, str], body: bytes) -> Event:
    attributes = {
        name.removeprefix(_PREFIX): _decoded(name, value) for name, value in headers.items() if name.startswith(_PREFIX)
    }
    content_type = headers.get("content-type")
    if content_type is not None:
        attributes["datacontenttype"] = content_type
    return Event(attributes, decode_data(body, content_type))


def _decoded(name: str, value: str) -> str:
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError as e:
        raise MalformedEvent(name, "percent-encoded value is not UTF-8") from e


def http_reply(events: list[Event], mode: HttpMode) -> tuple[dict[str, str], bytes]:
    """Headers and body answering with ``events``; binary and structured mode carry exactly one event."""
    if mode == "batch":
        return {"content-type": BATCH_CONTENT_TYPE}, dumps_json([to_structured_dict(event) for event in events])
    if len(events) != 1:
        raise ValueError(f"{mode} mode carries exactly one event, got {len(events)}")
    (event,) = events
    if mode == "structured":
        return {"content-type": STRUCTURED_CONTENT_TYPE}, dumps_json(to_structured_dict(event))
    if mode != "binary":
        raise ValueError(f"mode must be 'binary', 'structured' or 'batch', got {mode!r}")
    headers = {"content-type": event.datacontenttype} if event.datacontenttype is not None else {}
    headers.update(
        {
            f"{_PREFIX}{name}": quote(value, safe=_UNENCODED)
            for name, value in event.attributes.items()
            if name != "datacontenttype"
        }
    )
    return headers, encode_data(event)
