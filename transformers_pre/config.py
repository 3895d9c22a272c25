"""Settings of the RAG transformer and its chain, built once in ``main`` and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from serving.auth import AuthConfig
from serving.client import WireProtocol
from serving.limits import RequestLimits
from serving.retry import RetryPolicy
from transformers_pre.filters import DEFAULT_FILTER_FIELDS, FieldType, check_fields
from transformers_pre.index import IndexConfig
from transformers_pre.store import SearchMode


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
    predictor_protocol: WireProtocol = "v1"
    predictor_model: str = Field(default="model", min_length=1, description="model name on the predictor")
    embedder: str = Field(default="all-minilm-l6-v2", description="packaged model id or URL#model")
    embedder_protocol: WireProtocol = "v1"
    milvus_uri: str = "./data/kzero.db"
    collection: str = Field(default="kzero", min_length=1, description="searched when a request names none")
    collections: tuple[str, ...] = Field(default=(), description="all a request may name (default: collection)")
    filter_fields: dict[str, FieldType] = Field(default_factory=lambda: dict(DEFAULT_FILTER_FIELDS))
    allow_raw_filter: bool = Field(default=False, description="accept raw Milvus expressions (trusted callers)")
    top_k: int = Field(default=4, ge=1, le=50)
    max_top_k: int = Field(default=20, ge=1, le=100)
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    search_mode: SearchMode = "dense"
    index: IndexConfig = Field(default=IndexConfig(), description="only its search parameters apply here")
    max_question_chars: int = Field(default=2000, ge=1)
    max_new_tokens: int = Field(default=256, ge=1)
    request_timeout_s: float = Field(default=120.0, gt=0)
    retry: RetryPolicy = RetryPolicy(max_attempts=3)
    chain: ChainConfig = ChainConfig()
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=8081, ge=0, le=65535)
    enable_grpc: bool = True
    load_wait_s: float = Field(default=30.0, ge=0)
    request_limits: RequestLimits = RequestLimits()
    auth: AuthConfig = AuthConfig()
    predictor_api_key: SecretStr | None = Field(default=None, description="sent to the predictor and embedder")

    @field_validator("filter_fields")
    @classmethod
    def _filterable(cls, fields: dict[str, FieldType]) -> dict[str, FieldType]:
        check_fields(fields)
        return fields

    @model_validator(mode="before")
    @classmethod
    def _default_from_collections(cls, data: Any) -> Any:
        if isinstance(data, dict) and "collection" not in data and data.get("collections"):
            return {**data, "collection": data["collections"][0]}
        return data

    @model_validator(mode="after")
    def _default_is_served(self) -> TransformerConfig:
        if self.collections and self.collection not in self.collections:
            raise ValueError(f"collection {self.collection!r} is not one of collections {list(self.collections)}")
        return self

    @property
    def served_collections(self) -> tuple[str, ...]:
        """The collections requests may search; the default one first."""
        return (self.collection, *(c for c in self.collections if c != self.collection))

    @property
    def predictor_url(self) -> str:
        """HTTP base URL of the predictor (for v1/v2 calls and OpenAI streaming)."""
        return self.predictor_host if "://" in self.predictor_host else f"http://{self.predictor_host}"
