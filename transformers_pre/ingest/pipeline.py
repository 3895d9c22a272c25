"""Idempotent ingestion: documents -> chunks -> batched embeddings -> the vector store.

A document's hash covers its text, metadata and the chunking settings; a document whose stored
hash matches is skipped, a changed one has all its chunks replaced. Chunks are embedded in batches
filled across documents, so many small documents cost about as much as one long one. Three stages
overlap: preparing batch i+1 (read, hash lookup, chunking) and embedding batch i run together, while
the store write of batch i-1 finishes in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from tqdm import tqdm

from transformers_pre.embedder import Embedder
from transformers_pre.ingest.chunking import Chunker
from transformers_pre.ingest.config import DEFAULT_BATCH_SIZE
from transformers_pre.ingest.readers import Document
from transformers_pre.store import Chunk, VectorStore

log = logging.getLogger(__name__)

Action = Literal["added", "updated", "unchanged", "empty"]


@dataclass(frozen=True)
class DocumentResult:
    doc_id: str
    action: Action
    chunks: int
    """Chunks written (0 when unchanged)."""


@dataclass(frozen=True)
class IngestSummary:
    documents: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    empty: int = 0
    deleted: int = 0
    chunks: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "documents": self.documents, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "empty": self.empty, "deleted": self.deleted, "chunks": self.chunks, "seconds": round(self.seconds, 3),
            "chunks_per_s": round(self.chunks_per_s, 1),
        }


def document_hash(document: Document, chunker: Chunker) -> str:
    digest = hashlib.sha256()
    for part in (chunker.fingerprint, json.dumps(document.metadata, sort_keys=True, separators=(",", ":")),
                 document.text):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


async def ingest(
    documents: Iterable[Document],
    store: VectorStore,
    embedder: Embedder,
    chunker: Chunker,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> IngestSummary:
    """Bring ``documents`` into ``store`` (creating its collection if needed) and count what happened."""
    started = time.perf_counter()
    counts = dict.fromkeys(("added", "updated", "unchanged", "empty"), 0)
    chunks = 0
    with tqdm(desc="ingest", unit=" chunks", disable=not (progress and sys.stderr.isatty())) as bar:
        async for result in upsert(documents, store, embedder, chunker, batch_size=batch_size):
            counts[result.action] += 1
            chunks += result.chunks
            bar.update(result.chunks)
            bar.set_postfix(documents=sum(counts.values()), refresh=False)
    summary = IngestSummary(documents=sum(counts.values()), chunks=chunks, seconds=time.perf_counter() - started,
                            **counts)
    log.info("ingested %s", summary.as_dict())
    return summary


async def delete(store: VectorStore, doc_ids: Iterable[str]) -> int:
    """Remove documents; returns how many were stored."""
    if not await asyncio.to_thread(store.exists):
        return 0
    await asyncio.to_thread(store.load)
    removed = 0
    for doc_id in doc_ids:
        if await asyncio.to_thread(store.document_hash, doc_id) is not None:
            await asyncio.to_thread(store.delete_document, doc_id)
            removed += 1
    return removed


async def upsert(
    documents: Iterable[Document],
    store: VectorStore,
    embedder: Embedder,
    chunker: Chunker,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> AsyncIterator[DocumentResult]:
    """Store each document unless unchanged; yields one result per document once it is written."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if embedder.dimension < 1:
        raise ValueError("the embedder's dimension is unknown; start() it first")
    await asyncio.to_thread(store.ensure_collection, embedder.dimension)
    await asyncio.to_thread(store.load)
    batches = _batches(documents, store, chunker, batch_size, embedder.dimension)
    batch = await asyncio.to_thread(next, batches, None)
    writing: asyncio.Future[list[DocumentResult]] | None = None
    try:
        while batch is not None:
            vectors, following = await _together(_embed(embedder, batch.texts), asyncio.to_thread(next, batches, None))
            complete = batch.fill(vectors)
            if writing is not None:
                for result in await writing:
                    yield result
            writing = asyncio.ensure_future(asyncio.to_thread(_write, store, complete, batch.unchanged))
            batch = following
        if writing is not None:
            for result in await writing:
                yield result
            writing = None
    finally:
        if writing is not None:  # failed elsewhere: let the write in flight finish, its outcome is moot
            await asyncio.gather(writing, return_exceptions=True)


