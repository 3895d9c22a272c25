"""Vector search (optionally hybrid with BM25) with a metadata filter and a score threshold."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from observability import semconv
from transformers_pre.context import RagContext
from transformers_pre.errors import BadRequest
from transformers_pre.store import SearchMode, VectorStore


@dataclass(frozen=True)
class Retrieve:
    store: VectorStore
    top_k: int
    min_score: float | None
    mode: SearchMode
    tracer: trace.Tracer
    name: str = "retrieve"

    @classmethod
    def create(cls, deps: Any, top_k: int | None = None, min_score: float | None = None,
               mode: SearchMode | None = None) -> Retrieve:
        config = deps.config
        return cls(deps.store, top_k or config.top_k, min_score if min_score is not None else config.min_score,
                   mode or config.search_mode, deps.tracer)

    async def __call__(self, ctx: RagContext) -> None:
        assert ctx.query_vector is not None, "retrieve needs embed_query before it"
        filter_ = ctx.instance.filter
        if isinstance(filter_, str) and len(filter_) > 2000:
            raise BadRequest(f"{ctx.field}.filter", "longer than 2000 characters")
        collection = ctx.instance.collection or self.store.collection
        attributes = {semconv.DB_SYSTEM: "milvus", semconv.DB_OPERATION: "search", semconv.DB_COLLECTION: collection}
        with self.tracer.start_as_current_span(f"search {collection}", kind=SpanKind.CLIENT,
                                               attributes=attributes) as span:
            # pymilvus is synchronous; keep the event loop free while it searches.
            ctx.passages = await asyncio.to_thread(
                self.store.search, ctx.query_vector, ctx.instance.top_k or self.top_k, filter=filter_,
                min_score=self.min_score, query_text=ctx.question, mode=self.mode, collection=collection,
            )
            span.set_attribute(semconv.KZERO_PASSAGES, len(ctx.passages))
