"""Ingestion with the real MiniLM embedder into a real Milvus Lite file."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from serving.launch import PredictorProcess
from tests.keyed import KEY
from tests.transformers_pre.corpus import DOCS
from transformers_pre.embedder import ClientEmbedder, embedder_client
from transformers_pre.errors import PredictorUnavailable
from transformers_pre.ingest.__main__ import main
from transformers_pre.ingest.chunking import Chunker
from transformers_pre.ingest.pipeline import delete, document_hash, ingest
from transformers_pre.ingest.readers import Document
from transformers_pre.store import VectorStore

LONG = " ".join(f"Section {i}. " + text for i, (_, text) in enumerate(DOCS.values()))


class CountingEmbedder:
    """The real embedder, recording the size of every call."""

    def __init__(self, inner: ClientEmbedder) -> None:
        self._inner = inner
        self.dimension = inner.dimension
        self.calls: list[int] = []

    async def embed(self, texts: Sequence[str], headers: Mapping[str, str] | None = None) -> np.ndarray:
        self.calls.append(len(texts))
        return await self._inner.embed(texts, headers)

    async def close(self) -> None:
        """The module's embedder outlives each test."""


class FailingEmbedder(CountingEmbedder):
    async def embed(self, texts: Sequence[str], headers: Mapping[str, str] | None = None) -> np.ndarray:
        raise PredictorUnavailable("embedder failed: connection refused")


@pytest.fixture(scope="module")
def minilm() -> Iterator[ClientEmbedder]:
    embedder = asyncio.run(ClientEmbedder(*embedder_client("all-minilm-l6-v2")).start())
    yield embedder
    asyncio.run(embedder.close())


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker.load("all-minilm-l6-v2")


@pytest.fixture
def embedder(minilm: ClientEmbedder) -> CountingEmbedder:
    return CountingEmbedder(minilm)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[VectorStore]:
    # One file per test: closing a Milvus Lite client stops the file's server for every client of it.
    opened = VectorStore.connect(str(tmp_path / "kzero.db"), "docs")
    yield opened
    opened.close()


def corpus() -> list[Document]:
    short = [Document(doc_id, text, {"topic": topic}) for doc_id, (topic, text) in list(DOCS.items())[:10]]
    return [*short, Document("long", LONG, {"topic": "all"})]


def stored_chunks(store: VectorStore, doc_id: str) -> list[str]:
    rows = store._client.query(store.collection, filter=f'doc_id == "{doc_id}"', output_fields=["chunk_id", "text"])
    return [row["text"] for row in sorted(rows, key=lambda row: row["chunk_id"])]


async def test_ingest_then_reingest_adds_nothing(
    store: VectorStore, embedder: CountingEmbedder, chunker: Chunker
) -> None:
    documents = corpus()
    expected_chunks = sum(len(chunker.chunks(d)) for d in documents)
    assert len(chunker.chunks(documents[-1])) >= 3

    first = await ingest(documents, store, embedder, chunker, progress=False)
    assert (first.documents, first.added, first.updated, first.unchanged) == (11, 11, 0, 0)
    assert first.chunks == expected_chunks == store.count()
    assert first.seconds > 0 and first.chunks_per_s == pytest.approx(first.chunks / first.seconds)
    assert stored_chunks(store, "long") == [c.text for c in chunker.chunks(documents[-1])]
    assert store.document_hash("long") == document_hash(documents[-1], chunker)

    embedder.calls.clear()
    again = await ingest(documents, store, embedder, chunker, progress=False)
    assert (again.documents, again.added, again.updated, again.unchanged, again.chunks) == (11, 0, 0, 11, 0)
    assert embedder.calls == [] and store.count() == expected_chunks


async def test_a_changed_document_replaces_its_chunks(
    store: VectorStore, embedder: CountingEmbedder, chunker: Chunker
) -> None:
    documents = corpus()
    await ingest(documents, store, embedder, chunker, progress=False)
    before = store.count()
    old_long = len(stored_chunks(store, "long"))

    shorter = Document("long", "Only one short paragraph remains of the long document.", {"topic": "all"})
    retagged = Document(documents[0].doc_id, documents[0].text, {"topic": "renamed"})
    summary = await ingest([retagged, *documents[1:-1], shorter], store, embedder, chunker, progress=False)
    assert (summary.added, summary.updated, summary.unchanged, summary.chunks) == (0, 2, 9, 2)
    assert stored_chunks(store, "long") == [shorter.text]
    assert store.count() == before - old_long + 1

    vector = (await embedder.embed(["What is left of the long document?"]))[0]
    top = store.search(vector, 1)[0]
    assert (top.doc_id, top.chunk_id, top.text) == ("long", 0, shorter.text)
    assert store.search(vector, 1, filter='metadata["topic"] == "renamed"')[0].doc_id == documents[0].doc_id


async def test_new_chunk_settings_reingest_everything(
    store: VectorStore, embedder: CountingEmbedder, chunker: Chunker
) -> None:
    documents = corpus()
    await ingest(documents, store, embedder, chunker, progress=False)
    smaller = Chunker(chunker._tokenizer, 64, 8, max_tokens=256)
    summary = await ingest(documents, store, embedder, smaller, progress=False)
    assert summary.updated == len(documents)
    assert store.count() == sum(len(smaller.chunks(d)) for d in documents)


