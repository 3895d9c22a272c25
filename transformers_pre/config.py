"""Settings of the RAG transformer and its chain, built once in ``main`` and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from predictors.retry import RetryPolicy
from transformers_pre.store import SearchMode

Protocol = Literal["v1", "v2", "grpc-v2"]


class StepSpec(BaseModel):
    """One step of the chain: its registered name and its options."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


DEFAULT_STEPS = ("validate", "embed_query", "retrieve", "prompt", "generate", "cite", "usage")


class ChainConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[StepSpec, ...] = tuple(StepSpec(name=n) for n in DEFAULT_STEPS)

    @classmethod
    def from_yaml(cls, path: Path) -> ChainConfig:
        try:
            return cls.model_validate(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError, ValidationError) as err:
            raise ValueError(f"chain config {path}: {err}") from err


class TransformerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(default="rag", min_length=1)
    predictor_host: str = Field(min_length=1, description="host:port (or URL) of the generation predictor")
    predictor_protocol: Protocol = "v1"
    predictor_model: str = Field(default="model", min_length=1, description="model name on the predictor")
    embedder: str = Field(default="all-minilm-l6-v2", description="packaged model id or URL#model")
    embedder_protocol: Protocol = "v1"
    milvus_uri: str = "./data/kzero.db"
    collection: str = "kzero"
    top_k: int = Field(default=4, ge=1, le=50)
    max_top_k: int = Field(default=20, ge=1, le=100)
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    search_mode: SearchMode = "dense"
    max_question_chars: int = Field(default=2000, ge=1)
    max_new_tokens: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    retry: RetryPolicy = RetryPolicy(max_attempts=3)
    chain: ChainConfig = ChainConfig()
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=8081, ge=0, le=65535)
    enable_grpc: bool = True
    load_wait_s: float = Field(default=30.0, ge=0)

    @property
    def predictor_url(self) -> str:
        """HTTP base URL of the predictor (for v1/v2 calls and OpenAI streaming)."""
        return self.predictor_host if "://" in self.predictor_host else f"http://{self.predictor_host}"
