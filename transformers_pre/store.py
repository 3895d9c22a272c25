"""The vector store: chunks of documents with embeddings in Milvus (Milvus Lite file or server URI).

One collection holds chunks keyed ``<doc_id>#<chunk_id>`` with the document's content hash, its
metadata (JSON) and a dense vector (cosine over normalized embeddings). The text field also
feeds Milvus' BM25 function, so the same collection serves dense, full-text and hybrid search.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from transformers_pre.errors import BadRequest, StoreUnavailable, UnknownCollection
from transformers_pre.index import IndexConfig

log = logging.getLogger(__name__)

SearchMode = Literal["dense", "hybrid"]
MAX_TEXT = 16_384
_FIELDS = ["doc_id", "chunk_id", "text", "metadata"]
# Scalar columns a filter may name directly, with their filter type; any other filter field is a key of
# ``metadata``. The remaining columns are never filterable (a filter on ``text`` would probe the corpus).
FILTER_COLUMNS = {"doc_id": "str", "chunk_id": "int"}
UNFILTERABLE_COLUMNS = frozenset({"id", "doc_hash", "text", "metadata", "vector", "sparse"})
# The escapes Milvus' expression parser (server and Lite 2.5 alike) reads back as the character: only
# backslash and quote. A tab stays as it is; a line break or other control character has no literal
# that matches it (``\\n`` parses but never matches), so filters and document ids refuse them.
_ESCAPES = {"\\": "\\\\", '"': '\\"'}
# Rows per insert call: Milvus Lite 2.5's insert time grows with the square of the call's rows (15,000
# rows: 1.1 s in calls of 250, 5.1 s in calls of 2,500; 5,000 rows per call took 11 s each).
INSERT_ROWS = 256
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def string_literal(value: str) -> str:
    """``value`` as a string literal of a Milvus expression."""
    return '"' + "".join(_ESCAPES.get(c, c) for c in value) + '"'


def _string_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(string_literal(v) for v in values) + "]"


@dataclass(frozen=True)
class Chunk:
    doc_id: str
    chunk_id: int
    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.doc_id}#{self.chunk_id}"


@dataclass(frozen=True)
class Passage:
    doc_id: str
    chunk_id: int
    text: str
    score: float
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def source(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "chunk_id": self.chunk_id, "text": self.text, "score": round(self.score, 6)}


class VectorStore:
    def __init__(self, client: Any, collection: str, uri: str = "", index: IndexConfig | None = None) -> None:
        self._client = client
        self.collection = collection
        self._uri = uri
        self._index = index or IndexConfig()
        self._search_params: dict[str, dict[str, Any]] = {}  # per loaded collection, for the index it has

    @classmethod
    def connect(cls, uri: str, collection: str, index: IndexConfig | None = None) -> VectorStore:
        from pymilvus import MilvusClient

        try:
            return cls(MilvusClient(uri), collection, uri, index)
        except Exception as err:
            raise StoreUnavailable(f"cannot reach Milvus at {uri}: {err}") from err

    def exists(self, collection: str | None = None) -> bool:
        return bool(self._call(self._client.has_collection, collection or self.collection))

    def ensure_collection(self, dim: int) -> None:
        if self.exists():
            return
        from pymilvus import DataType, Function, FunctionType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=1024)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=512)
        schema.add_field("chunk_id", DataType.INT64)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT, enable_analyzer=True)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_function(Function(name="bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["sparse"]))
        index = self._client.prepare_index_params()
        # Nested under "params" (one JSON value, as older clients sent it): Milvus Lite reads build
        # parameters only from there and ignores the top-level keys this client flattens a dict into.
        index.add_index("vector", index_type=self._index.index_type, metric_type="COSINE",
                        params={"params": self._index.build_params()})
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        self._call(self._client.create_collection, self.collection, schema=schema, index_params=index)
        log.info("created collection %s (dim %d, %s index)", self.collection, dim, self._index.index_type)

    def load(self, collection: str | None = None) -> None:
        """Load a collection into memory for search (a reopened Milvus collection starts released)."""
        name = collection or self.collection
        if name in self._search_params:
            return
        if not self.exists(name):
            raise UnknownCollection(name)
        self._call(self._client.load_collection, name)
        built = self._call(self._client.describe_index, name, "vector") or {}
        self._search_params[name] = {"params": self._index.search_params(str(built.get("index_type", "")))}

    def document_hash(self, doc_id: str) -> str | None:
        return self.document_hashes([doc_id]).get(doc_id)

    def document_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Stored content hashes of those of ``doc_ids`` that exist, in one query (a Lite query scans)."""
        if not doc_ids:
            return {}
        rows = self._call(self._client.query, self.collection,
                          filter=f"chunk_id == 0 and doc_id in {_string_list(doc_ids)}",
                          output_fields=["doc_id", "doc_hash"], limit=len(doc_ids))
        return {row["doc_id"]: row["doc_hash"] for row in rows}

    def replace_document(self, doc_id: str, doc_hash: str, chunks: Sequence[Chunk], vectors: np.ndarray) -> int:
        """Make the stored chunks of ``doc_id`` exactly ``chunks``; returns how many were written."""
        return self.replace_documents([(doc_id, doc_hash, chunks, vectors)])[0]

    def replace_documents(
        self, documents: Sequence[tuple[str, str, Sequence[Chunk], np.ndarray]], *, absent: Collection[str] = (),
    ) -> list[int]:
        """``replace_document`` for many documents with one delete and one insert. ``absent``: documents
        the caller just found unstored, which need no delete (in Milvus Lite a delete by filter scans
        every row, so a bulk load would slow down as the collection grows)."""
        rows = []
        for doc_id, doc_hash, chunks, vectors in documents:
            if len(chunks) != len(vectors):
                raise ValueError(f"{doc_id}: {len(chunks)} chunks but {len(vectors)} vectors")
            rows += [
                {"id": c.key, "doc_id": c.doc_id, "chunk_id": c.chunk_id, "doc_hash": doc_hash,
                 "text": c.text[:MAX_TEXT], "metadata": dict(c.metadata), "vector": v.astype(np.float32).tolist()}
                for c, v in zip(chunks, vectors, strict=True)
            ]
        stored = [doc_id for doc_id, *_ in documents if doc_id not in absent]
        if stored:
            self._call(self._client.delete, self.collection, filter=f"doc_id in {_string_list(stored)}")
        for first in range(0, len(rows), INSERT_ROWS):
            self._call(self._client.insert, self.collection, rows[first:first + INSERT_ROWS])
        return [len(chunks) for _, _, chunks, _ in documents]

    def delete_document(self, doc_id: str) -> int:
        result = self._call(self._client.delete, self.collection, filter=f"doc_id == {string_literal(doc_id)}")
        return len(result) if isinstance(result, list) else int(result.get("delete_count", 0))

    def close(self) -> None:
        self._client.close()
        if "://" not in self._uri:  # Milvus Lite serves the file from this process until released
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._uri)

    def count(self) -> int:
        stats = self._call(self._client.get_collection_stats, self.collection)
        return int(stats.get("row_count", 0))

    def search(
        self,
        vector: np.ndarray,
        top_k: int,
        *,
        filter: str = "",
        min_score: float | None = None,
        query_text: str | None = None,
        mode: SearchMode = "dense",
        collection: str | None = None,
    ) -> list[Passage]:
        """``filter`` is a Milvus boolean expression, already compiled or vetted (see ``filters``)."""
        name = collection or self.collection
        self.load(name)
        try:
            if mode == "hybrid" and query_text:
                hits = self._hybrid(name, vector, query_text, top_k, filter)
            else:
                hits = self._client.search(name, data=[vector.astype(np.float32).tolist()], anns_field="vector",
                                           limit=top_k, filter=filter, output_fields=_FIELDS,
                                           search_params=self._search_params[name])[0]
        except Exception as err:
            raise self._classify(err, filter) from err
        passages = [
            Passage(h["entity"]["doc_id"], int(h["entity"]["chunk_id"]), h["entity"]["text"], float(h["distance"]),
                    h["entity"].get("metadata") or {})
            for h in hits
        ]
        if min_score is not None and mode == "dense":
            passages = [p for p in passages if p.score >= min_score]
        return passages

    def _hybrid(self, name: str, vector: np.ndarray, text: str, top_k: int, expression: str) -> list[dict[str, Any]]:
        from pymilvus import AnnSearchRequest, RRFRanker

        dense = AnnSearchRequest(data=[vector.astype(np.float32).tolist()], anns_field="vector",
                                 param=self._search_params[name],
                                 limit=top_k * 2, expr=expression or None)
        sparse = AnnSearchRequest(data=[text], anns_field="sparse", param={}, limit=top_k * 2, expr=expression or None)
        return self._client.hybrid_search(name, [dense, sparse], ranker=RRFRanker(), limit=top_k,
                                          output_fields=_FIELDS)[0]

    @staticmethod
    def _classify(err: Exception, expression: str) -> Exception:
        text = str(err)
        if expression and any(w in text.lower() for w in ("expr", "parse", "filter", "syntax", "field")):
            # Milvus' message can list the collection's schema: log it, answer with our own words.
            log.info("Milvus rejected the filter %r: %s", expression[:300], text[:300])
            return BadRequest("filter", "the vector store cannot evaluate this expression "
                                        "(check its field names, operators and quoting)")
        return StoreUnavailable(f"vector search failed: {text[:300]}")

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as err:
            raise StoreUnavailable(f"Milvus call {method.__name__} failed: {str(err)[:300]}") from err
