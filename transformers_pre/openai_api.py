"""``/openai/v1/chat/completions`` on the transformer: retrieval on the last user message, then the
predictor's answer, streamed through as server-sent events with the sources in a final chunk."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from predictors.errors import InvalidInput, ModelNotFound, PredictorError
from predictors.openai_api import ChatBody, json_body, openai_error, sse
from predictors.validation import parse_model
from transformers_pre.context import RagContext, RagInstance
from transformers_pre.errors import PredictorUnavailable

if TYPE_CHECKING:
    from transformers_pre.model import RagModel


def rag_openai_router(model: RagModel) -> APIRouter:
    router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

    @router.get("/models", response_model=None)
    async def models() -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model.name, "object": "model", "created": 0, "owned_by": "kzero"}]})

    @router.post("/chat/completions", response_model=None)
    async def chat(request: Request) -> Response:
        try:
            return await _chat(model, request)
        except PredictorError as err:
            return openai_error(err)

    return router


async def _chat(model: RagModel, request: Request) -> Response:
    raw = await json_body(request)
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
    ctx = RagContext(RagInstance(question=body.messages[last].plain().content), f"messages[{last}]",
                     dict(request.headers))
    await before.run(ctx)
    history = [m.plain().model_dump() for m in body.messages[:last] if m.role != "system"]
    config = model.deps.config
    upstream = {**raw, "model": config.predictor_model, "messages": [ctx.messages[0], *history, ctx.messages[1]]}
    upstream.setdefault("temperature", 0.0)
    url = f"{config.predictor_url}/openai/v1/chat/completions"
    if body.stream:
        return StreamingResponse(_relay(url, upstream, ctx, after, model.name), media_type="text/event-stream")
    async with httpx.AsyncClient(timeout=config.request_timeout_s) as client:
        reply = await _post(client, url, upstream)
    ctx.answer = reply["choices"][0]["message"]["content"]
    ctx.usage.update(reply.get("usage") or {})
    await after.run(ctx)
    reply["choices"][0]["message"]["content"] = ctx.answer
    return JSONResponse({**reply, "model": model.name, "sources": ctx.prediction()["sources"],
                         "citations": ctx.citations})


async def _post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    try:
        response = await client.post(url, json=body)
    except httpx.TransportError as err:
        raise PredictorUnavailable(f"predictor unreachable: {err!r}") from err
    if response.status_code >= 500 or response.status_code == 429:
        raise PredictorUnavailable(f"predictor answered {response.status_code}: {response.text[:300]}")
    if response.status_code != 200:
        raise InvalidInput("body", f"the predictor rejected the request: {response.text[:300]}")
    return response.json()


async def _relay(url: str, upstream: dict[str, Any], ctx: RagContext, after: Any, name: str) -> AsyncIterator[str]:
    """Pass the predictor's chunks through (renamed to this model), then one chunk with the sources."""
    pieces: list[str] = []
    last: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=None) as client:
        try:
            async with client.stream("POST", url, json=upstream) as response:
                if response.status_code != 200:
                    error = (await response.aread()).decode(errors="replace")[:300]
                    yield sse({"error": {"message": f"predictor answered {response.status_code}: {error}",
                                         "type": "server_error"}})
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    for choice in chunk.get("choices", []):
                        pieces.append(choice.get("delta", {}).get("content") or "")
                    if chunk.get("usage"):
                        ctx.usage.update(chunk["usage"])
                    last = {**chunk, "model": name}
                    yield sse(last)
        except httpx.TransportError as err:
            yield sse({"error": {"message": f"predictor unreachable: {err!r}", "type": "server_error"}})
            return
    ctx.answer = "".join(pieces)
    await after.run(ctx)
    yield sse({"id": last.get("id"), "object": "chat.completion.chunk", "created": last.get("created"),
               "model": name, "choices": [], "sources": ctx.prediction()["sources"], "citations": ctx.citations})
    yield sse("[DONE]")
