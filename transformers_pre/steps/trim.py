"""Trim each passage to the sentences nearest the question, for the prompt only.

A 135M generator copies whatever is in front of it, so the prompt shows it only the sentences the
embedder scores closest to the question (in their original order); the sources a caller gets back
keep the whole passage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from transformers_pre.context import RagContext
from transformers_pre.embedder import Embedder
from transformers_pre.sentences import sentences


@dataclass(frozen=True)
class Trim:
    embedder: Embedder
    sentences: int = 2
    name: str = "trim"

    @classmethod
    def create(cls, deps: Any, sentences: int = 2) -> Trim:
        if sentences < 1:
            raise ValueError("sentences must be at least 1")
        return cls(deps.embedder, sentences)

    async def __call__(self, ctx: RagContext) -> None:
        assert ctx.query_vector is not None, "trim needs embed_query before it"
        split = [sentences(p.text) or [p.text] for p in ctx.passages]
        flat = [s for group in split for s in group]
        if not flat:
            ctx.excerpts = []
            return
        # One embedder call for every sentence of every passage: a handful of short texts.
        scores = (await self.embedder.embed(flat, ctx.headers)) @ ctx.query_vector
        excerpts, at = [], 0
        for group in split:
            mine = np.asarray(scores[at : at + len(group)])
            at += len(group)
            keep = sorted(np.argsort(-mine, kind="stable")[: self.sentences].tolist())
            excerpts.append(" ".join(group[i] for i in keep))
        ctx.excerpts = excerpts
