"""Usage accounting: tokens from the predictor plus what retrieval did."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers_pre.context import RagContext


@dataclass(frozen=True)
class Usage:
    name: str = "usage"

    @classmethod
    def create(cls, deps: Any) -> Usage:
        return cls()

    async def __call__(self, ctx: RagContext) -> None:
        prompt = int(ctx.usage.get("prompt_tokens", 0))
        completion = int(ctx.usage.get("completion_tokens", 0))
        ctx.usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "passages": len(ctx.passages),
        }
