"""Token-counted chunking with MiniLM's real tokenizer."""

from __future__ import annotations

import itertools
import random
import re
import string

import pytest

from transformers_pre.errors import BadRequest
from transformers_pre.ingest.chunking import Chunker
from transformers_pre.ingest.readers import Document

SENTENCES = [
    "The worker consumes request events from Kafka and groups them into micro-batches.",
    "Each batch goes to the predictor in one call, so the accelerator stays busy.",
    "Results are produced to the results topic, failures to the dead-letter topic.",
    "Offsets are committed only after every earlier record of the partition is answered.",
    "Milvus stores the chunk embeddings and searches them by cosine similarity.",
    "Transformers are small asynchronous steps that share a typed per-request context.",
]


def prose(sentences: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    paragraphs, current = [], []
    for _ in range(sentences):
        current.append(rng.choice(SENTENCES))
        if len(current) == 5:
            paragraphs.append(" ".join(current))
            current = []
    return "\n\n".join([*paragraphs, " ".join(current)]).strip()


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker.load("all-minilm-l6-v2")


def tokens_with_specials(chunker: Chunker, text: str) -> int:
    return chunker.count_tokens(text) + 2


def test_defaults_fit_minilm_with_its_special_tokens(chunker: Chunker) -> None:
    # sentence-transformers truncates MiniLM at 256 tokens: 254 of text + [CLS] + [SEP].
    assert (chunker.max_tokens, chunker.chunk_tokens, chunker.overlap_tokens) == (256, 254, 32)


def test_chunks_are_exact_overlapping_slices_within_the_limit(chunker: Chunker) -> None:
    text = prose(120)
    document = Document("long", text, {"source": "long.md", "tags": ["a"]})
    chunks = chunker.chunks(document)
    spans = chunker.spans(text)
    assert len(chunks) == len(spans) >= 5
    assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
    for chunk, (start, end) in zip(chunks, spans, strict=True):
        assert chunk.text == text[start:end] and chunk.doc_id == "long"
        assert chunk.metadata == document.metadata and chunk.metadata is not document.metadata
        assert tokens_with_specials(chunker, chunk.text) <= 256
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, previous_end), (start, _) in itertools.pairwise(spans):
        overlap = chunker.count_tokens(text[start:previous_end])
        assert 32 <= overlap <= 64, overlap  # starts on a sentence or word within twice the overlap


def test_cuts_prefer_sentence_ends(chunker: Chunker) -> None:
    chunks = chunker.chunks(Document("prose", prose(120, seed=1)))
    assert all(c.text.endswith(".") for c in chunks)
    assert all(c.text[0].isupper() or not c.text[0].isalpha() for c in chunks)


def test_words_without_spaces_still_fit(chunker: Chunker) -> None:
    # Long alphanumeric words split into many word pieces, so some cuts land inside a word and the
    # slice re-tokenizes differently: each chunk is re-counted and shrunk to fit.
    rng = random.Random(7)
    words = ["".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(90)) for _ in range(60)]
    text = " ".join(words)
    chunks = chunker.chunks(Document("codes", text))
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.text in text
        assert tokens_with_specials(chunker, chunk.text) <= 256


def test_tiny_empty_and_blank_documents(chunker: Chunker) -> None:
    [only] = chunker.chunks(Document("tiny", "  Hello, world!\n"))
    assert only.text == "Hello, world!" and only.chunk_id == 0
    assert chunker.chunks(Document("empty", "")) == []
    assert chunker.chunks(Document("blank", " \n\t ")) == []


def test_larger_embedders_take_larger_chunks(chunker: Chunker) -> None:
    tokenizer = chunker._tokenizer
    assert Chunker(tokenizer).chunk_tokens == 510  # the tokenizer's own model_max_length (512) minus specials
    big = Chunker(tokenizer, 1000, 100, max_tokens=1024)
    text = prose(200)
    spans = big.spans(text)
    assert len(spans) < len(chunker.spans(text))
    assert all(big.count_tokens(text[s:e]) <= 1000 for s, e in spans)


def test_fingerprint_changes_with_the_settings(chunker: Chunker) -> None:
    tokenizer = chunker._tokenizer
    assert Chunker(tokenizer, 254, 32, max_tokens=256).fingerprint == chunker.fingerprint
    assert Chunker(tokenizer, 128, 32, max_tokens=256).fingerprint != chunker.fingerprint
    assert Chunker(tokenizer, 254, 16, max_tokens=256).fingerprint != chunker.fingerprint


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap_tokens", "field", "message"),
    [
        (255, 32, "chunk_tokens", "255 + 2 special tokens exceed the embedder's limit of 256 tokens; use at most 254"),
        (0, 0, "chunk_tokens", "must be >= 1, got 0"),
        (64, 64, "overlap_tokens", "must be >= 0 and < chunk_tokens 64, got 64"),
        (64, -1, "overlap_tokens", "got -1"),
    ],
)
def test_invalid_settings_name_the_value(
    chunker: Chunker, chunk_tokens: int, overlap_tokens: int, field: str, message: str
) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)) as caught:
        Chunker(chunker._tokenizer, chunk_tokens, overlap_tokens, max_tokens=256)
    assert caught.value.field == field


def test_unknown_packaged_model() -> None:
    with pytest.raises(ValueError, match="unknown packaged model 'nope'"):
        Chunker.load("nope")
