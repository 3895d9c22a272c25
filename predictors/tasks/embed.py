"""The ``embed`` task: text in, one float32 vector per text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kserve.protocol.infer_type import InferRequest, InferResponse

from predictors.config import LimitsConfig
from predictors.device import Placement
from predictors.engines.embed import EmbedEngine
from serving.errors import InvalidInput
from serving.v2_wire import tensor, v2_response
from serving.validation import check_count, utf8_size, v1_instances, v2_texts

_SPECIAL_TOKENS = 4  # room for [CLS]/[SEP]-style tokens a tokenizer adds
INLINE_TEXTS = 64  # a v1 request of at most this many short texts is checked on the event loop


class EmbedTask:
    def __init__(self, engine: EmbedEngine, limits: LimitsConfig) -> None:
        self.engine = engine
        self._limits = limits

    @classmethod
    def load(cls, path: Path, placement: Placement, limits: LimitsConfig, *, graph: bool = True) -> EmbedTask:
        return cls(EmbedEngine.load(path, placement, graph=graph), limits)

    def check_texts(self, texts: Sequence[Any], field: str) -> list[str]:
        """The texts, checked; this tokenizes long ones, so servers call it off the event loop."""
        check_count(len(texts), self._limits.max_instances, field, "texts")
        sizes = [utf8_size(text, f"{field}[{i}]") for i, text in enumerate(texts)]
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidInput(f"{field}[{i}]", "must not be empty")
        limit = min(self.engine.max_tokens, self._limits.max_input_tokens)
        # A token covers at least one UTF-8 byte, so short texts need no tokenizer pass here.
        long = [i for i, size in enumerate(sizes) if size + _SPECIAL_TOKENS > limit]
        for i, count in zip(long, self.engine.count_tokens([texts[i] for i in long]), strict=True):
            if count > limit:
                raise InvalidInput(f"{field}[{i}]", f"{count} tokens exceed the model's limit of {limit}")
        return list(texts)

    def cheap_v1(self, body: Mapping[str, Any]) -> bool:
        instances = body.get("instances") if isinstance(body, Mapping) else None  # a bad body: from_v1 says why
        if not isinstance(instances, list) or len(instances) > INLINE_TEXTS:
            return False
        # Four UTF-8 bytes per character at most: a text this short is never tokenized by check_texts.
        chars = (min(self.engine.max_tokens, self._limits.max_input_tokens) - _SPECIAL_TOKENS) // 4
        return all(isinstance(text, str) and len(text) <= chars for text in instances)

    def from_v1(self, body: Mapping[str, Any]) -> list[str]:
        instances = v1_instances(body, self._limits.max_instances)
        parameters = body.get("parameters")
        if parameters:
            if not isinstance(parameters, Mapping):
                raise InvalidInput("parameters", f"expected a JSON object, got {type(parameters).__name__}")
            raise InvalidInput(f"parameters.{next(iter(parameters))}", "unknown parameter for embed")
        texts = [i["text"] if isinstance(i, Mapping) and set(i) == {"text"} else i for i in instances]
        return self.check_texts(texts, "instances")

    def to_v1(self, outputs: Sequence[np.ndarray]) -> dict[str, Any]:
        return {"predictions": [vector.tolist() for vector in outputs]}

    def from_v2(self, request: InferRequest) -> list[str]:
        return self.check_texts(v2_texts(request, "text", self._limits.max_instances), "inputs.text")

    def to_v2(self, outputs: Sequence[np.ndarray], request: InferRequest) -> InferResponse:
        return v2_response(request, [tensor("embedding", "FP32", np.stack(outputs).astype(np.float32))])

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return (
            [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            [{"name": "embedding", "datatype": "FP32", "shape": [-1, self.engine.dimension]}],
        )
