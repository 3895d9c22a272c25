"""Build the prompt: numbered context passages (or their trimmed excerpts), then the question."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers_pre.context import RagContext

SYSTEM = (
    "You answer questions using only the numbered context passages. "
    "Cite the passages you use as [1], [2]. If the context does not contain the answer, say you do not know."
)
TEMPLATE = "Context:\n{context}\n\nQuestion: {question}\nAnswer:"


@dataclass(frozen=True)
class BuildPrompt:
    system: str = SYSTEM
    template: str = TEMPLATE
    max_passage_chars: int = 1200
    name: str = "prompt"

    @classmethod
    def create(cls, deps: Any, system: str = SYSTEM, template: str = TEMPLATE,
               max_passage_chars: int = 1200) -> BuildPrompt:
        if "{context}" not in template or "{question}" not in template:
            raise ValueError("template must contain {context} and {question}")
        return cls(system, template, max_passage_chars)

    async def __call__(self, ctx: RagContext) -> None:
        texts = ctx.excerpts or [p.text for p in ctx.passages]  # trimmed to the nearest sentences by trim
        context = "\n".join(
            f"[{i}] {text[: self.max_passage_chars]}" for i, text in enumerate(texts, start=1)
        ) or "(no passages found)"
        user = self.template.format(context=context, question=ctx.question)
        ctx.messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        ctx.prompt = f"{self.system}\n\n{user}"
