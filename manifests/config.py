"""The deploy config: everything a user chooses, validated once, so the rendered set is consistent.

Cross-field rules live here (a Knative concurrency limit the batcher can absorb, a worker count the
topic's partitions can feed, a model source the predictor accepts), so a bad config fails at render
time with the field named, not at 3 a.m. on the cluster.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

import yaml
from kubernetes.utils import parse_quantity
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from eventing.config import DEFAULT_DLQ, DEFAULT_REQUESTS, DEFAULT_RESULTS, WorkerConfig
from manifests.presets import Gpu, GpuProduct, preset_fields
from manifests.sizing import GIB, Footprint, choose_gpu, footprint_for
from predictors.batcher import BatcherConfig
from predictors.config import ADAPTER_NAME, LimitsConfig, PredictorConfig
from serving.defaults import default_of
from serving.packaged import PACKAGED_MODELS
from serving.retry import RetryPolicy
from transformers_pre.config import TransformerConfig

# RFC 1123 label, kept short so derived names ("<name>-transformer-...") stay under 63 characters.
Name = Annotated[str, StringConstraints(pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$", max_length=40)]
# A Go duration as Knative annotations take it ("90s", "10m", "1h").
Duration = Annotated[str, StringConstraints(pattern=r"^\d+(s|m|h)$")]
# An ISO 8601 duration as Knative delivery specs take it ("PT1S", "PT2M").
IsoDuration = Annotated[str, StringConstraints(pattern=r"^PT(\d+H)?(\d+M)?(\d+(\.\d+)?S)?$")]
Quantity = Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?(m|Ki|Mi|Gi|Ti)?$")]

# What Knative Serving's webhook accepts with its default config-defaults/config-autoscaler
# (max-revision-timeout-seconds, container-concurrency-max-limit, the stable window's bounds).
KNATIVE_MAX_TIMEOUT_S = 600
KNATIVE_MAX_CONTAINER_CONCURRENCY = 1000
KNATIVE_WINDOW_S = (6, 3600)
# NVIDIA GPU feature discovery's label for the GPU's product name (the GPU operator runs it).
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"


def duration_s(value: str) -> int:
    """Seconds of a ``Duration`` ("90s", "10m", "1h")."""
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600}[value[-1]]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Resources(_Model):
    cpu: Quantity
    memory: Quantity
    cpu_limit: Quantity | None = None
    gpus: int = Field(default=0, ge=0)

    def to_k8s(self, gpu_resource: str = "nvidia.com/gpu") -> dict[str, dict[str, str]]:
        # Memory limit == request: memory is not compressible, so a pod that may grow past its
        # request is the first one killed under node pressure. KServe would add its own default
        # limits (1 CPU, 2Gi) to a container without them, below what a model needs.
        limits = {"cpu": self.cpu_limit or self.cpu, "memory": self.memory}
        if self.gpus:
            limits[gpu_resource] = str(self.gpus)
        return {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits}


class Toleration(_Model):
    key: str
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"


class Profile(_Model):
    """What differs between the cpu and gpu overlays, for the predictor only."""

    image: str | None = Field(default=None, description="default: the top-level image")
    device: str = Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    dtype: Literal["auto", "float32", "float16", "bfloat16"]
    resources: Resources
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    gpu: Gpu | None = Field(default=None, description="adds a node selector on its product; with a preset, "
                                                       "default: the smallest known GPU that fits")
    scale_down_delay: Duration
    window: Duration
    progress_deadline: Duration
    kv_cache_memory_gb: float | None = Field(
        default=None, gt=0, description="the continuous engine's paged KV cache (--kv_cache_memory_gb); with a "
                                        "generate preset, default: sized for max_batch_size sequences")

    @model_validator(mode="after")
    def _knative_bounds(self) -> Profile:
        low, high = KNATIVE_WINDOW_S
        if not low <= duration_s(self.window) <= high:
            raise ValueError(f"window {self.window!r} must lie between {low}s and {high // 3600}h (Knative's bounds)")
        if duration_s(self.scale_down_delay) > high:
            raise ValueError(f"scale_down_delay {self.scale_down_delay!r} must be at most 1h (Knative's bound)")
        return self

    @model_validator(mode="after")
    def _gpu_on_a_gpu_device(self) -> Profile:
        if self.gpu is not None and self.device == "cpu":
            raise ValueError(f"gpu {self.gpu.product!r} is named for a profile whose device is cpu")
        return self


def _cpu_profile() -> Profile:
    return Profile(device="cpu", dtype="float32", resources=Resources(cpu="2", memory="4Gi"),
                   scale_down_delay="2m", window="60s", progress_deadline="10m")


def _gpu_profile() -> Profile:
    # A scale from zero may first wait for the cluster autoscaler to add a GPU node, pull a large
    # image and load weights: the progress deadline covers all of that; the longer scale-down delay
    # and window keep an expensive replica through short lulls instead of paying that again.
    return Profile(device="cuda", dtype="auto", resources=Resources(cpu="4", memory="16Gi", gpus=1),
                   node_selector={"nvidia.com/gpu.present": "true"},
                   tolerations=[Toleration(key="nvidia.com/gpu")],
                   scale_down_delay="10m", window="120s", progress_deadline="30m")


class Profiles(_Model):
    """A profile given in the config is merged over the default one, so ``gpu: {image: ...}`` is enough."""

    cpu: Profile = Field(default_factory=_cpu_profile)
    gpu: Profile = Field(default_factory=_gpu_profile)

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        defaults = {"cpu": _cpu_profile(), "gpu": _gpu_profile()}
        return {key: {**defaults[key].model_dump(), **value} if key in defaults and isinstance(value, dict) else value
                for key, value in data.items()}


class Adapter(_Model):
    """A LoRA adapter served beside the predictor's model (``--lora NAME=/mnt/adapters/NAME``)."""

    name: str = Field(pattern=ADAPTER_NAME, max_length=128, description="the OpenAI model name that selects it")
    storage_uri: str = Field(pattern=r"^(pvc|s3|gs|hf|https)://.+",
                             description="pvc://claim/path (mounted read-only), or s3:// gs:// hf:// https:// "
                                         "(fetched by KServe's storage initializer, storageUris)")

    @property
    def on_pvc(self) -> bool:
        return self.storage_uri.startswith("pvc://")


