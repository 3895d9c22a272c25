"""Vector search (optionally hybrid with BM25) in a served collection, with a filter and a score threshold."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from observability import semconv
from transformers_pre.context import RagContext
from transformers_pre.errors import BadRequest
from transformers_pre.filters import ScopeRules
from transformers_pre.store import SearchMode, VectorStore


@dataclass(frozen=True)
class Retrieve:
    store: VectorStore
    scope: ScopeRules
    top_k: int
    min_score: float | None
    mode: SearchMode
    tracer: trace.Tracer
    name: str = "retrieve"

    @classmethod
    def create(cls, deps: Any, top_k: int | None = None, min_score: float | None = None,
               mode: SearchMode | None = None) -> Retrieve:
        config = deps.config
        return cls(deps.store, deps.scope, top_k or config.top_k,
                   min_score if min_score is not None else config.min_score, mode or config.search_mode, deps.tracer)

    async def __call__(self, ctx: RagContext) -> None:
        assert ctx.query_vector is not None, "retrieve needs embed_query before it"
        # Resolved here too, so a chain configured without validate still searches only what it may.
        scope = ctx.scope or self.scope.resolve(ctx.instance.filter, ctx.instance.collection, ctx.field)
        collection = scope.collection
        attributes = {semconv.DB_SYSTEM: "milvus", semconv.DB_OPERATION: "search", semconv.DB_COLLECTION: collection}
        with self.tracer.start_as_current_span(f"search {collection}", kind=SpanKind.CLIENT,
                                               attributes=attributes) as span:
            try:  # pymilvus is synchronous; keep the event loop free while it searches.
                ctx.passages = await asyncio.to_thread(
                    self.store.search, ctx.query_vector, ctx.instance.top_k or self.top_k, filter=scope.expression,
                    min_score=self.min_score, query_text=ctx.question, mode=self.mode, collection=collection,
                )
            except BadRequest as err:  # the store cannot know where the filter was in the request
                raise BadRequest(scope.field, err.problem) from err
            span.set_attribute(semconv.KZERO_PASSAGES, len(ctx.passages))
