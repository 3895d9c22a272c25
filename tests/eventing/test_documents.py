"""Document events: validation, applying them to a real Milvus Lite file, and the real worker over Kafka."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventing.config import WorkerConfig
from eventing.documents import DocumentHandler, delete_event, document_event
from eventing.jobs import send_events
from eventing.processing import Failure, Success
from eventing.topics import group_lag
from eventing.worker import Worker, kafka_clients
from events.errors import MalformedEvent
from events.event import DOCUMENT_DELETE_TYPE, DOCUMENT_UPSERT_TYPE, ERROR_TYPE, new_event, request_event
from events.kafka_binding import from_record, to_record
from tests.eventing.helpers import TopicReader, Topics
from tests.transformers_pre.corpus import DOCS
from tests.transformers_pre.test_ingest import CountingEmbedder, FailingEmbedder, chunker, minilm  # noqa: F401
from transformers_pre.embedder import ClientEmbedder
from transformers_pre.ingest.chunking import Chunker
from transformers_pre.ingest.config import IngestConfig
from transformers_pre.ingest.pipeline import document_hash
from transformers_pre.ingest.readers import Document
from transformers_pre.store import VectorStore


class UnreachableMilvus:
    """A Milvus client whose every call fails as if the server were down."""

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("connection refused")

        call.__name__ = name
        return call


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    opened = VectorStore.connect(str(tmp_path / "kzero.db"), "docs")
    yield opened
    opened.close()


@pytest.fixture
def embedder(minilm: ClientEmbedder) -> CountingEmbedder:  # noqa: F811
    return CountingEmbedder(minilm)


@pytest.fixture
def handler(store: VectorStore, embedder: CountingEmbedder, chunker: Chunker) -> DocumentHandler:  # noqa: F811
    return DocumentHandler(store, embedder, chunker)


def doc(doc_id: str, text: str | None = None) -> Document:
    topic, default = DOCS.get(doc_id, ("misc", f"A note called {doc_id}."))
    return Document(doc_id, text or default, {"topic": topic})


def upsert(document: Document) -> dict[str, Any]:
    return {"op": "upsert", "id": document.doc_id, "text": document.text, "metadata": dict(document.metadata)}


def delete(doc_id: str) -> dict[str, Any]:
    return {"op": "delete", "id": doc_id}


def test_events_for_producers_validate_and_survive_kafka(handler: DocumentHandler) -> None:
    document = doc("milvus")
    event = document_event(document)
    assert event.type == DOCUMENT_UPSERT_TYPE and event.get("partitionkey") == "milvus"
    decoded = from_record(to_record(event, "docs", "binary"))
    assert handler.validate(decoded) == upsert(document)
    removal = from_record(to_record(delete_event("milvus"), "docs", "structured"))
    assert removal.type == DOCUMENT_DELETE_TYPE and handler.validate(removal) == delete("milvus")


@pytest.mark.parametrize(
    ("type", "data", "field", "problem"),
    [
        ("dev.kzero.inference.request", {"instances": ["x"]}, "type", "expected 'dev.kzero.document.upsert' or"),
        (DOCUMENT_UPSERT_TYPE, ["x"], "data", "must be a JSON object"),
        (DOCUMENT_UPSERT_TYPE, {"text": "no id"}, "data.id", "must be a non-empty string"),
        (DOCUMENT_UPSERT_TYPE, {"id": 5, "text": "number"}, "data.id", "must be a non-empty string"),
        (DOCUMENT_UPSERT_TYPE, {"id": "x" * 513, "text": "long id"}, "data.id", "at most 512 bytes"),
        (DOCUMENT_UPSERT_TYPE, {"id": "x"}, "data.text", "must be a non-empty string"),
        (DOCUMENT_UPSERT_TYPE, {"id": "x", "text": "  "}, "data.text", "send a 'dev.kzero.document.delete'"),
        (DOCUMENT_UPSERT_TYPE, {"id": "x", "text": "t", "metadata": "m"}, "data.metadata", "must be a JSON object"),
        (DOCUMENT_UPSERT_TYPE, {"id": "x", "text": "t", "title": "T"}, "data.title", "unknown key"),
        (DOCUMENT_DELETE_TYPE, {"id": "x", "text": "t"}, "data.text", "unknown key; expected only \\['id'\\]"),
    ],
)
def test_bad_events_name_the_field(handler: DocumentHandler, type: str, data: Any, field: str, problem: str) -> None:
    with pytest.raises(MalformedEvent, match=problem) as caught:
        handler.validate(new_event(type, "/tests", data))
    assert caught.value.field == field


async def test_upsert_search_update_unchanged_delete(
    handler: DocumentHandler, store: VectorStore, embedder: CountingEmbedder, chunker: Chunker  # noqa: F811
) -> None:
    outcomes = await handler.process([upsert(doc("milvus")), upsert(doc("broker"))])
    assert outcomes == [Success({"doc_id": "milvus", "chunks": 1, "action": "added"}, 1),
                        Success({"doc_id": "broker", "chunks": 1, "action": "added"}, 1)]
    question = (await embedder.embed(["Where are the embeddings of the chunks kept?"]))[0]
    assert store.search(question, 1)[0].doc_id == "milvus"

    changed = doc("broker", "Kafka brokers replicate each partition to followers.")
    outcomes = await handler.process([upsert(doc("milvus")), upsert(changed)])
    assert [o.response["action"] for o in outcomes if isinstance(o, Success)] == ["unchanged", "updated"]
    assert store.document_hash("broker") == document_hash(changed, chunker)

    outcomes = await handler.process([delete("broker"), delete("never-stored")])
    assert outcomes == [Success({"doc_id": "broker", "chunks": 1, "action": "deleted"}, 1),
                        Success({"doc_id": "never-stored", "chunks": 0, "action": "deleted"}, 1)]
    assert store.document_hash("broker") is None and store.count() == 1


async def test_the_last_event_for_a_document_wins_and_upserts_embed_together(
    handler: DocumentHandler, store: VectorStore, embedder: CountingEmbedder, chunker: Chunker  # noqa: F811
) -> None:
    final = doc("keda", "KEDA scales the worker on consumer lag.")
    batch = [upsert(doc("keda")), delete("keda"), upsert(doc("dlq")), upsert(doc("tracing")), upsert(final),
             upsert(doc("metrics")), delete("strimzi")]
    outcomes = await handler.process(batch)
    actions = [o.response["action"] for o in outcomes if isinstance(o, Success)]
    assert actions == ["superseded", "superseded", "added", "added", "added", "added", "deleted"]
    assert embedder.calls == [4]  # one embedder call for all upserted chunks
    assert store.document_hash("keda") == document_hash(final, chunker) and store.count() == 4


async def test_unavailable_embedder_or_store_fail_only_their_events(
    store: VectorStore, minilm: ClientEmbedder, chunker: Chunker  # noqa: F811
) -> None:
    failing = DocumentHandler(store, FailingEmbedder(minilm), chunker)
    outcomes = await failing.process([upsert(doc("milvus")), delete("broker")])
    assert outcomes[0] == Failure("embedder-unavailable", "embedder failed: connection refused", 1)
    assert outcomes[1] == Success({"doc_id": "broker", "chunks": 0, "action": "deleted"}, 1)

    down = DocumentHandler(VectorStore(UnreachableMilvus(), "docs"), CountingEmbedder(minilm), chunker)
    outcomes = await down.process([upsert(doc("milvus")), delete("broker")])
    assert [(o.code, o.attempts) for o in outcomes if isinstance(o, Failure)] == [("store-unavailable", 1)] * 2
    assert all("connection refused" in o.message for o in outcomes if isinstance(o, Failure))


@pytest.mark.slow
def test_the_worker_keeps_milvus_in_sync_with_a_topic(
    kafka_bootstrap: str, store: VectorStore, embedder: CountingEmbedder, chunker: Chunker  # noqa: F811
) -> None:
    topics = Topics.fresh(kafka_bootstrap, partitions=1)  # one partition: the last event is processed last
    config = WorkerConfig(bootstrap_servers=kafka_bootstrap, input_topic=topics.requests,
                          output_topic=topics.results, dlq_topic=topics.dlq, group=topics.group, handler="documents",
                          documents=IngestConfig(milvus_uri="kzero.db", collection="docs"), max_batch=4, max_wait_ms=20)
    consumer, producer = kafka_clients(config)
    worker = Worker(config, DocumentHandler(store, embedder, chunker), consumer, producer)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="document-worker", daemon=True)
    thread.start()
    try:
        events = [
            document_event(doc("milvus")), document_event(doc("broker")), document_event(doc("keda")),
            new_event(DOCUMENT_UPSERT_TYPE, "/tests", {"id": "blank", "text": ""}, id="blank-text"),
            delete_event("keda"), document_event(doc("dlq")),
            request_event(["not a document"], source="/tests", id="wrong-type"),
        ]
        send_events(kafka_bootstrap, topics.requests, events, "binary", progress=False)
        dlq = TopicReader(kafka_bootstrap, topics.dlq)
        dlq.wait_for(lambda reader: {e.get("requestid") for e in reader.events} >= {"blank-text", "wrong-type"},
                     timeout_s=120)
        assert all(e.type == ERROR_TYPE and e.get("errorcode") == "invalid-event" for e in dlq.events)
        assert "data.text" in dlq.events[0].data["error"]["message"]
        dlq.close()
        stored = {d: store.document_hash(d) is not None for d in ("milvus", "broker", "keda", "dlq")}
        assert stored == {"milvus": True, "broker": True, "keda": False, "dlq": True}
        question = asyncio.run(embedder.embed(["Where do requests that keep failing end up?"]))[0]
        assert store.search(question, 1)[0].doc_id == "dlq"
        results = TopicReader(kafka_bootstrap, topics.results)
        assert results.read(1.0) == 0  # document events produce no result events
        results.close()
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive()


@pytest.mark.slow
def test_the_documents_command_upserts_and_deletes(
    kafka_bootstrap: str, tmp_path: Path, minilm: ClientEmbedder  # noqa: F811
) -> None:
    """``python -m eventing worker --handler documents``: the packaged embedder in its process, a Milvus Lite
    file (read once the worker is gone: one process per file), and the group's lag to know it caught up."""
    topics = Topics.fresh(kafka_bootstrap, partitions=2)
    db = tmp_path / "docs" / "kzero.db"  # the directory is created
    worker = subprocess.Popen(
        [sys.executable, "-m", "eventing", "worker", "--handler", "documents", "--bootstrap-servers",
         kafka_bootstrap, "--input-topic", topics.requests, "--dlq-topic", topics.dlq, "--group", topics.group,
         "--milvus-uri", str(db), "--collection", "docs", "--max-wait-ms", "20"],
        stdout=(tmp_path / "worker.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        events = [document_event(doc("milvus")), document_event(doc("keda")), document_event(doc("dlq")),
                  new_event(DOCUMENT_DELETE_TYPE, "/tests", {"id": ""}, id="bad-id"),
                  delete_event("keda")]
        send_events(kafka_bootstrap, topics.requests, events, "binary", progress=False)
        deadline = time.monotonic() + 180
        while group_lag(kafka_bootstrap, topics.group, topics.requests) > 0:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker did not catch up with the topic in 180s"
            time.sleep(0.5)
        dlq = TopicReader(kafka_bootstrap, topics.dlq)
        dlq.wait_for(lambda reader: len(reader.events) >= 1, timeout_s=30)
        [dead] = dlq.events
        assert dead.get("requestid") == "bad-id" and dead.get("errorcode") == "invalid-event"
        assert "data.id" in dead.get("errormessage")
        dlq.close()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(30)
    store = VectorStore.connect(str(db), "docs")
    try:
        store.load()
        stored = {d: store.document_hash(d) is not None for d in ("milvus", "keda", "dlq")}
        assert stored == {"milvus": True, "keda": False, "dlq": True}
        # Chunked as python -m transformers_pre.ingest chunks: the same hash, so ingesting it again adds nothing.
        assert store.document_hash("dlq") == document_hash(doc("dlq"), Chunker.load("all-minilm-l6-v2"))
        question = asyncio.run(minilm.embed(["Where do requests that keep failing end up?"]))[0]
        assert store.search(question, 1)[0].doc_id == "dlq"
    finally:
        store.close()
