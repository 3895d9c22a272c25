"""Sentence embeddings with sentence-transformers."""

from __future__ import annotations

import copy
import functools
import logging
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from predictors.device import Placement

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)


class EmbedEngine:
    def __init__(self, model: SentenceTransformer, *, graph: bool = True) -> None:
        self._model = model
        # On a CPU the encoder runs as one TorchScript graph where it traces and checks out: an eager forward
        # takes the GIL back after each of its ~150 operations, so a busy event loop stalls it at every one
        # (two forward passes side by side with a thread running Python: 43 texts/s eager, 299 traced).
        self._traced = trace_encoder(model) if graph and model.device.type == "cpu" else None
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
    def load(cls, path: Path, placement: Placement, *, graph: bool = True) -> EmbedEngine:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=str(placement.device), local_files_only=True)
        if placement.dtype != next(model.parameters()).dtype:
            model = model.to(placement.dtype)
        model.eval()
        return cls(model, graph=graph)

    @property
    def graph(self) -> bool:
        """Whether the encoder runs as a traced graph (else eagerly, module by module)."""
        return self._traced is not None

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
            features = self._model.preprocess(list(items))
        features = batch_to_device(features, self._model.device)
        with torch.inference_mode():
            vectors = _encode(self._model, self._traced, features)
        return list(vectors.float().cpu().numpy())

    def warmup(self) -> None:
        self.run_batch(["warm-up"])


@functools.cache  # before ``use_threads`` lowered them: a reloaded model shares the same threads again
def _threads() -> int:
    """torch's intra-op threads: the cores, or OMP_NUM_THREADS where a deployment sets it to its CPU limit."""
    import torch

    return int(torch.get_num_threads())


# The encoder's inputs the graph may take, in its argument order, as the tokenizer names them.
_GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
Encoder = Callable[[Mapping[str, Any]], Any]
"""Tokenized features to the transformer's token embeddings."""
# Texts the traced graph is checked on against the eager model before it is used: padded and unpadded
# batches, one text, and one long enough to be truncated.
_CHECK_TEXTS = (["graph check", "a longer text for the traced graph to pad the other one against"], ["one"],
                ["word " * 600])
_CHECK_TOLERANCE = 1e-4


def _encode(model: SentenceTransformer, encoder: Encoder | None, features: dict[str, Any]) -> Any:
    """The sentence embeddings of tokenized ``features``: the traced encoder, then the model's own later
    modules (pooling, normalizing), or the whole model eagerly when there is no traced encoder."""
    if encoder is None:
        return model(features)["sentence_embedding"]
    features["token_embeddings"] = encoder(features)
    for module in list(model)[1:]:
        features = module(features)
    return features["sentence_embedding"]


def trace_encoder(model: SentenceTransformer) -> Encoder | None:
    """The model's transformer as a frozen TorchScript graph, or None where it cannot be used.

    Only a text model whose first module is sentence-transformers' ``Transformer`` over a Hugging Face
    encoder is traced, and only a graph whose embeddings match the eager model's on ``_CHECK_TEXTS`` is
    kept: tracing records one path through the model's Python, so anything else runs eagerly.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Transformer

    first = model[0] if len(model) else None
    if not isinstance(first, Transformer) or getattr(first, "module_output_name", None) != "token_embeddings":
        return None
    names = [name for name in _GRAPH_INPUTS if name in model.preprocess(["x"])]
    if names[:2] != ["input_ids", "attention_mask"]:
        return None
    started = time.perf_counter()
    try:
        encoder = _last_hidden_state_module()(first.auto_model, names).eval()
        example = model.preprocess(list(_CHECK_TEXTS[0]))  # padded: the graph keeps the attention mask
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # torch's notes on tracing and its deprecation; checked below
            graph = torch.jit.freeze(torch.jit.trace(encoder, tuple(example[n] for n in names), check_trace=False))

            def traced_encoder(features: Mapping[str, Any]) -> Any:
                return graph(*(features[name] for name in names))

            for texts in _CHECK_TEXTS:
                features = model.preprocess(list(texts))
                eager = model(dict(features))["sentence_embedding"]
                traced = _encode(model, traced_encoder, dict(features))
                if not torch.allclose(eager, traced, atol=_CHECK_TOLERANCE):
                    log.warning("the traced encoder differs from the eager model; running it eagerly")
                    return None
    except Exception as err:  # any failure to trace leaves the eager model, which works
        log.warning("the encoder could not be traced (%s: %s); running it eagerly", type(err).__name__, err)
        return None
    log.info("the encoder runs as a traced graph (traced and checked in %.2fs)", time.perf_counter() - started)
    return traced_encoder


def _last_hidden_state_module() -> type:
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self, encoder: Any, names: list[str]) -> None:
            super().__init__()
            self.encoder, self.names = encoder, names

        def forward(self, *inputs: Any) -> Any:
            return self.encoder(**dict(zip(self.names, inputs, strict=True)), return_dict=True).last_hidden_state

    return LastHiddenState
