"""CloudEvents over HTTP on the v1 predict route: what Knative (KafkaSource, Trigger) delivers to a sink.

KServe decodes CloudEvents itself but requires ``time``, which the spec makes optional and Knative
often leaves out, and knows no batches. Here binary, structured and batch requests are answered
in their own mode with ``dev.kzero.inference.result`` events (never a request type, so a Trigger
filtering on the request type does not loop); every other request goes on to KServe's v1 handling.
Every JSON body on the route is parsed here, once, by ``read_json`` (depth limit, lone surrogates
and invalid UTF-8 named by field), and a batch holds at most ``max_batch_events`` events.

An event that carries its own trace context (the distributed-tracing extension) is processed in
that trace, in a span linked to the HTTP request's; otherwise the HTTP request's span is the parent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from kserve.errors import ModelNotReady
from kserve.protocol.dataplane import DataPlane
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from events.errors import INVALID_EVENT, REJECTED, UNAVAILABLE, MalformedEvent
from events.event import (
    TRACE_CONTEXT,
    Event,
    error_event,
    from_structured_dict,
    is_json_content_type,
    result_event,
    validate_request,
)
from events.http_binding import BATCH_CONTENT_TYPE, HttpMode, events_from_http, http_reply, is_cloudevent
from observability import semconv
from observability.propagation import extract
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.limits import RequestLimits
from serving.readiness import ServedModel
from serving.validation import check_count, documented_body, read_json

PREDICT_PATH = "/v1/models/{model_name}:predict"

Predict = Callable[[dict[str, Any], dict[str, str]], Awaitable[Any]]
"""A v1 request body and trace headers in, the v1 response body out (``ServedModel.predict``)."""

V1Handler = Callable[[str, Any, Mapping[str, str]], Awaitable[Response]]
"""v1 predict of a parsed JSON body that is not a CloudEvent (``kserve_v1``)."""

STRUCTURED_MEDIA_TYPE = "application/cloudevents+json"
V1_BODY = {"type": "object", "required": ["instances"],
           "properties": {"instances": {"type": "array", "minItems": 1, "items": {}}, "parameters": {"type": "object"}}}
"""The v1 request body, for the OpenAPI document: each task checks the instances it takes."""


def event_source(model_name: str) -> str:
    return f"/kzero/predictors/{model_name}"


async def answer(
    predict: Predict, headers: Mapping[str, str], body: bytes, *, source: str,
    max_batch_events: int = RequestLimits().max_batch_events,
) -> tuple[dict[str, str], bytes]:
    """The HTTP reply (headers, body) to a CloudEvents request, in the request's mode.

    A single event that is malformed or not an inference request raises ``InvalidInput``, and a
    model error propagates, for the server's usual error mapping. In a batch each event fails alone:
    its position in the reply holds a ``dev.kzero.inference.error`` event; a batch over
    ``max_batch_events`` is refused whole, before any of it is queued.
    """
    if _media_type(headers) == BATCH_CONTENT_TYPE:
        items = _batch_items(await read_json(body), max_batch_events)
        replies = await asyncio.gather(*(_answer_item(predict, item, headers, source) for item in items))
        return http_reply(list(replies), "batch")
    try:
        event, mode = await _single_event(headers, body)
        request_body = validate_request(event)
    except MalformedEvent as err:
        raise InvalidInput(err.field, err.problem) from err
    response = await predict(request_body, _trace_context(event, headers))
    return http_reply([result_event(event, response, source=source)], mode)


async def _single_event(headers: Mapping[str, str], body: bytes) -> tuple[Event, HttpMode]:
    if _media_type(headers) == STRUCTURED_MEDIA_TYPE:
        return from_structured_dict(await read_json(body)), "structured"
    if "ce-specversion" not in {name.lower() for name in headers}:
        (event,), mode = events_from_http(headers, body)  # an unsupported event format: the binding says which
        return event, mode
    # Binary mode: the binding reads the attributes from the headers (an empty payload is no data);
    # JSON data is parsed here, with the same limits as every other body.
    (event,), mode = events_from_http(headers, b"")
    if not body:
        return event, mode
    data = await read_json(body, "data") if is_json_content_type(event.get("datacontenttype")) else body
    return Event(event.attributes, data), mode


def kserve_v1(dataplane: DataPlane) -> V1Handler:
    """KServe's v1 predict (a JSON body that is a structured CloudEvent is unwrapped and its reply
    wrapped), given the body parsed here rather than the raw request it would parse again."""

    async def predict(model_name: str, payload: Any, headers: Mapping[str, str]) -> Response:
        if not await dataplane.model_ready(model_name, True):
            raise ModelNotReady(model_name)
        plain = dict(headers)
        request, attributes = dataplane.decode(payload, plain)
        response, response_headers = await dataplane.infer(model_name=model_name, request=request, headers=plain)
        response, encoded = dataplane.encode(model_name=model_name, response=response, headers=plain,
                                             req_attributes=attributes)
        response_headers.update(encoded)
        response_headers.pop("content-length", None)
        if isinstance(response, bytes | str):
            return Response(content=response, headers=response_headers)
        content = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
        return Response(content=content, headers=response_headers, media_type="application/json")

    return predict


def in_event_trace(predict: Predict, tracer: trace.Tracer, model_name: str) -> Predict:
    """``predict`` in the trace its event carries, when that is not the HTTP request's own trace."""

    async def traced(body: dict[str, Any], trace_headers: dict[str, str]) -> Any:
        event_context = extract(trace_headers)
        event_span = trace.get_current_span(event_context).get_span_context()
        current = trace.get_current_span().get_span_context()
        if not event_span.is_valid or event_span.trace_id == current.trace_id:
            return await predict(body, trace_headers)
        links = [Link(current)] if current.is_valid else []
        with tracer.start_as_current_span(f"process {model_name}", context=event_context,
                                          kind=SpanKind.CONSUMER, links=links,
                                          attributes={semconv.MESSAGING_OPERATION_TYPE: "process"}):
            return await predict(body, trace_headers)

    return traced


