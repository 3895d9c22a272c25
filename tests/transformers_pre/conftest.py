from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from serving.launch import PredictorProcess
from tests.transformers_pre.corpus import DOCS
from transformers_pre.embedder import ClientEmbedder, embedder_client
from transformers_pre.store import Chunk, VectorStore


async def seed(db: Path, collection: str = "kzero") -> None:
    embedder = await ClientEmbedder(*embedder_client("all-minilm-l6-v2")).start()
    store = VectorStore.connect(str(db), collection)
    try:
        store.ensure_collection(embedder.dimension)
        ids = list(DOCS)
        vectors = await embedder.embed([DOCS[d][1] for d in ids])
        for doc_id, vector in zip(ids, vectors, strict=True):
            topic, text = DOCS[doc_id]
            digest = hashlib.sha256(text.encode()).hexdigest()
            store.replace_document(doc_id, digest, [Chunk(doc_id, 0, text, {"topic": topic})], vector[None, :])
    finally:
        store.close()
        await embedder.close()


def transformer_process(
    tmp_path_factory: pytest.TempPathFactory, db: Path, predictor_host: str, *extra: str,
    env: dict[str, str] | None = None,
) -> PredictorProcess:
    """A transformer server process (PredictorProcess starts any ``python -m`` KServe server)."""
    args = ["--predictor_host", predictor_host, "--predictor_model", "smol", "--milvus_uri", str(db),
            "--collection", "kzero", "--max_new_tokens", "48", *extra]
    log = tmp_path_factory.mktemp("logs") / "rag.log"
    return PredictorProcess(args, model_name="rag", log_path=log, module="transformers_pre", env=env or {}).start()
