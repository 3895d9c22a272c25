"""OpenAI-compatible routes under ``/openai/v1``: models, embeddings, completions, chat completions.

Requests go through the same batcher as v1/v2/gRPC, with the same limits; bodies are parsed by
``read_json`` and tokenized off the event loop. Streaming (``stream: true``) sends each piece of
text as the model thread produces it, as server-sent events. Errors use OpenAI's error shape so
the official client raises its usual exceptions. The wire format itself is ``serving.openai_wire``.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from predictors.engines.generate import GenerationRequest, GenerationResult, TextSink
from predictors.tasks.embed import EmbedTask
from predictors.tasks.generate import ChatMessage, GenerateInstance, GenerateTask, GenerationParameters
from serving import item_trace
from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.openai_wire import (
    KZERO_FIELD,
    ChatBody,
    CompletionBody,
    EmbeddingsBody,
    KzeroEmbeddings,
    OpenAIBody,
    SamplingBody,
    json_body,
    openai_error,
    sse,
)
from serving.validation import check_count, documented_body, parse_model

if TYPE_CHECKING:
    from predictors.model import BatchedModel


def _usage(results: list[GenerationResult]) -> dict[str, int]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


Route = Callable[[Request], Awaitable[Response]]


def openai_router(model: BatchedModel) -> APIRouter:
    router = APIRouter(prefix="/openai/v1", tags=["OpenAI"])

    def route(path: str, method: str = "POST", body: type[OpenAIBody] | None = None) -> Callable[[Route], Route]:
        def wrap(handler: Route) -> Route:
            async def endpoint(request: Request) -> Response:
                try:
                    return await handler(request)
                except ServingError as err:
                    return openai_error(err)

            router.add_api_route(path, endpoint, methods=[method], response_model=None,
                                 openapi_extra=documented_body(body) if body else None)
            return handler

        return wrap

    async def body_of(request: Request, schema: type[OpenAIBody]) -> Any:
        body = parse_model(schema, await json_body(request))
        await model.wait_ready()  # adapters are known once the model is loaded
        if body.model != model.name and body.model not in model.adapter_names:
            raise ModelNotFound(body.model, [model.name, *model.adapter_names])
        return body

    def adapter_of(body: OpenAIBody) -> str | None:
        """The ``model`` field names the base model or one of its LoRA adapters (as vLLM and Ray Serve do)."""
        return None if body.model == model.name else body.model

    def task_of(kind: type, operation: str) -> Any:
        task = model.task
        if not isinstance(task, kind):
            raise InvalidInput("model", f"model {model.name!r} does not support {operation}")
        return task

    @route("/models", "GET")
    async def models(_: Request) -> Response:
        def card(name: str, parent: str | None) -> dict[str, Any]:
            return {"id": name, "object": "model", "created": 0, "owned_by": "kzero", "parent": parent}

        cards = [card(model.name, None), *(card(a, model.name) for a in model.adapter_names)]
        return JSONResponse({"object": "list", "data": cards})

    @route("/embeddings", body=EmbeddingsBody)
    async def embeddings(request: Request) -> Response:
        body: EmbeddingsBody = await body_of(request, EmbeddingsBody)
        task: EmbedTask = task_of(EmbedTask, "embeddings")
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise InvalidInput("input", "must not be empty")
        if body.dimensions not in (None, task.engine.dimension):
            raise InvalidInput("dimensions", f"this model only produces {task.engine.dimension} dimensions")

        extension = body.kzero or KzeroEmbeddings()
        parents = item_trace.contexts(extension.traced(), len(texts), KZERO_FIELD)

        def checked() -> tuple[list[str], list[int]]:
            return task.check_texts(texts, "input"), task.engine.count_tokens(texts)

        texts, counts = await asyncio.to_thread(checked)  # tokenizes: off the event loop
        vectors = await model.infer_items(texts, dict(request.headers), "embeddings", parents=parents)
        data = [
            {"object": "embedding", "index": i, "embedding": _encode_vector(v, body.encoding_format)}
            for i, v in enumerate(vectors)
        ]
        tokens = sum(counts)
        reply = {"object": "list", "data": data, "model": model.name,
                 "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        if extension.input_tokens:
            reply[KZERO_FIELD] = {"input_tokens": counts}
        return JSONResponse(reply)

    @route("/completions", body=CompletionBody)
    async def completions(request: Request) -> Response:
        body: CompletionBody = await body_of(request, CompletionBody)
        task: GenerateTask = task_of(GenerateTask, "completions")
        params = task.sampling(parse_model(GenerationParameters, body.parameters(body.max_tokens)), "")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise InvalidInput("prompt", "must not be empty")
        check_count(len(prompts), task.max_instances, "prompt", "prompts")
        fields = ["prompt"] if isinstance(body.prompt, str) else [f"prompt[{i}]" for i in range(len(prompts))]
        ids = await asyncio.to_thread(  # tokenizes: off the event loop
            lambda: [task.encode(GenerateInstance(prompt=p), f) for p, f in zip(prompts, fields, strict=True)])
        reply_id, created, adapter = f"cmpl-{uuid.uuid4().hex}", int(time.time()), adapter_of(body)

        def chunk(text: str, finish: str | None, index: int = 0) -> dict[str, Any]:
            choice = {"index": index, "text": text, "finish_reason": finish, "logprobs": None}
            return {"id": reply_id, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [choice]}

        if body.stream:
            if len(prompts) != 1:
                raise InvalidInput("prompt", "streaming takes a single prompt")
            return _stream(
                model, lambda sink: task.request(ids[0], params, fields[0], sink, adapter), request,
                "text_completion", opening=None, piece=lambda text: chunk(text, None),
                closing=lambda r: chunk("", r.finish_reason),
                usage_chunk=_usage_chunk(body, reply_id, created, body.model, "text_completion"),
            )
        results = await model.infer_items(
            [task.request(i, params, f, adapter=adapter) for i, f in zip(ids, fields, strict=True)],
            dict(request.headers), "text_completion",
        )
        reply = chunk("", None)
        reply["choices"] = [chunk(r.text, r.finish_reason, n)["choices"][0] for n, r in enumerate(results)]
        reply["usage"] = _usage(results)
        return JSONResponse(reply)

    @route("/chat/completions", body=ChatBody)
    async def chat_completions(request: Request) -> Response:
        body: ChatBody = await body_of(request, ChatBody)
        task: GenerateTask = task_of(GenerateTask, "chat completions")
        max_tokens = body.max_completion_tokens or body.max_tokens
        params = task.sampling(parse_model(GenerationParameters, body.parameters(max_tokens)), "")
        instance = GenerateInstance(messages=[ChatMessage(**m.plain()) for m in body.messages])
        ids = await asyncio.to_thread(task.encode, instance, "")
        reply_id, created, adapter = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), adapter_of(body)

        def chunk(delta: dict[str, str], finish: str | None) -> dict[str, Any]:
            return {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

        if body.stream:
            return _stream(
                model, lambda sink: task.request(ids, params, "messages", sink, adapter), request, "chat",
                opening=chunk({"role": "assistant", "content": ""}, None),
                piece=lambda text: chunk({"content": text}, None),
                closing=lambda r: chunk({}, r.finish_reason),
                usage_chunk=_usage_chunk(body, reply_id, created, body.model, "chat.completion.chunk"),
            )
        [result] = await model.infer_items([task.request(ids, params, "messages", adapter=adapter)],
                                           dict(request.headers), "chat")
        message = {"role": "assistant", "content": result.text}
        return JSONResponse({
            "id": reply_id, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": message, "finish_reason": result.finish_reason, "logprobs": None}],
            "usage": _usage([result]),
        })

    return router


def _encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _usage_chunk(
    body: SamplingBody, reply_id: str, created: int, model_name: str, obj: str
) -> Callable[[GenerationResult], dict[str, Any]] | None:
    if not (body.stream_options and body.stream_options.include_usage):
        return None
    return lambda r: {"id": reply_id, "object": obj, "created": created, "model": model_name, "choices": [],
                      "usage": _usage([r])}


def _stream(
    model: BatchedModel,
    build: Callable[[TextSink], GenerationRequest],
    request: Request,
    operation: str,
    *,
    opening: dict[str, Any] | None,
    piece: Callable[[str], dict[str, Any]],
    closing: Callable[[GenerationResult], dict[str, Any]],
    usage_chunk: Callable[[GenerationResult], dict[str, Any]] | None,
) -> StreamingResponse:
    """Stream one generation as SSE; validation and load shedding happen before the first byte.

    The request's span (and the server span around it) ends with the stream, not with the headers.
    """
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()
    item = build(lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text))
    model.check_capacity(1)
    job = asyncio.ensure_future(model.infer_items([item], dict(request.headers), operation))
    # Pieces are queued from the model thread before its batch returns, so the end marker comes last.
    job.add_done_callback(lambda _: pieces.put_nowait(None))

    async def events() -> AsyncIterator[str]:
        try:
            if opening is not None:
                yield sse(opening)
            while (text := await pieces.get()) is not None:
                yield sse(piece(text))
            try:
                [result] = await job
            except ServingError as err:
                yield sse({"error": {"message": str(err), "type": "server_error"}})
                return
            yield sse(closing(result))
            if usage_chunk is not None:
                yield sse(usage_chunk(result))
            yield sse("[DONE]")
        finally:
            job.cancel()

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
