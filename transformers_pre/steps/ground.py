"""Check that the answer says what its cited passages say; otherwise quote the top passage.

The answer is compared with the passages it cites (``overlap``: the share of its content words
found there; ``embedding``: cosine similarity with the nearest cited passage). An answer that cites
nothing is compared with every passage, and cites the one it matches best if that one passes. An
answer that passes nothing is replaced, with ``fallback`` on, by the sentence of the top passage
nearest the question, cited as [1] and marked ``mode: "extractive"``: a quoted fact instead of an
invented one. A deployment with a generator it trusts turns ``fallback`` off (the check then only
records its score on the span) or leaves the step out of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from opentelemetry import trace

from observability import semconv
from transformers_pre.context import RagContext
from transformers_pre.embedder import Embedder
from transformers_pre.sentences import overlap, sentences

Method = Literal["overlap", "embedding"]
THRESHOLDS: dict[str, float] = {"overlap": 0.6, "embedding": 0.6}


@dataclass(frozen=True)
class Ground:
    embedder: Embedder
    method: Method = "overlap"
    threshold: float = THRESHOLDS["overlap"]
    fallback: bool = True
    name: str = "ground"

    @classmethod
    def create(cls, deps: Any, method: Method = "overlap", threshold: float | None = None,
               fallback: bool = True) -> Ground:
        if method not in THRESHOLDS:
            raise ValueError(f"method must be one of {', '.join(THRESHOLDS)}")
        threshold = THRESHOLDS[method] if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise ValueError("threshold must be between 0 and 1")
        return cls(deps.embedder, method, threshold, fallback)

    async def scores(self, ctx: RagContext, candidates: list[int]) -> list[float]:
        """How well the answer matches each candidate passage (1-based numbers)."""
        texts = [ctx.passages[n - 1].text for n in candidates]
        if self.method == "overlap":
            return [overlap(ctx.answer, [t]) for t in texts]
        vectors = await self.embedder.embed([ctx.answer, *texts], ctx.headers)
        return [float(v) for v in vectors[1:] @ vectors[0]]

    async def __call__(self, ctx: RagContext) -> None:
        if not ctx.passages:
            return
        candidates = ctx.citations or list(range(1, len(ctx.passages) + 1))
        scores = await self.scores(ctx, candidates) if ctx.answer.strip() else [0.0] * len(candidates)
        best = int(np.argmax(scores))
        span = trace.get_current_span()
        span.set_attribute(semconv.KZERO_GROUNDING_SCORE, scores[best])
        if scores[best] >= self.threshold:
            if not ctx.citations:
                ctx.citations = [candidates[best]]
        elif self.fallback:
            ctx.answer = f"{await self.quote(ctx)} [1]"
            ctx.citations = [1]
            ctx.mode = "extractive"
        span.set_attribute(semconv.KZERO_ANSWER_MODE, ctx.mode)

    async def quote(self, ctx: RagContext) -> str:
        """The sentence of the top passage nearest the question."""
        top = ctx.passages[0].text
        found = sentences(top) or [" ".join(top.split())]
        if len(found) == 1 or ctx.query_vector is None:
            return found[0]
        scores = (await self.embedder.embed(found, ctx.headers)) @ ctx.query_vector
        return found[int(np.argmax(scores))]