def cloudevents_router(
    model: ServedModel, fallback: V1Handler, tracer: trace.Tracer | None = None,
    limits: RequestLimits | None = None,
) -> APIRouter:
    """The v1 predict route answering CloudEvents; registered before KServe's, whose handling gets the rest."""
    router = APIRouter()
    predict_in_event_trace = in_event_trace(model.predict, tracer or trace.get_tracer(__name__), model.name)
    max_batch_events = (limits or RequestLimits()).max_batch_events

    @router.post(PREDICT_PATH, response_model=None, openapi_extra=documented_body(V1_BODY))
    async def predict(model_name: str, request: Request) -> Response:
        if not is_cloudevent(request.headers):
            return await fallback(model_name, await read_json(await request.body()), request.headers)
        if model_name != model.name:
            raise ModelNotFound(model_name, [model.name])
        headers, body = await answer(predict_in_event_trace, request.headers, await request.body(),
                                     source=event_source(model_name), max_batch_events=max_batch_events)
        return Response(content=body, headers=headers)

    return router


async def _answer_item(predict: Predict, item: Any, headers: Mapping[str, str], source: str) -> Event:
    try:
        event = from_structured_dict(item)
    except MalformedEvent as err:
        raw = item if isinstance(item, dict) else None
        requestid = raw.get("id") if raw is not None and isinstance(raw.get("id"), str) else None
        return error_event(code=INVALID_EVENT, message=str(err), attempts=0, source=source, original=None,
                           original_raw=raw, requestid=requestid)
    try:
        request_body = validate_request(event)
    except MalformedEvent as err:
        return error_event(code=INVALID_EVENT, message=str(err), attempts=0, source=source, original=event)
    try:
        response = await predict(request_body, _trace_context(event, headers))
    except ServingError as err:
        # Same codes as the eventing worker's DLQ: the caller's fault is final, the rest may be retried.
        code = REJECTED if isinstance(err, InvalidInput) else UNAVAILABLE
        return error_event(code=code, message=str(err), attempts=1, source=source, original=event)
    return result_event(event, response, source=source)


def _batch_items(items: Any, max_events: int) -> list[Any]:
    """The members of a batch, not yet parsed as events, so that a malformed one fails only itself."""
    if not isinstance(items, list) or not items:
        raise InvalidInput("body", "a batch is a non-empty JSON array of events")
    check_count(len(items), max_events, "body", "events in a batch")
    return items


def _trace_context(event: Event, headers: Mapping[str, str]) -> dict[str, str]:
    """The event's own trace context (distributed tracing extension), else the HTTP request's."""
    source: Mapping[str, str | None] = event.attributes if event.get("traceparent") else headers
    return {name: value for name in TRACE_CONTEXT if (value := source.get(name))}


def _media_type(headers: Mapping[str, str]) -> str:
    content_type = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    return content_type.split(";", 1)[0].strip().lower()
