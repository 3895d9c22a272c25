"""Settings of ingestion, shared by ``python -m transformers_pre.ingest`` and the document-event worker
(``python -m eventing worker --handler documents``): both chunk alike, so a document hashes the same
whichever way it came in."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from serving.client import WireProtocol
from serving.packaged import PACKAGED_MODELS
from transformers_pre.index import IndexConfig

DEFAULT_BATCH_SIZE = 64
DEFAULT_OVERLAP_TOKENS = 32
DEFAULT_EMBEDDER = "all-minilm-l6-v2"


class IngestConfig(BaseModel):
    """Where documents go and how they are chunked and embedded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    milvus_uri: str = Field(min_length=1)
    collection: str = Field(min_length=1)
    embedder: str = Field(default=DEFAULT_EMBEDDER, description="packaged model id, or URL#model of a predictor")
    embedder_protocol: WireProtocol = "v1"
    tokenizer: str | None = Field(default=None, description="packaged model id or model directory")
    chunk_tokens: int | None = Field(default=None, ge=1, description="default: the embedder's limit")
    overlap_tokens: int = Field(default=DEFAULT_OVERLAP_TOKENS, ge=0)
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1, description="chunks per embedder call")
    progress: bool = True
    index: IndexConfig = IndexConfig()

    @property
    def chunking_model(self) -> str:
        """Whose tokenizer counts chunk tokens: ``tokenizer``, else a packaged embedder's own, else MiniLM's."""
        return self.tokenizer or (self.embedder if self.embedder in PACKAGED_MODELS else DEFAULT_EMBEDDER)
