"""Settings of the eventing worker, built once in ``main`` and passed down."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, ValidationError, model_validator

from events.kafka_binding import Mode
from serving.client import WireProtocol
from serving.retry import RetryPolicy
from transformers_pre.ingest.config import IngestConfig

DEFAULT_REQUESTS = "kzero.requests"
DEFAULT_RESULTS = "kzero.results"
DEFAULT_DLQ = "kzero.dlq"
DEFAULT_DOCUMENTS = "kzero.documents"
DEFAULT_GROUP = "kzero-worker"
DOCUMENTS_GROUP = "kzero-documents"
Handler = Literal["inference", "documents"]

# The variables manifests/worker.py gives the worker when Kafka auth is configured, by field.
SECURITY_ENV = {
    "security_protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "ssl_cafile": "KAFKA_SSL_CAFILE",
}


class KafkaSecurity(BaseModel):
    """How every Kafka client of kzero authenticates; the default is plaintext without auth.

    Messages name the environment variables (``SECURITY_ENV``), since that is where these come from.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None  # shown as '**********' in repr, str and validation errors
    ssl_cafile: FilePath | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> KafkaSecurity:
        """Read ``SECURITY_ENV``; an empty variable counts as unset. A bad or incomplete setting is a
        ValueError naming the variable (and never showing the password)."""
        values: dict[str, Any] = {field: env[name] for field, name in SECURITY_ENV.items() if env.get(name)}
        if "sasl_password" in values:
            values["sasl_password"] = SecretStr(values["sasl_password"])
        try:
            return cls(**values)
        except ValidationError as err:
            first = err.errors()[0]
            if not first["loc"]:  # a rule across fields: its message names the variables
                raise ValueError(first["msg"].removeprefix("Value error, ")) from err
            field = str(first["loc"][0])
            raise ValueError(f"{SECURITY_ENV[field]}={values[field]!r}: {first['msg']}") from err

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        protocol = f"KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
        uses_sasl = self.security_protocol.startswith("SASL_")
        for field in ("sasl_mechanism", "sasl_username", "sasl_password"):
            if uses_sasl and getattr(self, field) is None:
                raise ValueError(f"{SECURITY_ENV[field]} is required with {protocol}")
            if not uses_sasl and getattr(self, field) is not None:
                raise ValueError(f"{SECURITY_ENV[field]} is set, but {protocol} does not use SASL")
        if self.ssl_cafile is not None and not self.security_protocol.endswith("SSL"):
            raise ValueError(f"KAFKA_SSL_CAFILE is set, but {protocol} does not use TLS")
        return self

    def describe(self) -> str:
        """The settings that decide the connection, for error messages (never the password)."""
        text = f"KAFKA_SECURITY_PROTOCOL={self.security_protocol}"
        if self.sasl_mechanism is not None:
            text += f", KAFKA_SASL_MECHANISM={self.sasl_mechanism}, KAFKA_SASL_USERNAME={self.sasl_username}"
        return text

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for kafka-python's KafkaConsumer, KafkaProducer and KafkaAdminClient."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.sasl_password is not None:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.get_secret_value())
        if self.ssl_cafile is not None:
            kwargs["ssl_cafile"] = str(self.ssl_cafile)
        return kwargs


class WorkerConfig(BaseModel):
    """``handler`` says what the worker does with an event: ``inference`` calls ``model`` on a predictor
    (or transformer) and answers on ``output_topic``; ``documents`` applies document events to the
    collection of ``documents`` and answers only failures. Both dead-letter to ``dlq_topic``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(min_length=1)
    security: KafkaSecurity = KafkaSecurity()
    handler: Handler = "inference"
    input_topic: str = Field(default=DEFAULT_REQUESTS, description=f"{DEFAULT_DOCUMENTS} with handler documents")
    output_topic: str = DEFAULT_RESULTS
    dlq_topic: str = DEFAULT_DLQ
    group: str = Field(default=DEFAULT_GROUP, description=f"{DOCUMENTS_GROUP} with handler documents")
    predictor_url: str | None = None
    predictor_api_key: SecretStr | None = None  # from KZERO_PREDICTOR_API_KEY; repr shows '**********'
    model: str | None = Field(default=None, min_length=1, description="required with handler inference")
    protocol: WireProtocol | Literal["in-process"] = "v1"
    documents: IngestConfig | None = Field(default=None, description="required with handler documents")
    max_batch: int = Field(default=64, ge=1, description="events per predictor micro-batch")
    max_instances: int = Field(default=256, ge=1, description="instances (OpenAI embeddings: inputs) per "
                               "predictor call")
    max_openai_calls: int = Field(default=64, ge=1, description="OpenAI calls (the batch API's requests; embeddings "
                                  "ones merged) made at once; the predictor's batcher merges them")
    max_wait_ms: int = Field(default=20, ge=0)
    max_in_flight: int = Field(default=512, ge=1, description="events consumed but not yet answered")
    exactly_once: bool = False
    # Kafka ACLs can grant transactional ids by prefix; see transactional_id().
    transactional_id_prefix: str = Field(default="kzero", min_length=1)
    output_mode: Mode = "binary"
    retry: RetryPolicy = RetryPolicy()
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    transaction_timeout_ms: int = Field(default=30_000, ge=1000)
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    source: str = "/kzero/worker"

    @model_validator(mode="before")
    @classmethod
    def _handler_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("handler") == "documents":
            return {"input_topic": DEFAULT_DOCUMENTS, "group": DOCUMENTS_GROUP, **data}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> WorkerConfig:
        if self.handler == "inference":
            if self.model is None:
                raise ValueError("model is required with handler inference")
            if self.protocol != "in-process" and not self.predictor_url:
                raise ValueError(f"predictor_url is required with protocol {self.protocol}")
        elif self.documents is None:
            raise ValueError("documents (the collection and its embedder) is required with handler documents")
        if self.max_in_flight < self.max_batch:
            raise ValueError(f"max_in_flight ({self.max_in_flight}) must be >= max_batch ({self.max_batch})")
        return self

    def transactional_id(self, partition: int) -> str:
        """The transactional id of the producer for one input partition (exactly-once).

        The same for every worker that ever owns the partition, so a new owner's producer fences the
        previous owner's and completes the transaction it left open (``eventing.transactions``).
        """
        return f"{self.transactional_id_prefix}-{self.group}-{self.input_topic}-{partition}"
