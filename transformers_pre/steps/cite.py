"""Post-process the answer: strip it and record which numbered passages it cites."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers_pre.context import RagContext

_MARKER = re.compile(r"\[(\d{1,3})\]")


@dataclass(frozen=True)
class Cite:
    name: str = "cite"

    @classmethod
    def create(cls, deps: Any) -> Cite:
        return cls()

    async def __call__(self, ctx: RagContext) -> None:
        ctx.answer = ctx.answer.strip()
        cited = {int(n) for n in _MARKER.findall(ctx.answer)}
        ctx.citations = sorted(n for n in cited if 1 <= n <= len(ctx.passages))
