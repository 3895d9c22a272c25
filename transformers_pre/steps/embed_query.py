"""Embed the question with the same embedder the corpus was ingested with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opentelemetry import trace

from observability import semconv
from transformers_pre.context import RagContext
from transformers_pre.embedder import Embedder


@dataclass(frozen=True)
class EmbedQuery:
    embedder: Embedder
    name: str = "embed_query"

    @classmethod
    def create(cls, deps: Any) -> EmbedQuery:
        return cls(deps.embedder)

    async def __call__(self, ctx: RagContext) -> None:
        trace.get_current_span().set_attributes(
            {semconv.GEN_AI_OPERATION: "embeddings", semconv.GEN_AI_REQUEST_MODEL: self.embedder.model})
        ctx.query_vector = (await self.embedder.embed([ctx.question], ctx.headers))[0]
