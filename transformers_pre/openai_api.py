"""``/openai/v1/chat/completions`` on the transformer: retrieval on the last user message, then the
predictor's answer, streamed through as server-sent events with the sources in a final chunk.

Extra fields next to OpenAI's: ``sources``, ``citations`` and ``mode`` (``generative``, or
``extractive`` when the chain's ground step replaced the answer with a sentence of the top passage).
Without streaming the message content is the chain's final answer; a stream cannot take back what it
sent, so its final chunk carries ``answer`` too when the chain changed the streamed text.

The predictor is called through ``serving.openai_client`` (pooled, classified, traced, keyed) with
the transformer's retry policy: a failure before the first streamed byte is retried, and once it
is final the caller gets an HTTP error in OpenAI's shape, as without streaming. After the first
byte a failure can only end the stream with an error chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from serving.client import CallFailed, PermanentCallError, TransientCallError, Unauthorized
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.openai_client import ChatStream
from serving.openai_wire import ChatBody, json_body, openai_error, sse
from serving.retry import call_with_retries
from serving.validation import documented_body, parse_model
from transformers_pre.chain import Chain
from transformers_pre.context import RagContext, RagInstance
from transformers_pre.errors import PredictorUnavailable

if TYPE_CHECKING:
    from transformers_pre.model import RagModel

_RETRIEVAL_FIELDS = ("filter", "collection")


def rag_openai_router(model: RagModel) -> APIRouter:
    router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

    @router.get("/models", response_model=None)
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model.name, "object": "model", "created": 0, "owned_by": "kzero"}]})

    @router.post("/chat/completions", response_model=None, openapi_extra=documented_body(ChatBody))
    async def chat(request: Request) -> Response:
        try:
            return await _chat(model, request)
        except ServingError as err:
            return openai_error(err)

    return router


async def _chat(model: RagModel, request: Request) -> Response:
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
    deps = model.deps
    before, after = model.chain.split("generate")
    scope = deps.scope.resolve(retrieval.get("filter"), retrieval.get("collection"))
    ctx = RagContext(RagInstance(question=body.messages[last].plain()["content"]), f"messages[{last}]",
                     dict(request.headers), scope)
    await before.run(ctx)
    history = [m.plain() for m in body.messages[:last] if m.role != "system"]
    config = deps.config
    upstream = {**raw, "model": config.predictor_model, "messages": [ctx.messages[0], *history, ctx.messages[1]]}
    upstream.setdefault("temperature", 0.0)
    stop = getattr(next(s for s in model.chain.steps if s.name == "generate"), "stop", ())
    if stop:  # the chain's generate step ends answers there; a relayed chat gets the same default
        upstream.setdefault("stop", list(stop))
    client = deps.chat

    def retried(*_: object) -> None:
        deps.metrics.retried(config.predictor_model)

    try:
        if body.stream:
            stream, _ = await call_with_retries(lambda: client.open_chat(upstream, request.headers), config.retry,
                                                on_retry=retried)
            return StreamingResponse(_relay(stream, ctx, after, model.name), media_type="text/event-stream")
        reply, _ = await call_with_retries(lambda: client.chat(upstream, request.headers), config.retry,
                                           on_retry=retried)
    except CallFailed as err:
        raise _refusal(err) from err
    ctx.answer = reply["choices"][0]["message"]["content"]
    ctx.usage.update(reply.get("usage") or {})
    await after.run(ctx)
    reply["choices"][0]["message"]["content"] = ctx.answer
    return JSONResponse({**reply, "model": model.name, "sources": ctx.prediction()["sources"],
                         "citations": ctx.citations, "mode": ctx.mode})


def _refusal(err: CallFailed) -> ServingError:
    """What the caller is told when the predictor call failed for good (as the chain's generate step)."""
    if isinstance(err, Unauthorized):  # our deployment's fault, not the caller's: 503, not 400
        return PredictorUnavailable(f"{err}; check KZERO_PREDICTOR_API_KEY")
    if isinstance(err, PermanentCallError):
        return InvalidInput("body", f"the predictor rejected the request: {err}")
    return PredictorUnavailable(f"predictor unavailable: {err}")


def _retrieval_options(raw: Any) -> tuple[Any, dict[str, Any]]:
    """The body without our retrieval fields (``extra_body`` of the openai client), and those fields."""
    if not isinstance(raw, dict):
        return raw, {}
    return ({k: v for k, v in raw.items() if k not in _RETRIEVAL_FIELDS},
            {k: raw[k] for k in _RETRIEVAL_FIELDS if k in raw})


async def _relay(stream: ChatStream, ctx: RagContext, after: Chain, name: str) -> AsyncIterator[str]:
    """Pass the predictor's chunks through (renamed to this model), then one chunk with the sources."""
    pieces: list[str] = []
    last: dict[str, Any] = {}
    try:
        async for chunk in stream.chunks():
            for choice in chunk.get("choices", []):
                pieces.append(choice.get("delta", {}).get("content") or "")
            if chunk.get("usage"):
                ctx.usage.update(chunk["usage"])
            last = {**chunk, "model": name}
            yield sse(last)
    except TransientCallError as err:
        yield sse({"error": {"message": str(err), "type": "server_error"}})
        return
    finally:
        await stream.aclose()
    streamed = ctx.answer = "".join(pieces)
    await after.run(ctx)
    final = {"id": last.get("id"), "object": "chat.completion.chunk", "created": last.get("created"),
             "model": name, "choices": [], "sources": ctx.prediction()["sources"], "citations": ctx.citations,
             "mode": ctx.mode}
    if ctx.answer != streamed:  # what was streamed cannot be taken back: the answer that replaces it
        final["answer"] = ctx.answer
    yield sse(final)
    yield sse("[DONE]")

