"""Settings of the eventing worker, built once in ``main`` and passed down."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eventing.kafka_binding import Mode
from predictors.retry import RetryPolicy

DEFAULT_REQUESTS = "kzero.requests"
DEFAULT_RESULTS = "kzero.results"
DEFAULT_DLQ = "kzero.dlq"


class WorkerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    input_topic: str = DEFAULT_REQUESTS
    output_topic: str = DEFAULT_RESULTS
    dlq_topic: str = DEFAULT_DLQ
    group: str = "kzero-worker"
    predictor_url: str | None = None
    model: str = Field(min_length=1)
    protocol: Literal["v1", "v2", "grpc-v2", "in-process"] = "v1"
    max_batch: int = Field(default=64, ge=1, description="events per predictor micro-batch")
    max_instances: int = Field(default=256, ge=1, description="instances per predictor call")
    max_wait_ms: int = Field(default=20, ge=0)
    max_in_flight: int = Field(default=512, ge=1, description="events consumed but not yet answered")
    exactly_once: bool = False
    transactional_id: str | None = None
    output_mode: Mode = "binary"
    retry: RetryPolicy = RetryPolicy()
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    transaction_timeout_ms: int = Field(default=30_000, ge=1000)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    source: str = "/kzero/worker"

    @model_validator(mode="after")
    def _predictor(self) -> WorkerConfig:
        if self.protocol != "in-process" and not self.predictor_url:
            raise ValueError(f"predictor_url is required with protocol {self.protocol}")
        if self.max_in_flight < self.max_batch:
            raise ValueError(f"max_in_flight ({self.max_in_flight}) must be >= max_batch ({self.max_batch})")
        return self

    @property
    def effective_transactional_id(self) -> str:
        # Stable across restarts of the same worker, so a restarted worker fences its crashed
        # predecessor and aborts the transaction it left open at once.
        return self.transactional_id or f"kzero-{self.group}-{self.input_topic}-{socket.gethostname()}"
