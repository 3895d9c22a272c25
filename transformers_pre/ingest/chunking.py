"""Token-counted chunks with overlap, cut with the embedder's own tokenizer.

Chunk boundaries come from the tokenizer's offset mapping, so a chunk's text is an exact slice of
the document (no detokenization artifacts). A cut prefers, near the token budget, the end of a
sentence or line, then the start of a word; every chunk is re-counted and shrunk if needed, so no
chunk is ever truncated by the embedder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers_pre.errors import BadRequest
from transformers_pre.ingest.config import DEFAULT_OVERLAP_TOKENS
from transformers_pre.ingest.readers import Document
from transformers_pre.store import Chunk

# A tokenizer that does not know its model's limit reports this huge number (transformers' VERY_LARGE_INTEGER).
_UNKNOWN_LIMIT = 1_000_000
# Bumped when the way text is cut changes, so stored documents are re-chunked on the next ingest.
_ALGORITHM = 1
_SENTENCE_END = ".!?;:"


class Chunker:
    """``chunks(document)`` in windows of ``chunk_tokens`` tokens, consecutive ones sharing ``overlap_tokens``.

    ``max_tokens`` is the embedder's input limit including special tokens (default: the tokenizer's
    ``model_max_length``); ``chunk_tokens`` defaults to all of it but the special tokens, e.g. 254
    for MiniLM (256 = 254 + [CLS] + [SEP]).
    """

    def __init__(
        self,
        tokenizer: Any,
        chunk_tokens: int | None = None,
        overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
        *,
        max_tokens: int | None = None,
    ) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise BadRequest("tokenizer", f"{type(tokenizer).__name__} is not a fast tokenizer; chunking needs offsets")
        specials = tokenizer.num_special_tokens_to_add(pair=False)
        limit = max_tokens if max_tokens is not None else int(tokenizer.model_max_length)
        if limit >= _UNKNOWN_LIMIT:
            raise BadRequest("max_tokens", "the tokenizer does not know its model's input limit; pass max_tokens")
        room = limit - specials
        chunk_tokens = room if chunk_tokens is None else chunk_tokens
        if chunk_tokens < 1:
            raise BadRequest("chunk_tokens", f"must be >= 1, got {chunk_tokens}")
        if chunk_tokens > room:
            raise BadRequest("chunk_tokens", f"{chunk_tokens} + {specials} special tokens exceed the embedder's limit "
                                             f"of {limit} tokens; use at most {room}")
        if not 0 <= overlap_tokens < chunk_tokens:
            raise BadRequest("overlap_tokens", f"must be >= 0 and < chunk_tokens {chunk_tokens}, got {overlap_tokens}")
        self._tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.max_tokens = limit
        # How far back from the budget a cut may move to land on a sentence or word boundary.
        self._lookback = max(1, min(chunk_tokens // 8, chunk_tokens - overlap_tokens - 1))

    @classmethod
    def load(cls, model: str | Path, chunk_tokens: int | None = None,
             overlap_tokens: int = DEFAULT_OVERLAP_TOKENS) -> Chunker:
        """The chunker of a packaged model id (e.g. ``all-minilm-l6-v2``) or a model directory."""
        from transformers import AutoTokenizer

        directory = Path(model) if Path(model).is_dir() else _packaged_dir(str(model))
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        return cls(tokenizer, chunk_tokens, overlap_tokens, max_tokens=_sentence_transformers_limit(directory))

    @property
    def fingerprint(self) -> str:
        """Identifies how documents are cut: part of a document's hash, so new settings re-ingest."""
        tok = self._tokenizer
        return f"{type(tok).__name__}/{tok.vocab_size}/{self.chunk_tokens}/{self.overlap_tokens}/{_ALGORITHM}"

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self._tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def chunks(self, document: Document) -> list[Chunk]:
        return [
            Chunk(document.doc_id, i, document.text[start:end], dict(document.metadata))
            for i, (start, end) in enumerate(self.spans(document.text))
        ]

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``[start, end)`` of the chunks of ``text``."""
        tokens = _Tokens.of(self._tokenizer, text)
        spans: list[tuple[int, int]] = []
        start, total = 0, len(tokens.offsets)
        while start < total:
            end = self._cut(tokens, start)
            # A slice can re-tokenize into more tokens (e.g. cut inside a word): shrink until it fits.
            while end > start + 1 and (excess := self.count_tokens(tokens.text_of(start, end)) - self.chunk_tokens) > 0:
                end = max(start + 1, end - excess)
            spans.append(tokens.span(start, end))
            if end >= total:
                break
            start = self._next_start(tokens, start, end)
        return spans

    def _cut(self, tokens: _Tokens, start: int) -> int:
        """The token index to end the chunk starting at ``start`` before (exclusive)."""
        budget = start + self.chunk_tokens
        if budget >= len(tokens.offsets):
            return len(tokens.offsets)
        floor = max(start + self.overlap_tokens + 1, budget - self._lookback)
        return tokens.best_boundary(range(budget, floor - 1, -1), budget)

    def _next_start(self, tokens: _Tokens, start: int, end: int) -> int:
        """Overlap the previous chunk by at least ``overlap_tokens`` (at most twice that), starting on a
        sentence if one starts there, else on a word."""
        target = max(start + 1, end - self.overlap_tokens)
        return tokens.best_boundary(range(target, max(start, target - self.overlap_tokens), -1), target)


@dataclass(frozen=True)
class _Tokens:
    text: str
    offsets: list[tuple[int, int]]
    starts_word: list[bool]

    @classmethod
    def of(cls, tokenizer: Any, text: str) -> _Tokens:
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        words = encoding.word_ids()
        starts_word = [i == 0 or words[i] is None or words[i] != words[i - 1] for i in range(len(words))]
        return cls(text, encoding["offset_mapping"], starts_word)

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Characters of tokens ``[start, end)``."""
        return self.offsets[start][0], self.offsets[end - 1][1]

    def text_of(self, start: int, end: int) -> str:
        first, last = self.span(start, end)
        return self.text[first:last]

    def best_boundary(self, candidates: range, fallback: int) -> int:
        """The first candidate token that starts a sentence or line, else the first that starts a word."""
        word_start = None
        for index in candidates:
            if not self.starts_word[index]:
                continue
            gap = self.text[self.offsets[index - 1][1]:self.offsets[index][0]]
            if "\n" in gap or (gap and self.text[self.offsets[index - 1][1] - 1] in _SENTENCE_END):
                return index
            word_start = word_start or index
        return word_start or fallback


def _packaged_dir(model_id: str) -> Path:
    from serving.packaged import resolve_packaged

    directory, _ = resolve_packaged(model_id).location()
    return directory


def _sentence_transformers_limit(directory: Path) -> int | None:
    """sentence-transformers truncates at ``max_seq_length`` (256 for MiniLM), below the tokenizer's 512."""
    config = directory / "sentence_bert_config.json"
    if not config.is_file():
        return None
    value = json.loads(config.read_text()).get("max_seq_length")
    return int(value) if value else None
