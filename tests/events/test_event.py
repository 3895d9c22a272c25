"""Event value type, kzero event constructors, and the CloudEvents JSON format."""

from __future__ import annotations

import base64
import dataclasses
import pickle
import re
import uuid
from typing import Any

import pytest

from events.errors import EventError, MalformedEvent
from events.event import (
    ERROR_TYPE,
    JSON,
    REQUEST_TYPE,
    RESULT_TYPE,
    Event,
    error_event,
    from_structured_dict,
    is_json_content_type,
    new_event,
    request_event,
    result_event,
    to_structured_dict,
    validate_request,
)

BASE = {"specversion": "1.0", "id": "e-1", "source": "/test", "type": "dev.kzero.test"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_malformed_event_carries_field_and_problem() -> None:
    error = MalformedEvent("data.instances", "must be a non-empty list")
    assert str(error) == "data.instances: must be a non-empty list"
    assert (error.field, error.problem) == ("data.instances", "must be a non-empty list")
    assert isinstance(error, EventError) and isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.field, copy.problem) == (error.field, error.problem)


def test_new_event_defaults() -> None:
    event = new_event("dev.kzero.test", "/test", {"a": 1}, jobid="j-1", retries=3, urgent=True, skipped=None)
    assert uuid.UUID(event.id).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event.attributes["time"])
    assert (event.specversion, event.type, event.source, event.datacontenttype) == (
        "1.0",
        "dev.kzero.test",
        "/test",
        JSON,
    )
    assert (event.get("jobid"), event.get("retries"), event.get("urgent")) == ("j-1", "3", "true")
    assert "skipped" not in event.attributes
    assert event.data == {"a": 1}


def test_event_is_an_immutable_value() -> None:
    attributes = dict(BASE)
    event = Event(attributes, {"x": 1})
    attributes["id"] = "changed"
    assert event.id == "e-1"
    with pytest.raises(TypeError):
        event.attributes["id"] = "changed"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = None  # type: ignore[misc]
    same = Event(dict(BASE), {"x": 1})
    assert event == same and hash(event) == hash(same)
    assert event != Event(dict(BASE), {"x": 2})


def test_with_attributes_sets_and_removes() -> None:
    event = Event({**BASE, "jobid": "j-1"}, None)
    changed = event.with_attributes(jobid=None, partitionkey="k", attempt=2)
    assert "jobid" not in changed.attributes
    assert (changed.get("partitionkey"), changed.get("attempt")) == ("k", "2")
    assert event.get("jobid") == "j-1"
    assert changed.get("missing", "fallback") == "fallback"
    assert event.datacontenttype is None


def test_time_is_optional_and_long_names_are_accepted() -> None:
    """The spec only recommends names of at most 20 characters; Knative's KafkaSource sends kafkaheader<name>."""
    event = Event({**BASE, "kafkaheadertraceparent": "v"}, {"x": 1})
    assert "time" not in event.attributes


@pytest.mark.parametrize(
    ("attributes", "data", "field"),
    [
        ({k: v for k, v in BASE.items() if k != "id"}, None, "id"),
        ({**BASE, "source": ""}, None, "source"),
        ({**BASE, "specversion": "0.3"}, None, "specversion"),
        ({k: v for k, v in BASE.items() if k != "specversion"}, None, "specversion"),
        ({**BASE, "Jobid": "x"}, None, "Jobid"),
        ({**BASE, "job-id": "x"}, None, "job-id"),
        ({**BASE, "": "x"}, None, ""),
        ({**BASE, "caf\u00e9": "x"}, None, "caf\u00e9"),
        ({**BASE, "data": "x"}, None, "data"),
        ({**BASE, "attempt": 3}, None, "attempt"),
        ({**BASE, "time": "yesterday"}, None, "time"),
        ({**BASE, "datacontenttype": ""}, None, "datacontenttype"),
        (BASE, b"raw", "data"),
        ({**BASE, "datacontenttype": "text/plain"}, {"not": "bytes"}, "data"),
    ],
)
def test_invalid_events_name_the_field(attributes: dict[str, Any], data: Any, field: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        Event(attributes, data)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        (None, True),
        ("application/json", True),
        ("Application/JSON; charset=utf-8", True),
        ("application/vnd.kzero+json", True),
        ("text/plain", False),
        ("application/octet-stream", False),
    ],
)
def test_is_json_content_type(content_type: str | None, expected: bool) -> None:
    assert is_json_content_type(content_type) is expected


