"""``BatchApiConfig``: the settings of ``python -m eventing batch-api``, built once in ``main()``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from eventing.config import DEFAULT_DLQ, DEFAULT_RESULTS, KafkaSecurity


class BatchApiConfig(BaseModel):
    """``models`` maps a ``body.model`` of an input line to the request topic its worker consumes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    security: KafkaSecurity = KafkaSecurity()
    data_dir: Path
    models: dict[str, str] = Field(min_length=1)
    results_topic: str = DEFAULT_RESULTS
    dlq_topic: str = DEFAULT_DLQ
    group: str = Field(default="kzero-batch-api", min_length=1, description="the results consumer's group")
    host: str = "127.0.0.1"
    port: int = Field(default=8090, ge=0, le=65535)
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1, description="an upload over this is a 413")
    max_lines: int = Field(default=50_000, ge=1, description="input lines per batch, as OpenAI allows")
    send_chunk: int = Field(default=1000, ge=1, description="lines produced between two durable progress marks")
    tick_s: float = Field(default=0.2, gt=0, description="how often the runner advances the batches")
    source: str = "/kzero/batches"
