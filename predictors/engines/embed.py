"""Sentence embeddings with sentence-transformers."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from predictors.device import Placement

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class EmbedEngine:
    def __init__(self, model: SentenceTransformer) -> None:
        self._model = model
        # Request validation counts tokens on other threads while the model thread encodes. The model
        # sets its tokenizer's truncation before each encode (mutable state; concurrent use fails with
        # "Already borrowed"), so counting uses a copy that is never truncated.
        self._counter = copy.deepcopy(model.tokenizer)

    @classmethod
    def load(cls, path: Path, placement: Placement) -> EmbedEngine:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=str(placement.device), local_files_only=True)
        if placement.dtype != next(model.parameters()).dtype:
            model = model.to(placement.dtype)
        model.eval()
        return cls(model)

    @property
    def dimension(self) -> int:
        return int(self._model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        return int(self._model.max_seq_length)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encoded = self._counter(list(texts), add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    def batch_key(self, item: str) -> Hashable:
        return None

    def run_batch(self, items: Sequence[str]) -> list[np.ndarray]:
        vectors = self._model.encode(
            list(items), batch_size=len(items), convert_to_numpy=True, show_progress_bar=False
        )
        return list(vectors.astype(np.float32, copy=False))

    def warmup(self) -> None:
        self.run_batch(["warm-up"])