class Predictor(_Model):
    model_name: Name
    preset: str | None = Field(default=None, description="a model by name (python -m manifests presets): sets "
                                                         "task and model_id, and sizes the predictor")
    task: Literal["embed", "generate"]
    model_id: str | None = Field(default=None, description="a model packaged in the image")
    storage_uri: str | None = Field(default=None, pattern=r"^(pvc|oci)://.+",
                                    description="pvc://claim/path or oci://registry/image: mounted at /mnt/models")
    gguf_file: str | None = None
    max_batch_size: int = Field(default=default_of(BatcherConfig, "max_batch_size"), ge=1)
    max_batch_latency_ms: float = Field(default=default_of(BatcherConfig, "max_batch_latency_ms"), ge=0)
    max_queue: int = Field(default=default_of(BatcherConfig, "max_queue"), ge=1)
    load_wait_s: float = Field(default=default_of(PredictorConfig, "load_wait_s"), ge=0)
    max_input_tokens: int | None = Field(default=None, ge=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    # Knative refuses initial-scale 0 unless the cluster sets allow-zero-initial-scale.
    initial_scale: int = Field(default=1, ge=1)
    scale_target: int | None = Field(default=None, ge=1, description="default: max_batch_size")
    container_concurrency: int | None = Field(default=None, ge=1, le=KNATIVE_MAX_CONTAINER_CONCURRENCY,
                                              description="default: 2 x scale_target")
    timeout_s: int = Field(default=300, ge=1, le=KNATIVE_MAX_TIMEOUT_S)
    adapters: list[Adapter] = Field(default_factory=list, description="LoRA adapters (task generate)")

    @property
    def effective_scale_target(self) -> int:
        # One full batch per replica in flight is the point where another replica pays off.
        return self.scale_target or self.max_batch_size

    @property
    def effective_container_concurrency(self) -> int:
        # Two batches' worth: one computing while the next fills. Beyond that, requests wait in
        # Knative's queue-proxy/activator (and drive scale-out) instead of in our batcher's queue.
        return self.container_concurrency or 2 * self.effective_scale_target

    @property
    def sequence_tokens(self) -> int:
        """The most tokens one sequence can hold: the predictor refuses longer inputs and stops there."""
        limits = LimitsConfig()
        return (self.max_input_tokens or limits.max_input_tokens) + (self.max_new_tokens or limits.max_new_tokens)

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: object) -> object:
        return preset_fields(data) if isinstance(data, dict) and data.get("preset") is not None else data

    @model_validator(mode="after")
    def _consistent(self) -> Predictor:
        if (self.model_id is None) == (self.storage_uri is None):
            raise ValueError("predictor: give exactly one of model_id (packaged in the image) or storage_uri")
        if self.model_id is not None:
            packaged = PACKAGED_MODELS.get(self.model_id)
            if packaged is None:
                raise ValueError(f"predictor.model_id {self.model_id!r} is not packaged; known: "
                                 f"{', '.join(sorted(PACKAGED_MODELS))}")
            if packaged.task != self.task:
                raise ValueError(f"predictor.model_id {self.model_id!r} is a {packaged.task} model, not {self.task}")
        if self.gguf_file and self.storage_uri is None:
            raise ValueError("predictor.gguf_file needs storage_uri (the GGUF file lives in the model directory)")
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"predictor.min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas})")
        cc, target = self.effective_container_concurrency, self.effective_scale_target
        if cc > KNATIVE_MAX_CONTAINER_CONCURRENCY:
            raise ValueError(f"predictor.container_concurrency ({cc}, 2 x scale_target by default) exceeds Knative's "
                             f"limit of {KNATIVE_MAX_CONTAINER_CONCURRENCY}: set container_concurrency")
        if cc < target:
            raise ValueError(f"predictor.container_concurrency ({cc}) must be >= scale_target ({target}): "
                             "the autoscaler would aim for more concurrent requests than a replica admits")
        if cc > self.max_queue:
            raise ValueError(f"predictor.container_concurrency ({cc}) must be <= max_queue ({self.max_queue}): "
                             "requests Knative admits would be shed by the batcher with 503")
        names = [a.name for a in self.adapters]
        if self.adapters and self.task != "generate":
            raise ValueError("predictor.adapters: LoRA adapters need task generate")
        if len(set(names)) != len(names) or self.model_name in names:
            raise ValueError(f"predictor.adapters: names must be unique and differ from model_name, got {names}")
        return self


