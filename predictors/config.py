"""Settings of one predictor server, built once in ``main`` and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from predictors.batcher import BatcherConfig
from serving.auth import AuthConfig
from serving.limits import RequestLimits
from serving.packaged import PACKAGED_MODELS

Task = Literal["embed", "generate"]
Dtype = Literal["auto", "float32", "float16", "bfloat16"]
EngineKind = Literal["static", "continuous"]
ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"  # as a model name: the OpenAI ``model`` field selects it


class LoraAdapter(BaseModel):
    """A peft LoRA adapter directory served beside the base model under ``name`` (``--lora NAME=PATH``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=ADAPTER_NAME)
    path: Path


class LimitsConfig(BaseModel):
    """Request-size limits; anything beyond them is a 4xx naming the field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_instances: int = Field(default=256, ge=1)
    max_input_tokens: int = Field(default=2048, ge=1)
    max_new_tokens: int = Field(default=512, ge=1)
    default_max_new_tokens: int = Field(default=64, ge=1)


class EngineConfig(BaseModel):
    """The generation engine: ``static`` (batches of whole requests through the batcher) or ``continuous``
    (transformers' continuous batching: token-level scheduling over a paged KV cache)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Continuous is the default: under open-loop load it matched or beat static's tokens/s at every rate and
    # cut TTFT p99 to 0.1x, even on a 2-core CPU (docs/benchmarks.md). Adapters given without an engine
    # get the static one (PredictorConfig._static_for_adapters).
    engine: EngineKind = "continuous"
    max_num_seqs: int = Field(default=32, ge=1, description="sequences decoding at once (continuous)")
    kv_cache_memory_gb: float = Field(default=0.25, gt=0.0, description="paged KV cache budget (continuous)")
    max_batch_tokens: int = Field(default=256, ge=16, description="tokens per step; longer prompts prefill in chunks")
    kv_page_size: int = Field(default=32, ge=4, description="tokens per KV cache page (continuous)")


class PredictorConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(default="model", min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    task: Task
    model_dir: Path | None = None
    model_id: str | None = None
    gguf_file: str | None = None
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Dtype = "auto"
    cache_dir: Path = Path.home() / ".cache" / "kzero"
    batcher: BatcherConfig = BatcherConfig()
    limits: LimitsConfig = LimitsConfig()
    generation: EngineConfig = EngineConfig()
    # embed on a CPU: the encoder as a traced TorchScript graph, checked against the eager model at load
    embed_graph: bool = True
    request_limits: RequestLimits = RequestLimits()
    load_wait_s: float = Field(default=30.0, ge=0.0, description="how long a request waits for a loading model")
    retry_after_s: int = Field(default=5, ge=1)
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=8081, ge=0, le=65535)
    enable_grpc: bool = True
    workers: int = Field(default=1, ge=1)
    auth: AuthConfig = AuthConfig()
    enable_model_repository: bool = False
    lora: tuple[LoraAdapter, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _static_for_adapters(cls, data: object) -> object:
        """``--lora`` without ``--engine`` runs the static engine: only it applies an adapter per request."""
        if isinstance(data, dict) and data.get("lora"):
            generation = data.get("generation") or {}
            if isinstance(generation, dict):
                generation = EngineConfig.model_validate(generation)
            if isinstance(generation, EngineConfig) and "engine" not in generation.model_fields_set:
                data = {**data, "generation": generation.model_copy(update={"engine": "static"})}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> PredictorConfig:
        if (self.model_dir is None) == (self.model_id is None):
            raise ValueError("give exactly one of model_dir or model_id")
        if self.model_id is not None:
            packaged = PACKAGED_MODELS.get(self.model_id)
            if packaged is None:
                known = ", ".join(sorted(PACKAGED_MODELS))
                raise ValueError(f"model_id {self.model_id!r} is not a packaged model; known: {known}")
            if packaged.task != self.task:
                raise ValueError(f"model_id {self.model_id!r} is a {packaged.task} model, not {self.task}")
        if self.workers > 1:
            # KServe forks one process per worker, each with its own copy of the model, and
            # its transformer/predictor config is lost in the workers (kserve#3662). Scale with
            # replicas instead; the in-process batcher needs all requests in one process.
            raise ValueError(
                f"workers={self.workers}: kzero predictors run one process per replica; each extra "
                "worker would load another copy of the model (kserve#3662) and split the batches. "
                "Scale with replicas instead."
            )
        self._check_lora()
        return self

    def _check_lora(self) -> None:
        names = [a.name for a in self.lora]
        if len(set(names)) != len(names):
            raise ValueError(f"lora: adapter names must be unique, got {', '.join(names)}")
        if self.model_name in names:
            raise ValueError(f"lora: adapter {self.model_name!r} has the base model's name (--model_name)")
        if self.lora and self.task != "generate":
            raise ValueError("lora: adapters need --task generate")
        if self.lora and self.generation.engine != "static":
            # transformers' continuous batching runs the bare model: it cannot apply an adapter per row.
            raise ValueError("lora: adapters need the static engine (--engine static); the continuous engine "
                             "cannot apply a LoRA adapter per request")
