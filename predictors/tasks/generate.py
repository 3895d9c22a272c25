"""The ``generate`` task: a prompt or chat messages in, text with finish reason and usage out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from kserve.protocol.infer_type import InferRequest, InferResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from predictors.config import EngineConfig, LimitsConfig
from predictors.device import Placement
from predictors.engines.continuous import ContinuousGenerateEngine
from predictors.engines.generate import (
    GenerateEngine,
    GenerationRequest,
    GenerationResult,
    SamplingParams,
    TextSink,
)
from predictors.engines.lora import AdapterNotFound
from serving.errors import InvalidInput
from serving.v2_wire import model_parameters, tensor, v2_response
from serving.validation import field_path, parse_model, utf8_size, v1_instances, v2_texts

MAX_STOP_STRINGS = 4


class GenerationParameters(BaseModel):
    """Request parameters; unknown names are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, ge=0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=2.0)
    adapter: str | None = Field(default=None, min_length=1, description="a loaded LoRA adapter; none: the base model")

    @model_validator(mode="after")
    def _check_stop(self) -> GenerationParameters:
        stops = self.stop_strings
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"stop: at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop: stop strings must not be empty")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class GenerateInstance(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_of(self) -> GenerateInstance:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class GenerateTask:
    def __init__(self, engine: GenerateEngine | ContinuousGenerateEngine, limits: LimitsConfig) -> None:
        self.engine = engine
        self._limits = limits

    @classmethod
    def load(
        cls, path: Path, placement: Placement, limits: LimitsConfig, engine: EngineConfig | None = None
    ) -> GenerateTask:
        base = GenerateEngine.load(path, placement)
        engine = engine or EngineConfig()
        if engine.engine == "static":
            return cls(base, limits)
        return cls(ContinuousGenerateEngine.for_budget(
            base, kv_cache_memory_gb=engine.kv_cache_memory_gb, max_num_seqs=engine.max_num_seqs,
            max_batch_tokens=engine.max_batch_tokens, page_size=engine.kv_page_size), limits)

    @property
    def continuous(self) -> bool:
        return isinstance(self.engine, ContinuousGenerateEngine)

    @property
    def max_instances(self) -> int:
        return self._limits.max_instances

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return self.engine.adapters.names if isinstance(self.engine, GenerateEngine) else ()

    def adapter(self, name: str | None) -> str | None:
        """The adapter a request names (None: the base model); one that is not loaded is a 404 naming it."""
        if name is not None and name not in self.adapter_names:
            raise AdapterNotFound(name, self.adapter_names)
        return name

    def sampling(self, parameters: GenerationParameters, field: str = "parameters") -> SamplingParams:
        limit = self._limits.max_new_tokens
        max_new = parameters.max_new_tokens or min(self._limits.default_max_new_tokens, limit)
        if max_new > limit:
            raise InvalidInput(field_path(field, ("max_new_tokens",)), f"{max_new} exceeds the limit of {limit}")
        if parameters.min_tokens > max_new:
            raise InvalidInput(field_path(field, ("min_tokens",)),
                               f"{parameters.min_tokens} is more than max_new_tokens ({max_new})")
        if parameters.repetition_penalty != 1.0 and self.continuous:
            # transformers' per-request processors see scores only, not each row's earlier tokens.
            raise InvalidInput(field_path(field, ("repetition_penalty",)),
                               "a repetition penalty needs the static engine (--engine static)")
        return SamplingParams(
            max_new_tokens=max_new,
            temperature=parameters.temperature,
            top_p=parameters.top_p,
            stop=parameters.stop_strings,
            seed=parameters.seed,
            ignore_eos=parameters.ignore_eos,
            min_tokens=parameters.min_tokens,
            repetition_penalty=parameters.repetition_penalty,
        )

    def encode(self, instance: GenerateInstance, field: str) -> tuple[int, ...]:
        """Token ids of a prompt or chat; this tokenizes, so servers call it off the event loop."""
        if instance.messages is not None:
            for j, message in enumerate(instance.messages):  # no tokenizer or template takes a lone surrogate
                utf8_size(message.content, field_path(field, ("messages", j, "content")))
            try:
                return self.engine.encode_chat([m.model_dump() for m in instance.messages])
            except ValueError as err:
                raise InvalidInput(f"{field}.messages", str(err)) from err
        assert instance.prompt is not None
        if not utf8_size(instance.prompt, field_path(field, ("prompt",))):
            raise InvalidInput(f"{field}.prompt", "must not be empty")
        return self.engine.encode_prompt(instance.prompt)

    def request(
        self, prompt_ids: tuple[int, ...], params: SamplingParams, field: str, on_text: TextSink | None = None,
        adapter: str | None = None,
    ) -> GenerationRequest:
        limit = min(self._limits.max_input_tokens, self.engine.context_length - params.max_new_tokens)
        if len(prompt_ids) > limit:
            raise InvalidInput(field, f"prompt has {len(prompt_ids)} tokens; the limit is {limit}")
        request = GenerationRequest(prompt_ids, params, on_text, adapter)
        if isinstance(self.engine, ContinuousGenerateEngine):
            needed, budget = self.engine.tokens_needed(request), self.engine.kv_cache_tokens
            if needed > budget:
                raise InvalidInput(field, f"prompt ({len(prompt_ids)} tokens) plus max_new_tokens "
                                          f"({params.max_new_tokens}) needs {needed} KV cache tokens; the cache "
                                          f"(--kv_cache_memory_gb) holds {budget}")
        return request

    def cheap_v1(self, body: Mapping[str, Any]) -> bool:
        return False  # every prompt is tokenized to check its length

    def from_v1(self, body: Mapping[str, Any]) -> list[GenerationRequest]:
        instances = v1_instances(body, self._limits.max_instances)
        raw = body.get("parameters")
        parameters = parse_model(GenerationParameters, {} if raw is None else raw, "parameters")
        params, adapter = self.sampling(parameters), self.adapter(parameters.adapter)
        requests = []
        for i, raw in enumerate(instances):
            field = f"instances[{i}]"
            instance = parse_model(GenerateInstance, {"prompt": raw} if isinstance(raw, str) else raw, field)
            requests.append(self.request(self.encode(instance, field), params, field, adapter=adapter))
        return requests

    def to_v1(self, outputs: Sequence[GenerationResult]) -> dict[str, Any]:
        return {
            "predictions": [
                {
                    "text": out.text,
                    "finish_reason": out.finish_reason,
                    "usage": {"prompt_tokens": out.prompt_tokens, "completion_tokens": out.completion_tokens},
                }
                for out in outputs
            ]
        }

    def from_v2(self, request: InferRequest) -> list[GenerationRequest]:
        texts = v2_texts(request, "text", self._limits.max_instances)
        parameters = parse_model(GenerationParameters, model_parameters(request), "parameters")
        params, adapter = self.sampling(parameters), self.adapter(parameters.adapter)
        requests = []
        for i, text in enumerate(texts):
            field = f"inputs.text[{i}]"
            requests.append(self.request(self.encode(GenerateInstance(prompt=text), field), params, field,
                                         adapter=adapter))
        return requests

    def to_v2(self, outputs: Sequence[GenerationResult], request: InferRequest) -> InferResponse:
        return v2_response(request, [tensor("text", "BYTES", np.array([o.text for o in outputs], dtype=object))])

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        )
