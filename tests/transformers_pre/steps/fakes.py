"""Fakes for the answer steps: a bag-of-words embedder and a context with passages."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from transformers_pre.context import RagContext, RagInstance
from transformers_pre.sentences import content_words
from transformers_pre.store import Passage

DIM = 256


class WordsEmbedder:
    """Texts sharing content words get similar vectors, so nearness is checkable by eye."""

    model = "words"
    dimension = DIM

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def embed(self, texts: Sequence[str], headers: Mapping[str, str] | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([vector(t) for t in texts])


def vector(text: str) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for word in content_words(text):
        v[int(hashlib.sha256(word.encode()).hexdigest(), 16) % DIM] += 1.0
    norm = np.linalg.norm(v)
    return v / norm if norm else v


def context(question: str, passages: list[str], answer: str = "", citations: list[int] | None = None) -> RagContext:
    ctx = RagContext(RagInstance(question=question), "instances[0]")
    ctx.question = question
    ctx.query_vector = vector(question)
    ctx.passages = [Passage(f"doc-{i}", 0, text, 1.0 - i / 10) for i, text in enumerate(passages)]
    ctx.answer = answer
    ctx.citations = citations or []
    return ctx