class Transformer(_Model):
    model_name: Name = default_of(TransformerConfig, "model_name")
    predictor_protocol: Literal["v1", "v2"] = Field(
        default="v1", description="grpc-v2 cannot pass Knative's single http1 port of the predictor")
    embedder: str = Field(default=default_of(TransformerConfig, "embedder"),
                          description="a predictor URL, or a packaged embed model id")
    collection: str = Field(default=default_of(TransformerConfig, "collection"), pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    top_k: int = Field(default=default_of(TransformerConfig, "top_k"), ge=1)
    max_new_tokens: int = Field(default=default_of(TransformerConfig, "max_new_tokens"), ge=1,
                                description="per answer; at most the predictor's limit")
    resources: Resources = Resources(cpu="1", memory="2Gi")
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    scale_target: int = Field(default=16, ge=1)
    timeout_s: int = Field(default=300, ge=1, le=KNATIVE_MAX_TIMEOUT_S)


class Milvus(_Model):
    uri: str = "http://milvus.milvus.svc.cluster.local:19530"
    namespace: Name = "milvus"
    port: int = 19530


class Telemetry(_Model):
    endpoint: str | None = "http://otel-collector.observability.svc.cluster.local:4317"
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    sampler: Literal["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off",
                     "parentbased_traceidratio"] = "parentbased_traceidratio"
    sampler_arg: str = "1.0"
    log_format: Literal["text", "json"] = Field(default="json", description="KZERO_LOG_FORMAT of every container")
    namespace: Name = "observability"


class KafkaAuth(_Model):
    """Credentials stay in a Secret you create (keys below); the manifests only reference it."""

    mechanism: Literal["none", "plain", "scram-sha-256", "scram-sha-512"] = "none"
    tls: bool = False
    secret: Name | None = Field(default=None, description="keys: protocol, sasl.mechanism, user, password, ca.crt")

    @property
    def enabled(self) -> bool:
        return self.mechanism != "none" or self.tls

    @model_validator(mode="after")
    def _secret(self) -> KafkaAuth:
        if self.enabled and self.secret is None:
            raise ValueError("kafka.auth.secret is required with SASL or TLS")
        return self


class Topic(_Model):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")
    retention_ms: int = Field(ge=-1)


class Kafka(_Model):
    bootstrap_servers: str = "my-cluster-kafka-bootstrap.kafka.svc:9092"
    namespace: Name = Field(default="kafka", description="where the Strimzi cluster and its topic operator run")
    cluster: Name = "my-cluster"
    partitions: int = Field(default=6, ge=1)
    replicas: int = Field(default=1, ge=1)
    ports: list[int] = [9092, 9093]
    requests: Topic = Topic(name=DEFAULT_REQUESTS, retention_ms=7 * 24 * 3600 * 1000)
    results: Topic = Topic(name=DEFAULT_RESULTS, retention_ms=7 * 24 * 3600 * 1000)
    dlq: Topic = Topic(name=DEFAULT_DLQ, retention_ms=30 * 24 * 3600 * 1000)
    auth: KafkaAuth = KafkaAuth()


class Worker(_Model):
    group: Name = default_of(WorkerConfig, "group")
    protocol: Literal["v1", "v2"] = "v1"
    max_batch: int | None = Field(default=None, ge=1, description="default: the predictor's max_batch_size")
    max_wait_ms: int = Field(default=default_of(WorkerConfig, "max_wait_ms"), ge=0)
    max_in_flight: int = Field(default=default_of(WorkerConfig, "max_in_flight"), ge=1)
    max_attempts: int = Field(default=default_of(RetryPolicy, "max_attempts"), ge=1)
    max_replicas: int | None = Field(default=None, ge=1, description="default and upper bound: partitions")
    lag_threshold: int = Field(default=256, ge=1, description="target consumer lag per worker replica")
    activation_lag_threshold: int = Field(default=0, ge=0)
    polling_interval_s: int = Field(default=15, ge=1)
    cooldown_period_s: int = Field(default=300, ge=0)
    shutdown_grace_s: int = Field(default=int(default_of(WorkerConfig, "shutdown_grace_s")), ge=0)
    resources: Resources = Resources(cpu="500m", memory="1Gi", cpu_limit="1")


class KnativeRoute(_Model):
    consumer_group: Name = "kzero-knative"
    initial_offset: Literal["earliest", "latest"] = "earliest"
    # Unordered lets the dispatcher keep many events in flight per partition, which is what
    # fills the predictor's batches; ordered would send one event at a time per partition.
    ordering: Literal["ordered", "unordered"] = "unordered"
    retry: int = Field(default=5, ge=0)
    backoff_delay: IsoDuration = "PT0.5S"
    timeout: IsoDuration = "PT300S"


class Auth(_Model):
    """API keys for the predictor and transformer, from a Secret you create; the manifests only reference it.

    Its key ``api-keys`` (comma-separated) becomes the servers' ``KZERO_API_KEYS``; its key
    ``client-key`` (one of those keys) becomes ``KZERO_PREDICTOR_API_KEY`` of the clients: the
    transformer calling its predictor and the worker calling the service.
    """

    api_keys_secret: Name | None = Field(default=None, description="keys: api-keys, client-key; None: no API keys")


class Network(_Model):
    serving_namespace: Name = "knative-serving"
    ingress_namespace: Name = Field(default="kourier-system", description="istio-system with Istio")
    eventing_namespace: Name = "knative-eventing"
    dns_namespace: Name = "kube-system"
    monitoring_namespace: Name | None = Field(default=None, description="Prometheus, admitted to /metrics")


class Cache(_Model):
    volume: Literal["pvc", "emptyDir"] = "emptyDir"
    size: Quantity = "20Gi"
    create: bool = True
    claim_name: Name | None = Field(default=None, description="default: <name>-model-cache")
    storage_class: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany"] = "ReadWriteMany"


class DeployConfig(_Model):
    name: Name
    namespace: Name
    image: str = Field(min_length=1)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    kafka_overlays_on: Literal["cpu", "gpu"] = "cpu"
    predictor: Predictor
    transformer: Transformer | None = None
    profiles: Profiles = Profiles()
    cache: Cache = Cache()
    kafka: Kafka = Kafka()
    worker: Worker = Worker()
    knative: KnativeRoute = KnativeRoute()
    milvus: Milvus = Milvus()
    telemetry: Telemetry = Telemetry()
    network: Network = Network()
    auth: Auth = Auth()

    @model_validator(mode="after")
    def _consistent(self) -> DeployConfig:
        if self.worker.max_replicas is not None and self.worker.max_replicas > self.kafka.partitions:
            raise ValueError(f"worker.max_replicas ({self.worker.max_replicas}) > kafka.partitions "
                             f"({self.kafka.partitions}): the extra workers would get no partition")
        if self.worker.max_in_flight < self.worker_max_batch:
            raise ValueError(f"worker.max_in_flight ({self.worker.max_in_flight}) must be >= max_batch "
                             f"({self.worker_max_batch})")
        if self.transformer is not None:
            if self.transformer.model_name == self.predictor.model_name:
                raise ValueError("transformer.model_name must differ from predictor.model_name")
            limit = self.predictor.max_new_tokens or LimitsConfig().max_new_tokens
            if self.transformer.max_new_tokens > limit:
                raise ValueError(f"transformer.max_new_tokens ({self.transformer.max_new_tokens}) exceeds the "
                                 f"predictor's max_new_tokens ({limit}): every answer would be refused")
        for name in ("cpu", "gpu"):
            self.profile(name)  # a preset that fits no GPU (or not the named one) is refused here
        return self

    def profile(self, name: str) -> Profile:
        """The cpu or gpu profile as rendered: a named GPU adds its product label to the node selector;
        with a preset, the memory request covers the model and the GPU is one it fits
        (``manifests/sizing.py``; raises ValueError with the arithmetic when none does)."""
        profile: Profile = getattr(self.profiles, name)
        footprint, gpu = self.footprint(name), self.gpu(name)
        update: dict[str, object] = {}
        resources: dict[str, object] = {}
        # The configured request stays when it is larger: sizing sets a floor, not a ceiling.
        if footprint is not None and parse_quantity(footprint.memory_request) > parse_quantity(
                profile.resources.memory):
            resources["memory"] = footprint.memory_request
        if footprint is not None and footprint.on_gpu and not profile.resources.gpus:
            resources["gpus"] = 1
        if resources:
            update["resources"] = profile.resources.model_copy(update=resources)
        if footprint is not None and footprint.kv_cache and profile.kv_cache_memory_gb is None:
            # The continuous engine gets the KV cache the footprint sized (and the memory request covers).
            update["kv_cache_memory_gb"] = math.ceil(footprint.kv_cache / GIB * 100) / 100
        if gpu is not None:
            update["node_selector"] = {**profile.node_selector, GPU_PRODUCT_LABEL: gpu.product}
        return profile.model_copy(update=update)

    def gpu(self, name: str) -> GpuProduct | None:
        """The GPU the cpu or gpu profile names or, with a preset, the one it is sized for."""
        profile: Profile = getattr(self.profiles, name)
        named = profile.gpu.resolved if profile.gpu is not None else None
        footprint = self.footprint(name)
        return choose_gpu(footprint, named) if footprint is not None and footprint.on_gpu else named

    def footprint(self, name: str) -> Footprint | None:
        """The memory the preset needs on the cpu or gpu profile (None without a preset)."""
        if self.predictor.preset is None:
            return None
        profile: Profile = getattr(self.profiles, name)
        return footprint_for(self.predictor.preset, device=profile.device, dtype=profile.dtype,
                             gpus=profile.resources.gpus, tokens=self.predictor.sequence_tokens,
                             sequences=self.predictor.max_batch_size)

    @property
    def worker_max_batch(self) -> int:
        return self.worker.max_batch or self.predictor.max_batch_size

    @property
    def worker_max_replicas(self) -> int:
        return self.worker.max_replicas or self.kafka.partitions

    @property
    def cache_claim(self) -> str:
        return self.cache.claim_name or f"{self.name}-model-cache"

    @property
    def entry_component(self) -> str:
        """The component that receives the InferenceService's traffic."""
        return "transformer" if self.transformer is not None else "predictor"

    @property
    def entry_model(self) -> str:
        return self.transformer.model_name if self.transformer is not None else self.predictor.model_name

    def component_host(self, component: str) -> str:
        # Every Knative Service has a cluster-local address whatever the networking layer;
        # the InferenceService's own top-level host needs KServe's Istio VirtualService.
        return f"{self.name}-{component}.{self.namespace}.svc.cluster.local"


def load_config(path: Path) -> DeployConfig:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return DeployConfig.model_validate(data)
