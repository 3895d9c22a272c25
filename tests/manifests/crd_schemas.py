"""The fields Knative, KEDA and Strimzi document for the resources we render, as strict pydantic models.

No cluster here, so no CRD validation; instead every key we write must be one of the documented
field names (``extra="forbid"``), with the documented enums. Sources:
- Knative Destination/Delivery: https://knative.dev/docs/eventing/event-delivery/ and
  knative.dev/pkg/apis/duck/v1 (Destination, KReference), knative.dev/eventing/pkg/apis/duck/v1 (DeliverySpec)
- KafkaSource v1: https://knative.dev/docs/eventing/sources/kafka-source/ and eventing-kafka-broker
  control-plane/pkg/apis/sources/v1/kafka_types.go (+ bindings/v1 KafkaAuthSpec/KafkaNetSpec)
- Kafka Broker: https://knative.dev/docs/eventing/brokers/broker-types/kafka-broker/
- Trigger: https://knative.dev/docs/eventing/triggers/ (and the Kafka delivery.order annotation)
- KafkaSink v1alpha1: https://knative.dev/docs/eventing/sinks/kafka-sink/
- KEDA ScaledObject: https://keda.sh/docs/latest/reference/scaledobject-spec/, Kafka scaler:
  https://keda.sh/docs/latest/scalers/apache-kafka/, TriggerAuthentication:
  https://keda.sh/docs/latest/concepts/authentication/
- Strimzi KafkaTopic: https://strimzi.io/docs/operators/latest/configuring.html#type-KafkaTopicSpec-reference
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Meta(Strict):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class KReference(Strict):
    apiVersion: str
    kind: str
    name: str
    namespace: str | None = None


class Destination(Strict):
    ref: KReference | None = None
    uri: str | None = None
    CACerts: str | None = None
    audience: str | None = None


class Delivery(Strict):
    deadLetterSink: Destination | None = None
    retry: int | None = Field(default=None, ge=0)
    backoffPolicy: Literal["linear", "exponential"] | None = None
    backoffDelay: str | None = Field(default=None, pattern=r"^P")
    timeout: str | None = Field(default=None, pattern=r"^P")
    retryAfterMax: str | None = None


class SecretKeyRef(Strict):
    name: str
    key: str
    optional: bool | None = None


class SecretValue(Strict):
    secretKeyRef: SecretKeyRef


class Sasl(Strict):
    enable: bool
    user: SecretValue | None = None
    password: SecretValue | None = None
    type: SecretValue | None = None


class Tls(Strict):
    enable: bool
    cert: SecretValue | None = None
    key: SecretValue | None = None
    caCert: SecretValue | None = None


class Net(Strict):
    sasl: Sasl | None = None
    tls: Tls | None = None


class KafkaSourceSpec(Strict):
    bootstrapServers: list[str] = Field(min_length=1)
    net: Net | None = None
    topics: list[str] = Field(min_length=1)
    consumerGroup: str | None = None
    initialOffset: Literal["earliest", "latest"] | None = None
    ordering: Literal["ordered", "unordered"] | None = None
    consumers: int | None = None
    delivery: Delivery | None = None
    sink: Destination
    ceOverrides: dict[str, Any] | None = None


class BrokerSpec(Strict):
    config: KReference | None = None
    delivery: Delivery | None = None


class TriggerFilter(Strict):
    attributes: dict[str, str]


class TriggerSpec(Strict):
    broker: str
    filter: TriggerFilter | None = None
    filters: list[dict[str, Any]] | None = None
    subscriber: Destination
    delivery: Delivery | None = None


class KafkaSinkAuth(Strict):
    secret: dict[Literal["ref"], dict[Literal["name"], str]]


class KafkaSinkSpec(Strict):
    topic: str
    bootstrapServers: list[str] = Field(min_length=1)
    contentMode: Literal["binary", "structured"] | None = None
    numPartitions: int | None = None
    replicationFactor: int | None = None
    auth: KafkaSinkAuth | None = None


KAFKA_SCALER_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "version", "partitionLimitation",
    "sasl", "tls", "unsafeSsl", "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions",
}


class ScaleTargetRef(Strict):
    apiVersion: str | None = None
    kind: str | None = None
    name: str
    envSourceContainerName: str | None = None


class AuthenticationRef(Strict):
    name: str
    kind: Literal["TriggerAuthentication", "ClusterTriggerAuthentication"] | None = None


class ScaledTrigger(Strict):
    type: str
    name: str | None = None
    metadata: dict[str, str]  # KEDA takes strings only, numbers included
    authenticationRef: AuthenticationRef | None = None
    metricType: Literal["AverageValue", "Value", "Utilization"] | None = None
    useCachedMetrics: bool | None = None


class ScaledObjectSpec(Strict):
    scaleTargetRef: ScaleTargetRef
    pollingInterval: int | None = None
    cooldownPeriod: int | None = None
    initialCooldownPeriod: int | None = None
    idleReplicaCount: int | None = None
    minReplicaCount: int | None = None
    maxReplicaCount: int | None = None
    fallback: dict[str, Any] | None = None
    advanced: dict[str, Any] | None = None
    triggers: list[ScaledTrigger] = Field(min_length=1)


class SecretTargetRef(Strict):
    parameter: Literal["sasl", "username", "password", "tls", "ca", "cert", "key", "keyPassword", "unsafeSsl"]
    name: str
    key: str


class TriggerAuthenticationSpec(Strict):
    secretTargetRef: list[SecretTargetRef]


class KafkaTopicSpec(Strict):
    topicName: str | None = None
    partitions: int | None = Field(default=None, ge=1)
    replicas: int | None = Field(default=None, ge=1, le=32767)
    config: dict[str, Any] | None = None


class Resource(Strict):
    apiVersion: str
    kind: str
    metadata: Meta
    spec: Any


SPECS: dict[tuple[str, str], type[Strict]] = {
    ("sources.knative.dev/v1", "KafkaSource"): KafkaSourceSpec,
    ("eventing.knative.dev/v1", "Broker"): BrokerSpec,
    ("eventing.knative.dev/v1", "Trigger"): TriggerSpec,
    ("eventing.knative.dev/v1alpha1", "KafkaSink"): KafkaSinkSpec,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObjectSpec,
    ("keda.sh/v1alpha1", "TriggerAuthentication"): TriggerAuthenticationSpec,
    ("kafka.strimzi.io/v1", "KafkaTopic"): KafkaTopicSpec,
}


def validate(doc: dict[str, Any]) -> Strict:
    """Validate one custom resource; returns its typed spec."""
    resource = Resource.model_validate(doc)
    return SPECS[(resource.apiVersion, resource.kind)].model_validate(resource.spec)
