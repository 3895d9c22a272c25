"""Our client for a predictor's OpenAI chat route, which the RAG transformer relays its own to.

Like the predictor client (``serving.client``): one pooled ``httpx.AsyncClient`` per client object,
every call one attempt that fails as ``TransientCallError`` (unreachable, timeout, 5xx, 429),
``PermanentCallError`` (other 4xx) or ``Unauthorized`` (401), which the caller retries with
``serving.retry``; a CLIENT span per attempt whose context goes out as W3C headers, and the API key
as ``Authorization: Bearer``.

A streamed call is opened by ``open_chat``: the attempt ends with the response's status, before the
first byte of the stream, so a failure up to there can be retried and nothing has been relayed yet.
The ``ChatStream`` it returns yields the predictor's chunks; its span ends when the stream is closed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from observability import semconv
from observability.propagation import extract, inject
from serving.client import (
    HttpClient,
    TransientCallError,
    forwarded,
    http_attributes,
    mark_failed,
    raise_for_status,
    record_usage,
    transport_failure,
)

CHAT_ROUTE = "/openai/v1/chat/completions"


class ChatStream:
    """An open streamed chat completion: ``chunks()`` once, then ``aclose()`` (also after a failure)."""

    def __init__(self, response: httpx.Response, span: trace.Span) -> None:
        self._response = response
        self._span = span
        self._closed = False

    async def chunks(self) -> AsyncIterator[dict[str, Any]]:
        """The predictor's chunks up to ``[DONE]``, usage recorded on the span. A stream that breaks, or
        an error chunk the predictor sends, raises ``TransientCallError``: nothing can be retried now."""
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError as err:
                    raise TransientCallError(f"predictor sent a chunk that is not JSON: {line[:200]!r}",
                                             status="bad-chunk") from err
                if isinstance(chunk, dict) and isinstance(error := chunk.get("error"), dict):
                    raise TransientCallError(f"predictor failed mid-stream: {error.get('message', error)}",
                                             status="stream-error")
                if isinstance(chunk, dict) and isinstance(chunk.get("usage"), dict):
                    record_usage(self._span, chunk["usage"])
                yield chunk
        except httpx.TransportError as err:
            failure = transport_failure(err)
            mark_failed(self._span, failure)
            raise failure from err
        except TransientCallError as err:
            mark_failed(self._span, err)
            raise

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._response.aclose()
        finally:
            self._span.end()


class OpenAIClient(HttpClient):
    """The pooled client of ``serving.client`` (its base URL, key, timeout and close) for chat calls;
    its timeout bounds each step (connect, each read), not a whole stream."""

    def _attributes(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return {**http_attributes(self._base_url + CHAT_ROUTE), semconv.GEN_AI_OPERATION: "chat",
                semconv.GEN_AI_REQUEST_MODEL: str(body.get("model", ""))}

    async def chat(self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One attempt at a whole (not streamed) chat completion."""
        span = self._start_span(body, headers)
        outgoing = {**forwarded(headers), **inject(trace.set_span_in_context(span))}
        try:
            try:
                response = await self._http.post(CHAT_ROUTE, json={**body, "stream": False}, headers=outgoing)
            except httpx.TransportError as err:
                raise transport_failure(err) from err
            span.set_attribute(semconv.HTTP_STATUS, response.status_code)
            raise_for_status(response.status_code, response.headers, response.text, self._base_url, self._api_key)
            reply = response.json()
            if isinstance(reply, dict) and isinstance(reply.get("usage"), dict):
                record_usage(span, reply["usage"])
            return reply
        except BaseException as err:
            mark_failed(span, err)
            raise
        finally:
            span.end()

    async def open_chat(self, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> ChatStream:
        """One attempt at opening a streamed chat completion: returns once the predictor answered 200."""
        span = self._start_span(body, headers)
        outgoing = {**forwarded(headers), **inject(trace.set_span_in_context(span))}
        try:
            request = self._http.build_request("POST", CHAT_ROUTE, json={**body, "stream": True}, headers=outgoing)
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as err:
                raise transport_failure(err) from err
            span.set_attribute(semconv.HTTP_STATUS, response.status_code)
            if response.status_code != 200:
                try:
                    text = (await response.aread()).decode(errors="replace")
                finally:
                    await response.aclose()
                raise_for_status(response.status_code, response.headers, text, self._base_url, self._api_key)
        except BaseException as err:
            mark_failed(span, err)
            span.end()
            raise
        return ChatStream(response, span)

    def _start_span(self, body: Mapping[str, Any], headers: Mapping[str, str] | None) -> trace.Span:
        # Not current while it lives: a stream's span outlives the handler that opened it. Its parent is
        # the current span, else the trace context the caller passed (as ``client_span`` does).
        parent = None if trace.get_current_span().get_span_context().is_valid else extract(headers)
        return self._tracer.start_span(f"POST {CHAT_ROUTE}", context=parent, kind=SpanKind.CLIENT,
                                       attributes=self._attributes(body))
