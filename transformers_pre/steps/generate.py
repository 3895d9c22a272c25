"""Call the generation predictor with our own client: timeouts, working retries, trace headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from observability import semconv
from serving.client import (
    CallFailed,
    PermanentCallError,
    PredictorClient,
    TransientCallError,
    Unauthorized,
    record_usage,
)
from serving.retry import RetryPolicy, call_with_retries
from transformers_pre.context import RagContext
from transformers_pre.errors import BadRequest, PredictorUnavailable

_PARAMETERS = {"max_new_tokens", "temperature", "top_p", "seed", "stop", "repetition_penalty"}


@dataclass(frozen=True)
class Generate:
    client: PredictorClient
    model: str
    protocol: str
    retry: RetryPolicy
    max_new_tokens: int
    stop: tuple[str, ...] = ()
    on_retry: Callable[[int, TransientCallError], None] | None = None
    name: str = "generate"

    @classmethod
    def create(cls, deps: Any, max_new_tokens: int | None = None, stop: list[str] | None = None) -> Generate:
        config = deps.config
        if stop is not None and (not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop)):
            raise ValueError("stop must be a list of non-empty strings")
        return cls(deps.predictor, config.predictor_model, config.predictor_protocol, config.retry,
                   max_new_tokens or config.max_new_tokens, tuple(stop or ()),
                   on_retry=lambda *_: deps.metrics.retried(config.predictor_model))

    def body(self, ctx: RagContext) -> dict[str, Any]:
        defaults: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "temperature": 0.0}
        if self.stop:  # e.g. "\n\n" for a small model, whose first paragraph is its answer and the rest drift
            defaults["stop"] = list(self.stop)
        parameters = {**defaults, **(ctx.instance.parameters or {})}
        unknown = sorted(set(parameters) - _PARAMETERS)
        if unknown:
            raise BadRequest(f"{ctx.field}.parameters.{unknown[0]}", "unknown parameter")
        # v2 and gRPC carry text only, so they get the rendered prompt; v1 gets the chat messages.
        instance = {"messages": ctx.messages} if self.protocol == "v1" else {"prompt": ctx.prompt}
        return {"instances": [instance], "parameters": parameters}

    async def __call__(self, ctx: RagContext) -> None:
        body = self.body(ctx)
        span = trace.get_current_span()
        span.set_attributes({semconv.GEN_AI_OPERATION: "chat" if self.protocol == "v1" else "text_completion",
                             semconv.GEN_AI_REQUEST_MODEL: self.model})
        if isinstance(max_tokens := body["parameters"]["max_new_tokens"], int):
            span.set_attribute(semconv.GEN_AI_REQUEST_MAX_TOKENS, max_tokens)
        try:
            response, _ = await call_with_retries(
                lambda: self.client.predict(self.model, body, ctx.headers), self.retry, on_retry=self.on_retry
            )
        except Unauthorized as err:  # our deployment's fault, not the caller's: 503, not 400
            raise PredictorUnavailable(f"{err}; check KZERO_PREDICTOR_API_KEY") from err
        except PermanentCallError as err:
            raise BadRequest(f"{ctx.field}.parameters", f"the predictor rejected the request: {err}") from err
        except CallFailed as err:
            raise PredictorUnavailable(f"predictor unavailable: {err}") from err
        [prediction] = response["predictions"]
        if isinstance(prediction, str):
            prediction = {"text": prediction}
        ctx.answer = prediction.get("text", "")
        ctx.finish_reason = prediction.get("finish_reason")
        ctx.usage.update(prediction.get("usage") or {})
        record_usage(span, ctx.usage)
