"""Cut the answer where it starts repeating itself.

Greedy decoding of a small model falls into loops ("[1] # Asking a question" six times, one wrong
sentence until ``max_tokens``). The predictor's decoding has no repetition penalty per request, so
the transformer ends the answer before the first repeated ``ngram``-word sequence, at the end of
the last whole sentence before it when there is one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers_pre.context import RagContext
from transformers_pre.sentences import first_repeat

_PARTIAL_TOKEN = re.compile(r"\S*$")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")  # not the dot inside "kzero.dlq"


@dataclass(frozen=True)
class NoRepeat:
    ngram: int = 4
    name: str = "no_repeat"

    @classmethod
    def create(cls, deps: Any, ngram: int = 4) -> NoRepeat:
        if ngram < 2:
            raise ValueError("ngram must be at least 2")
        return cls(ngram)

    async def __call__(self, ctx: RagContext) -> None:
        ctx.answer = truncate_repeats(ctx.answer, self.ngram)


def truncate_repeats(text: str, ngram: int) -> str:
    cut = first_repeat(text, ngram)
    if cut is None:
        return text
    head = _PARTIAL_TOKEN.sub("", text[:cut]).rstrip()  # the "[" of a repeated "[1]" goes too
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    return (head[: ends[-1]] if ends else head).strip()