def test_request_event_and_validate_request() -> None:
    event = request_event(
        [{"prompt": "hi"}], source="/submit", parameters={"max_tokens": 8}, jobid="j-1", partitionkey="p", id="r-1"
    )
    assert (event.type, event.id, event.get("jobid"), event.get("partitionkey")) == (REQUEST_TYPE, "r-1", "j-1", "p")
    assert validate_request(event) == {"instances": [{"prompt": "hi"}], "parameters": {"max_tokens": 8}}
    assert "parameters" not in request_event(["x"], source="/submit").data


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (new_event("dev.kzero.other", "/t", {"instances": [1]}), "type"),
        (new_event(REQUEST_TYPE, "/t", ["not", "an", "object"]), "data"),
        (new_event(REQUEST_TYPE, "/t", {"inputs": [1]}), "data.instances"),
        (new_event(REQUEST_TYPE, "/t", {"instances": []}), "data.instances"),
        (new_event(REQUEST_TYPE, "/t", {"instances": "text"}), "data.instances"),
        (new_event(REQUEST_TYPE, "/t", {"instances": [1], "parameters": [1]}), "data.parameters"),
    ],
)
def test_validate_request_rejects(event: Event, field: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        validate_request(event)
    assert caught.value.field == field


def test_result_event_copies_correlation_and_trace_context() -> None:
    request = request_event(["x"], source="/submit", jobid="j-1", partitionkey="p").with_attributes(
        traceparent=TRACEPARENT, tracestate="k=v"
    )
    result = result_event(request, {"predictions": [[0.5]]}, source="/worker")
    assert (result.type, result.source, result.data) == (RESULT_TYPE, "/worker", {"predictions": [[0.5]]})
    assert result.id != request.id
    expected = {"requestid": request.id, "jobid": "j-1", "partitionkey": "p", "traceparent": TRACEPARENT}
    assert {name: result.get(name) for name in expected} == expected
    assert result.get("tracestate") == "k=v"


def test_result_event_without_optional_extensions() -> None:
    result = result_event(request_event(["x"], source="/s"), {"predictions": [1]}, source="/w")
    assert not {"jobid", "partitionkey", "traceparent", "tracestate"} & set(result.attributes)


def test_error_event_wraps_the_original() -> None:
    original = request_event(["x"], source="/submit", jobid="j-1").with_attributes(traceparent=TRACEPARENT)
    error = error_event(
        code="predictor_unavailable",
        message="m" * 1500,
        attempts=5,
        source="/worker",
        original=original,
        origin=("kzero.requests", 2, 41),
    )
    assert error.type == ERROR_TYPE
    assert error.data == {
        "error": {"code": "predictor_unavailable", "message": "m" * 1500},
        "attempts": 5,
        "request": to_structured_dict(original),
    }
    assert from_structured_dict(error.data["request"]) == original
    assert (error.get("requestid"), error.get("jobid"), error.get("errorcode")) == (
        original.id,
        "j-1",
        "predictor_unavailable",
    )
    assert error.get("errormessage") == "m" * 1000
    assert (error.get("sourcetopic"), error.get("sourcepartition"), error.get("sourceoffset")) == (
        "kzero.requests",
        "2",
        "41",
    )
    assert error.get("traceparent") == TRACEPARENT


def test_error_event_for_an_unparseable_original() -> None:
    raw = {"value_base64": base64.b64encode(b"\xff").decode(), "headers": {"ce_id": "r-9"}}
    error = error_event(
        code="malformed",
        message="value: not JSON",
        attempts=1,
        source="/w",
        original=None,
        original_raw=raw,
        requestid="r-9",
        jobid="j-2",
    )
    assert error.data["request"] == raw
    assert (error.get("requestid"), error.get("jobid")) == ("r-9", "j-2")
    assert not {"sourcetopic", "traceparent"} & set(error.attributes)
    bare = error_event(code="c", message="m", attempts=0, source="/w", original=None)
    assert bare.data["request"] is None and "requestid" not in bare.attributes


@pytest.mark.parametrize(
    "event",
    [
        Event({**BASE, "datacontenttype": JSON, "time": "2026-11-23T12:00:00Z"}, {"instances": [1, "é"]}),
        Event(BASE, [1, 2]),
        Event(BASE, None),
        Event({**BASE, "datacontenttype": "application/octet-stream"}, b"\x00\xffbytes"),
        Event(
            {**BASE, "jobid": "j", "partitionkey": "p", "traceparent": TRACEPARENT, "tracestate": "a=b"},
            {"x": None},
        ),
    ],
    ids=["json", "no-content-type", "no-data", "bytes", "extensions"],
)
def test_structured_dict_round_trip(event: Event) -> None:
    structured = to_structured_dict(event)
    assert from_structured_dict(structured) == event
    if isinstance(event.data, bytes):
        assert base64.b64decode(structured["data_base64"]) == event.data
        assert "data" not in structured


def test_structured_dict_json_format_mappings() -> None:
    """Integer/Boolean attributes arrive as JSON numbers/booleans; null means unset; text data becomes bytes."""
    event = from_structured_dict(
        {**BASE, "sequence": 5, "urgent": False, "subject": None, "datacontenttype": "text/xml", "data": "<a/>"}
    )
    assert (event.get("sequence"), event.get("urgent"), event.get("subject")) == ("5", "false", None)
    assert event.data == b"<a/>"
    encoded_json = from_structured_dict({**BASE, "data_base64": base64.b64encode(b'{"a": 1}').decode()})
    assert encoded_json.data == {"a": 1}


@pytest.mark.parametrize(
    ("obj", "field"),
    [
        (["not", "an", "object"], "event"),
        ("text", "event"),
        ({k: v for k, v in BASE.items() if k != "id"}, "id"),
        ({**BASE, "specversion": "0.3"}, "specversion"),
        ({**BASE, "jobid": {"nested": 1}}, "jobid"),
        ({**BASE, "ratio": 0.5}, "ratio"),
        ({**BASE, "data": {"a": 1}, "data_base64": "AA=="}, "data_base64"),
        ({**BASE, "data_base64": "not base64!"}, "data_base64"),
        ({**BASE, "data_base64": 12}, "data_base64"),
        ({**BASE, "datacontenttype": "text/plain", "data": {"a": 1}}, "data"),
        ({**BASE, "Bad": "x"}, "Bad"),
    ],
)
def test_from_structured_dict_rejects(obj: Any, field: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        from_structured_dict(obj)
    assert caught.value.field == field
