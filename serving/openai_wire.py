"""OpenAI's wire format as kzero's servers speak it: request bodies, the error shape, server-sent events.

The predictor's routes (``predictors.openai_api``) and the transformer's chat relay
(``transformers_pre.openai_api``) both parse with these models, so an unknown field or an
unsupported option is the same 400 naming the field on either.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.errors import InvalidInput, ModelNotFound, ServingError
from serving.status import http_status, retry_headers
from serving.validation import read_json


class OpenAIBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    user: str | None = None


KZERO_FIELD = "kzero"


class KzeroEmbeddings(BaseModel):
    """kzero's own field of an embeddings request, for a caller that merges many requests into one call
    (the Kafka worker): ``input_tokens`` asks for each input's token count, in the reply's ``kzero``
    field, so each request can get its own ``usage``; ``traceparents``/``tracestates`` carry each input's
    trace context (``serving.item_trace``). The official client sends it as ``extra_body`` and keeps the
    reply's extra field as an extra attribute; a reply to a request without it has no ``kzero`` key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: bool = False
    traceparents: list[str | None] | None = None
    tracestates: list[str | None] | None = None

    def traced(self) -> dict[str, Any]:
        """The trace fields given, as ``item_trace.contexts`` reads them."""
        return self.model_dump(include={"traceparents", "tracestates"}, exclude_none=True)


class EmbeddingsBody(OpenAIBody):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    kzero: KzeroEmbeddings | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    include_usage: bool = False


class SamplingBody(OpenAIBody):
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Literal[0] = 0
    frequency_penalty: Literal[0] = 0
    # Extras vLLM's OpenAI server accepts too: fixed output lengths for benchmarks, a floor on the length.
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)

    def parameters(self, max_tokens: int | None) -> dict[str, Any]:
        return {"max_new_tokens": max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "stop": self.stop, "seed": self.seed, "ignore_eos": self.ignore_eos, "min_tokens": self.min_tokens,
                "repetition_penalty": self.repetition_penalty}


class CompletionBody(SamplingBody):
    prompt: str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: Literal[False] = False
    logprobs: None = None


class TextPart(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["text"]
    text: str


class OpenAIMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def plain(self) -> dict[str, str]:
        """``{"role", "content"}`` as the v1 chat messages take it: the text joined, ``developer`` as ``system``."""
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatBody(SamplingBody):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: Literal[False] = False


def openai_error(err: ServingError) -> JSONResponse:
    """OpenAI's error shape, so the official client raises its usual exceptions."""
    status = http_status(err)
    kind = "invalid_request_error" if status < 500 else "server_error"
    param = err.field if isinstance(err, InvalidInput) else None
    code = "model_not_found" if isinstance(err, ModelNotFound) else None
    body = {"error": {"message": str(err), "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=retry_headers(err))


async def json_body(request: Request) -> Any:
    return await read_json(await request.body())


def sse(payload: dict[str, Any] | str) -> str:
    """One server-sent event: ``data: <JSON or text>`` and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"
