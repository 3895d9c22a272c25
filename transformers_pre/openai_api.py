"""``/openai/v1/chat/completions`` on the transformer: retrieval on the last user message, then the
predictor's answer, streamed through as server-sent events with the sources in a final chunk.

The call to the predictor is a CLIENT span whose context goes out in the request headers; when
streaming it ends with the predictor's last chunk (and the server span after our own last one).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import SecretStr

from observability import semconv
from observability.propagation import inject
from serving.client import bearer_headers, client_span, forwarded, http_attributes, refused_message
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.openai_wire import ChatBody, json_body, openai_error, sse
from serving.validation import documented_body, parse_model
from transformers_pre.context import RagContext, RagInstance
from transformers_pre.errors import PredictorUnavailable
from transformers_pre.steps.generate import record_usage

if TYPE_CHECKING:
    from transformers_pre.model import RagModel

CHAT_ROUTE = "/openai/v1/chat/completions"
_RETRIEVAL_FIELDS = ("filter", "collection")


def rag_openai_router(model: RagModel, tracer: trace.Tracer | None = None) -> APIRouter:
    tracer = tracer or trace.get_tracer(__name__)
    router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

    @router.get("/models", response_model=None)
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model.name, "object": "model", "created": 0, "owned_by": "kzero"}]})

    @router.post("/chat/completions", response_model=None, openapi_extra=documented_body(ChatBody))
    async def chat(request: Request) -> Response:
        try:
            return await _chat(model, request, tracer)
        except ServingError as err:
            return openai_error(err)

    return router


async def _chat(model: RagModel, request: Request, tracer: trace.Tracer) -> Response:
    raw, retrieval = _retrieval_options(await json_body(request))
    body = parse_model(ChatBody, raw)
    if body.model != model.name:
        raise ModelNotFound(body.model, [model.name])
    users = [i for i, m in enumerate(body.messages) if m.role == "user"]
    if not users:
        raise InvalidInput("messages", "needs a user message to answer")
    last = users[-1]
    await model.wait_ready()
    assert model.chain is not None and model.deps is not None
    before, after = model.chain.split("generate")
    scope = model.deps.scope.resolve(retrieval.get("filter"), retrieval.get("collection"))
    ctx = RagContext(RagInstance(question=body.messages[last].plain()["content"]), f"messages[{last}]",
                     dict(request.headers), scope)
    await before.run(ctx)
    history = [m.plain() for m in body.messages[:last] if m.role != "system"]
    config = model.deps.config
    upstream = {**raw, "model": config.predictor_model, "messages": [ctx.messages[0], *history, ctx.messages[1]]}
    upstream.setdefault("temperature", 0.0)
    url = f"{config.predictor_url}{CHAT_ROUTE}"
    attributes = {**http_attributes(url), semconv.GEN_AI_OPERATION: "chat",
                  semconv.GEN_AI_REQUEST_MODEL: config.predictor_model}
    if body.stream:
        span = tracer.start_span(f"POST {CHAT_ROUTE}", kind=SpanKind.CLIENT, attributes=attributes)
        return StreamingResponse(_relay(url, upstream, ctx, after, model.name, span, request.headers,
                                        config.predictor_api_key),
                                 media_type="text/event-stream")
    async with httpx.AsyncClient(timeout=config.request_timeout_s) as client:
        with client_span(tracer, f"POST {CHAT_ROUTE}", attributes, request.headers) as (span, headers):
            reply = await _post(client, url, upstream, headers, span, config.predictor_api_key)
    ctx.answer = reply["choices"][0]["message"]["content"]
    ctx.usage.update(reply.get("usage") or {})
    await after.run(ctx)
    reply["choices"][0]["message"]["content"] = ctx.answer
    return JSONResponse({**reply, "model": model.name, "sources": ctx.prediction()["sources"],
                         "citations": ctx.citations})


def _retrieval_options(raw: Any) -> tuple[Any, dict[str, Any]]:
    """The body without our retrieval fields (``extra_body`` of the openai client), and those fields."""
    if not isinstance(raw, dict):
        return raw, {}
    return ({k: v for k, v in raw.items() if k not in _RETRIEVAL_FIELDS},
            {k: raw[k] for k in _RETRIEVAL_FIELDS if k in raw})


async def _post(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], headers: dict[str, str], span: trace.Span,
    api_key: SecretStr | None,
) -> dict[str, Any]:
    try:
        response = await client.post(url, json=body, headers={**headers, **bearer_headers(api_key)})
    except httpx.TransportError as err:
        raise PredictorUnavailable(f"predictor unreachable: {err!r}") from err
    span.set_attribute(semconv.HTTP_STATUS, response.status_code)
    if response.status_code == 401:  # our deployment's fault, not the caller's: 503, not 400
        raise PredictorUnavailable(f"{refused_message(url, 401, api_key)}; check KZERO_PREDICTOR_API_KEY")
    if response.status_code >= 500 or response.status_code == 429:
        raise PredictorUnavailable(f"predictor answered {response.status_code}: {response.text[:300]}")
    if response.status_code != 200:
        raise InvalidInput("body", f"the predictor rejected the request: {response.text[:300]}")
    reply = response.json()
    record_usage(span, reply.get("usage") or {})
    return reply


async def _relay(
    url: str, upstream: dict[str, Any], ctx: RagContext, after: Any, name: str, span: trace.Span,
    headers: Mapping[str, str], api_key: SecretStr | None = None,
) -> AsyncIterator[str]:
    """Pass the predictor's chunks through (renamed to this model), then one chunk with the sources.

    ``span`` (the call to the predictor, started by the handler) is ended here when the predictor's
    stream ends: a generator must not attach a context it may be closed without detaching.
    """
    pieces: list[str] = []
    last: dict[str, Any] = {}
    outgoing = {**forwarded(headers), **inject(trace.set_span_in_context(span)), **bearer_headers(api_key)}
    try:
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("POST", url, json=upstream, headers=outgoing) as response:
                span.set_attribute(semconv.HTTP_STATUS, response.status_code)
                if response.status_code != 200:
                    error = (await response.aread()).decode(errors="replace")[:300]
                    _failed(span, str(response.status_code))
                    message = (refused_message(url, 401, api_key) if response.status_code == 401
                               else f"predictor answered {response.status_code}: {error}")
                    yield sse({"error": {"message": message, "type": "server_error"}})
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices", []):
                        pieces.append(choice.get("delta", {}).get("content") or "")
                    if chunk.get("usage"):
                        ctx.usage.update(chunk["usage"])
                        record_usage(span, chunk["usage"])
                    last = {**chunk, "model": name}
                    yield sse(last)
    except httpx.TransportError as err:
        _failed(span, f"{type(err).__module__}.{type(err).__qualname__}")
        yield sse({"error": {"message": f"predictor unreachable: {err!r}", "type": "server_error"}})
        return
    finally:
        span.end()
    ctx.answer = "".join(pieces)
    await after.run(ctx)
    yield sse({"id": last.get("id"), "object": "chat.completion.chunk", "created": last.get("created"),
               "model": name, "choices": [], "sources": ctx.prediction()["sources"], "citations": ctx.citations})
    yield sse("[DONE]")


def _failed(span: trace.Span, error_type: str) -> None:
    span.set_attribute(semconv.ERROR_TYPE, error_type)
    span.set_status(Status(StatusCode.ERROR))