async def _together(
    embedding: Awaitable[np.ndarray], preparing: Awaitable[_Batch | None]
) -> tuple[np.ndarray, _Batch | None]:
    """Both results; on a failure, the other is finished first so no thread is left using the store."""
    vectors, following = await asyncio.gather(embedding, preparing, return_exceptions=True)
    for outcome in (vectors, following):
        if isinstance(outcome, BaseException):
            raise outcome
    return vectors, following  # type: ignore[return-value]


# -- batching across documents --------------------------------------------------------------------


@dataclass
class _Pending:
    """A changed document whose chunks are being embedded."""

    doc_id: str
    doc_hash: str
    action: Action
    chunks: list[Chunk]
    vectors: np.ndarray
    missing: int


@dataclass
class _Batch:
    texts: list[str] = field(default_factory=list)
    slices: list[tuple[_Pending, int, int]] = field(default_factory=list)
    done: list[_Pending] = field(default_factory=list)
    """Documents with nothing to embed (empty ones) to write with this batch."""
    unchanged: list[DocumentResult] = field(default_factory=list)

    def add(self, pending: _Pending, start: int, end: int) -> None:
        self.slices.append((pending, start, end))
        self.texts.extend(chunk.text for chunk in pending.chunks[start:end])

    def fill(self, vectors: np.ndarray) -> list[_Pending]:
        """Hand the batch's vectors to their documents; returns the documents now complete, in order."""
        if len(vectors) != len(self.texts):
            raise ValueError(f"the embedder returned {len(vectors)} vectors for {len(self.texts)} texts")
        complete, row = list(self.done), 0
        for pending, start, end in self.slices:
            pending.vectors[start:end] = vectors[row:row + end - start]
            row += end - start
            pending.missing -= end - start
            if pending.missing == 0:
                complete.append(pending)
        return complete


def _batches(
    documents: Iterable[Document], store: VectorStore, chunker: Chunker, batch_size: int, dimension: int
) -> Iterator[_Batch]:
    batch = _Batch()
    iterator = iter(documents)
    # Documents are looked up in groups: one store round trip per group.
    for group in iter(lambda: list(itertools.islice(iterator, batch_size)), []):
        stored = store.document_hashes([document.doc_id for document in group])
        for document in group:
            doc_hash = document_hash(document, chunker)
            if stored.get(document.doc_id) == doc_hash:
                batch.unchanged.append(DocumentResult(document.doc_id, "unchanged", 0))
                continue
            chunks = chunker.chunks(document)
            action: Action = "empty" if not chunks else "added" if document.doc_id not in stored else "updated"
            pending = _Pending(document.doc_id, doc_hash, action, chunks,
                               np.empty((len(chunks), dimension), dtype=np.float32), len(chunks))
            if not chunks:
                batch.done.append(pending)  # written as "no chunks", which removes a stored older version
            start = 0
            while start < len(chunks):
                end = min(len(chunks), start + batch_size - len(batch.texts))
                batch.add(pending, start, end)
                start = end
                if len(batch.texts) == batch_size:
                    yield batch
                    batch = _Batch()
    if batch.texts or batch.done or batch.unchanged:
        yield batch


async def _embed(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    if not texts:
        return np.empty((0, embedder.dimension), dtype=np.float32)
    return await embedder.embed(texts)


def _write(store: VectorStore, complete: list[_Pending], unchanged: list[DocumentResult]) -> list[DocumentResult]:
    """One store round trip for the batch's complete documents."""
    written = store.replace_documents([(p.doc_id, p.doc_hash, p.chunks, p.vectors) for p in complete],
                                      absent={p.doc_id for p in complete if p.action == "added"})
    return [*unchanged, *(DocumentResult(p.doc_id, p.action, n) for p, n in zip(complete, written, strict=True))]
