"""Normalize the question and reject what cannot be answered."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers_pre.context import RagContext
from transformers_pre.errors import BadRequest

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Validate:
    max_chars: int
    max_top_k: int
    name: str = "validate"

    @classmethod
    def create(cls, deps: Any, max_chars: int | None = None) -> Validate:
        return cls(max_chars or deps.config.max_question_chars, deps.config.max_top_k)

    async def __call__(self, ctx: RagContext) -> None:
        question = _SPACES.sub(" ", ctx.instance.question).strip()
        if not question:
            raise BadRequest(f"{ctx.field}.question", "must not be empty")
        if len(question) > self.max_chars:
            too_long = f"{len(question)} characters exceed the limit of {self.max_chars}"
            raise BadRequest(f"{ctx.field}.question", too_long)
        if ctx.instance.top_k is not None and ctx.instance.top_k > self.max_top_k:
            raise BadRequest(f"{ctx.field}.top_k", f"{ctx.instance.top_k} exceeds the limit of {self.max_top_k}")
        ctx.question = question