async def test_chunks_are_embedded_in_batches_across_documents(
    store: VectorStore, embedder: CountingEmbedder, chunker: Chunker
) -> None:
    documents = corpus()
    total = sum(len(chunker.chunks(d)) for d in documents)
    summary = await ingest(documents, store, embedder, chunker, batch_size=4, progress=False)
    assert summary.chunks == total == sum(embedder.calls)
    assert embedder.calls == [4] * (total // 4) + ([total % 4] if total % 4 else [])
    embedder.calls.clear()

    many = [Document(f"note-{i}", f"Note number {i} about scaling predictors.") for i in range(20)]
    await ingest(many, store, embedder, chunker, batch_size=64, progress=False)
    assert embedder.calls == [20]


async def test_delete_and_empty_documents(store: VectorStore, embedder: CountingEmbedder, chunker: Chunker) -> None:
    assert await delete(store, ["anything"]) == 0  # no collection yet
    documents = corpus()
    await ingest(documents, store, embedder, chunker, progress=False)
    before, long_chunks = store.count(), len(stored_chunks(store, "long"))

    assert await delete(store, ["long", "never-stored"]) == 1
    assert store.count() == before - long_chunks and store.document_hash("long") is None

    emptied = Document(documents[0].doc_id, "   ", {})
    summary = await ingest([emptied, Document("blank", "")], store, embedder, chunker, progress=False)
    assert (summary.empty, summary.added, summary.chunks) == (2, 0, 0)
    assert store.document_hash(documents[0].doc_id) is None
    assert store.count() == before - long_chunks - 1


async def test_an_embedder_failure_propagates(store: VectorStore, minilm: ClientEmbedder, chunker: Chunker) -> None:
    with pytest.raises(PredictorUnavailable, match="connection refused"):
        await ingest(corpus(), store, FailingEmbedder(minilm), chunker, progress=False)
    assert store.count() == 0


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus_dir = tmp_path / "corpus"
    (corpus_dir / "guides").mkdir(parents=True)
    (corpus_dir / "guides" / "kafka.md").write_text("# Kafka\n\n" + DOCS["broker"][1])
    (corpus_dir / "notes.txt").write_text(DOCS["milvus"][1])
    (corpus_dir / "more.jsonl").write_text(
        "\n".join(json.dumps({"id": k, "text": t, "metadata": {"topic": topic}}) for k, (topic, t) in DOCS.items())
    )
    db = tmp_path / "data" / "cli.db"  # the directory is created
    args = ["--milvus_uri", str(db), "--collection", "cli", "--no_progress"]

    def run(*extra: str) -> tuple[int, str, str]:
        code = main([*args, *extra])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = run(str(corpus_dir))
    summary = json.loads(out)
    assert code == 0 and summary["documents"] == summary["added"] == len(DOCS) + 2
    assert set(summary) == {"documents", "added", "updated", "unchanged", "empty", "deleted", "chunks", "seconds",
                            "chunks_per_s"}

    code, out, _ = run(str(corpus_dir), "--delete", "guides/kafka.md", "--delete", "missing")
    summary = json.loads(out)
    assert (code, summary["deleted"], summary["added"], summary["unchanged"]) == (0, 1, 1, len(DOCS) + 1)

    code, _, err = run(str(corpus_dir / "nope"))
    assert code == 2 and "nope: no such file or directory" in err
    code, _, err = run(str(corpus_dir), "--chunk_tokens", "300")
    assert code == 2 and "chunk_tokens: 300 + 2 special tokens exceed the embedder's limit of 256" in err
    code, _, err = run()
    assert code == 2 and "nothing to do" in err


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["v1", "grpc-v2"])
def test_command_line_with_an_embedding_predictor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], embed_server: PredictorProcess, minilm: ClientEmbedder,
    protocol: str,
) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text("\n".join(json.dumps({"id": k, "text": t}) for k, (_, t) in DOCS.items()))
    target = embed_server.url if protocol == "v1" else embed_server.grpc_target
    db = tmp_path / "remote.db"
    code = main(["--milvus_uri", str(db), "--collection", "remote", "--embedder", f"{target}#minilm",
                 "--embedder_protocol", protocol, "--no_progress", str(notes)])
    assert code == 0 and json.loads(capsys.readouterr().out)["added"] == len(DOCS)
    store = VectorStore.connect(str(db), "remote")
    try:
        question = asyncio.run(minilm.embed(["Which topic holds the requests that keep failing?"]))[0]
        assert store.search(question, 1)[0].doc_id == "dlq"
    finally:
        store.close()


@pytest.mark.slow
def test_command_line_sends_the_predictor_key_to_a_keyed_embedder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keyed_embed_server: PredictorProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"id": "dlq", "text": DOCS["dlq"][1]}))
    args = ["--milvus_uri", str(tmp_path / "keyed.db"), "--collection", "keyed", "--no_progress",
            "--embedder", f"{keyed_embed_server.url}#minilm", str(notes)]
    monkeypatch.delenv("KZERO_PREDICTOR_API_KEY", raising=False)
    assert main(args) == 1
    assert "refused a request without an API key (401)" in capsys.readouterr().err
    monkeypatch.setenv("KZERO_PREDICTOR_API_KEY", KEY)
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["added"] == 1
    monkeypatch.setenv("KZERO_PREDICTOR_API_KEY", " ")
    assert main(args) == 2 and "KZERO_PREDICTOR_API_KEY is set but holds no key" in capsys.readouterr().err
