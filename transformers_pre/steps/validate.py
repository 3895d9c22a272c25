"""Normalize the question and reject what cannot be answered, before any work is done for it."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any

from transformers_pre.context import RagContext
from transformers_pre.errors import BadRequest
from transformers_pre.filters import ScopeRules

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Validate:
    max_chars: int
    max_top_k: int
    scope: ScopeRules
    name: str = "validate"

    @classmethod
    def create(cls, deps: Any, max_chars: int | None = None) -> Validate:
        return cls(max_chars or deps.config.max_question_chars, deps.config.max_top_k, deps.scope)

    async def __call__(self, ctx: RagContext) -> None:
        raw = ctx.instance.question
        # Normalizing is linear in the length and a question may be as large as the body limit, so one
        # longer than the limit is normalized off the event loop; a shorter one costs next to nothing.
        question = _normalize(raw) if len(raw) <= self.max_chars else await asyncio.to_thread(_normalize, raw)
        if not question:
            raise BadRequest(f"{ctx.field}.question", "must not be empty")
        if len(question) > self.max_chars:
            too_long = f"{len(question)} characters exceed the limit of {self.max_chars}"
            raise BadRequest(f"{ctx.field}.question", too_long)
        if ctx.instance.top_k is not None and ctx.instance.top_k > self.max_top_k:
            raise BadRequest(f"{ctx.field}.top_k", f"{ctx.instance.top_k} exceeds the limit of {self.max_top_k}")
        if ctx.scope is None:  # the filter and collection are checked before the question is embedded
            ctx.scope = self.scope.resolve(ctx.instance.filter, ctx.instance.collection, ctx.field)
        ctx.question = question


def _normalize(question: str) -> str:
    return _SPACES.sub(" ", question).strip()
