"""Sentence embeddings with sentence-transformers."""

from __future__ import annotations

import copy
import functools
import threading
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
        # The model's tokenizer is mutable state (truncation set per call): batches computed at once
        # tokenize one at a time and run their forward passes side by side.
        self._tokenizing = threading.Lock()
        # On a CPU, two batches side by side with half the threads each beat one batch on all threads
        # (bench/embed_batching.py: the intra-op threads of one forward wait for each other, and for the
        # event loop, on every small operation); a GPU runs one batch at a time.
        self.parallel_batches = 2 if model.device.type == "cpu" and _threads() >= 2 else 1
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

    def use_threads(self, batches: int) -> None:
        """Share the CPU's threads among ``batches`` computed at once."""
        if batches > 1 and self._model.device.type == "cpu":
            import torch

            torch.set_num_threads(max(1, _threads() // batches))

    def run_batch(self, items: Sequence[str]) -> list[np.ndarray]:
        """``SentenceTransformer.encode`` of one batch, split so that only tokenizing is serialized."""
        import torch
        from sentence_transformers.util import batch_to_device

        with self._tokenizing:
            features = self._model.tokenize(list(items))
        features = batch_to_device(features, self._model.device)
        with torch.inference_mode():
            vectors = self._model(features)["sentence_embedding"]
        return list(vectors.float().cpu().numpy())

    def warmup(self) -> None:
        self.run_batch(["warm-up"])


@functools.cache  # before ``use_threads`` lowered them: a reloaded model shares the same threads again
def _threads() -> int:
    """torch's intra-op threads: the cores, or OMP_NUM_THREADS where a deployment sets it to its CPU limit."""
    import torch

    return int(torch.get_num_threads())
