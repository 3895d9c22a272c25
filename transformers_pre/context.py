"""The typed per-request context the chain's steps share; one per request, never shared."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from transformers_pre.filters import SearchScope
from transformers_pre.store import Passage


class RagInstance(BaseModel):
    """One question as a client sends it; unknown fields are rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str
    filter: Any = None  # checked by ``filters.FilterCompiler``, whose errors name the exact part
    top_k: int | None = Field(default=None, ge=1)
    collection: str | None = Field(default=None, min_length=1, max_length=255)
    parameters: dict[str, Any] | None = None


@dataclass
class RagContext:
    instance: RagInstance
    field: str  # where this instance is in the request, for error messages (e.g. "instances[2]")
    headers: Mapping[str, str] = field(default_factory=dict)
    scope: SearchScope | None = None  # set from the instance by validate, or by a route that reads it elsewhere
    question: str = ""
    query_vector: np.ndarray | None = None
    passages: list[Passage] = field(default_factory=list)
    excerpts: list[str] = field(default_factory=list)  # what the prompt shows of each passage (trim); else its text
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str = ""
    answer: str = ""
    mode: str = "generative"  # "extractive" when the ground step answered with a sentence of a passage
    finish_reason: str | None = None
    citations: list[int] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def prediction(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "sources": [p.source() for p in self.passages],
            "citations": self.citations,
            "mode": self.mode,
            "finish_reason": self.finish_reason,
            "usage": self.usage,
        }
