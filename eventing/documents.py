"""Keep a RAG corpus in sync with a Kafka topic: document upsert/delete events for the eventing worker.

``DocumentHandler`` is an ``EventHandler`` (``eventing.processing``): the worker validates each event,
hands it micro-batches, and dead-letters failures. Within a batch the last event for a document id
wins; producers key events by document id (``partitionkey``), so events for one document stay in
order across batches too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from eventing.processing import Failure, Outcome, Success
from events.errors import EMBEDDER_UNAVAILABLE, STORE_UNAVAILABLE, MalformedEvent
from events.event import DOCUMENT_DELETE_TYPE, DOCUMENT_UPSERT_TYPE, Event, new_event
from transformers_pre.embedder import Embedder
from transformers_pre.errors import PredictorUnavailable, StoreUnavailable
from transformers_pre.ingest.chunking import Chunker
from transformers_pre.ingest.config import DEFAULT_BATCH_SIZE
from transformers_pre.ingest.pipeline import upsert
from transformers_pre.ingest.readers import Document, id_problem
from transformers_pre.store import VectorStore

SOURCE = "/kzero/documents"


def document_event(document: Document, *, source: str = SOURCE) -> Event:
    data = {"id": document.doc_id, "text": document.text, "metadata": dict(document.metadata)}
    return new_event(DOCUMENT_UPSERT_TYPE, source, data, partitionkey=document.doc_id)


def delete_event(doc_id: str, *, source: str = SOURCE) -> Event:
    return new_event(DOCUMENT_DELETE_TYPE, source, {"id": doc_id}, partitionkey=doc_id)


class DocumentHandler:
    """Applies document events to the vector store; a success emits nothing."""

    emits_results = False

    def __init__(
        self, store: VectorStore, embedder: Embedder, chunker: Chunker, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._chunker = chunker
        self._batch_size = batch_size
        # The worker runs several micro-batches at once; applying them one at a time, in the order they
        # were formed (the lock is fair), keeps "the later event wins" true across batches.
        self._serial = asyncio.Lock()

    def validate(self, event: Event) -> dict[str, Any]:
        """``{"op": "upsert"|"delete", "id", "text"?, "metadata"?}`` from the event."""
        if event.type not in (DOCUMENT_UPSERT_TYPE, DOCUMENT_DELETE_TYPE):
            raise MalformedEvent("type", f"expected {DOCUMENT_UPSERT_TYPE!r} or {DOCUMENT_DELETE_TYPE!r}, "
                                         f"got {event.type!r}")
        data = event.data
        if not isinstance(data, dict):
            raise MalformedEvent("data", 'must be a JSON object {"id", ...}')
        if problem := id_problem(data.get("id")):
            raise MalformedEvent("data.id", problem)
        if event.type == DOCUMENT_DELETE_TYPE:
            _no_other_keys(data, {"id"})
            return {"op": "delete", "id": data["id"]}
        _no_other_keys(data, {"id", "text", "metadata"})
        text, metadata = data.get("text"), data.get("metadata", {})
        if not isinstance(text, str) or not text.strip():
            raise MalformedEvent("data.text", f"must be a non-empty string; send a {DOCUMENT_DELETE_TYPE!r} "
                                              "event to remove a document")
        if not isinstance(metadata, dict):
            raise MalformedEvent("data.metadata", f"must be a JSON object, got {type(metadata).__name__}")
        return {"op": "upsert", "id": data["id"], "text": text, "metadata": metadata}

    async def process(
        self, requests: Sequence[dict[str, Any]], headers: Sequence[Mapping[str, str]] | None = None
    ) -> list[Outcome]:
        async with self._serial:
            return await self._apply(requests)

    async def _apply(self, requests: Sequence[dict[str, Any]]) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        last = {request["id"]: i for i, request in enumerate(requests)}
        for i, request in enumerate(requests):
            if last[request["id"]] != i:
                outcomes[i] = Success({"doc_id": request["id"], "chunks": 0, "action": "superseded"}, 1)
        deletes = [i for i in last.values() if requests[i]["op"] == "delete"]
        upserts = {requests[i]["id"]: i for i in last.values() if requests[i]["op"] == "upsert"}
        for i in deletes:
            outcomes[i] = await self._delete(requests[i]["id"])
        if upserts:
            await self._upsert([requests[i] for i in upserts.values()], upserts, outcomes)
        assert all(outcome is not None for outcome in outcomes)
        return outcomes  # type: ignore[return-value]

    async def _delete(self, doc_id: str) -> Outcome:
        try:
            if not await asyncio.to_thread(self._store.exists):
                return Success({"doc_id": doc_id, "chunks": 0, "action": "deleted"}, 1)
            await asyncio.to_thread(self._store.load)
            removed = await asyncio.to_thread(self._store.delete_document, doc_id)
        except StoreUnavailable as err:
            return Failure(STORE_UNAVAILABLE, str(err), 1)
        return Success({"doc_id": doc_id, "chunks": removed, "action": "deleted"}, 1)

    async def _upsert(
        self, requests: list[dict[str, Any]], index: dict[str, int], outcomes: list[Outcome | None]
    ) -> None:
        documents = [Document(r["id"], r["text"], r["metadata"]) for r in requests]
        try:
            if self._embedder.dimension < 1:  # made before the worker's event loop ran: start it on that loop
                await self._embedder.start()
            async for result in upsert(documents, self._store, self._embedder, self._chunker,
                                       batch_size=self._batch_size):
                outcomes[index[result.doc_id]] = Success(
                    {"doc_id": result.doc_id, "chunks": result.chunks, "action": result.action}, 1
                )
        except (StoreUnavailable, PredictorUnavailable) as err:
            # Documents written before the failure keep their outcome; the rest are dead-lettered.
            code = STORE_UNAVAILABLE if isinstance(err, StoreUnavailable) else EMBEDDER_UNAVAILABLE
            for i in index.values():
                if outcomes[i] is None:
                    outcomes[i] = Failure(code, str(err), 1)


def _no_other_keys(data: dict[str, Any], allowed: set[str]) -> None:
    if unknown := sorted(set(data) - allowed):
        raise MalformedEvent(f"data.{unknown[0]}", f"unknown key; expected only {sorted(allowed)}")
