"""The Knative route for the same requests topic: KafkaSource -> Kafka Broker -> Trigger -> InferenceService.

The KafkaSource feeds the Broker rather than the InferenceService directly because a source drops
its sink's reply (eventing-kafka-broker#1307, #1340): through a Broker, the service's reply (a
``dev.kzero.inference.result`` event) goes back into the Broker, and a second Trigger writes it to
the results topic through a KafkaSink. The request Trigger filters on the request type, so replies
never loop back into the service. Failed deliveries and error events go to the DLQ topic.

Field names follow the Knative docs: KafkaSource
(https://knative.dev/docs/eventing/sources/kafka-source/), Kafka Broker
(https://knative.dev/docs/eventing/brokers/broker-types/kafka-broker/), KafkaSink
(https://knative.dev/docs/eventing/sinks/kafka-sink/), delivery
(https://knative.dev/docs/eventing/event-delivery/).
"""

from __future__ import annotations

from events.event import ERROR_TYPE, REQUEST_TYPE, RESULT_TYPE
from manifests.config import DeployConfig
from manifests.kafka import bootstrap_list, secret_key
from manifests.settings import Doc, metadata

COMPONENT = "eventing"


def broker_name(config: DeployConfig) -> str:
    return config.name


def _sink_ref(config: DeployConfig, role: str) -> Doc:
    return {"ref": {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink",
                    "name": f"{config.name}-{role}", "namespace": config.namespace}}


def _kafka_sink(config: DeployConfig, role: str, topic: str) -> Doc:
    spec: Doc = {"topic": topic, "bootstrapServers": bootstrap_list(config), "contentMode": "binary"}
    if config.kafka.auth.enabled:
        spec["auth"] = {"secret": {"ref": {"name": config.kafka.auth.secret}}}
    return {"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "KafkaSink",
            "metadata": metadata(config, f"{config.name}-{role}", COMPONENT), "spec": spec}


def kafka_sinks(config: DeployConfig) -> list[Doc]:
    k = config.kafka
    return [_kafka_sink(config, "results", k.results.name), _kafka_sink(config, "dlq", k.dlq.name)]


def _broker_config(config: DeployConfig) -> Doc:
    data = {"bootstrap.servers": config.kafka.bootstrap_servers,
            "default.topic.partitions": str(config.kafka.partitions),
            "default.topic.replication.factor": str(config.kafka.replicas)}
    if config.kafka.auth.enabled:
        data["auth.secret.ref.name"] = str(config.kafka.auth.secret)
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(config, f"{config.name}-kafka-broker-config", COMPONENT), "data": data}


def broker(config: DeployConfig) -> list[Doc]:
    cm = _broker_config(config)
    meta = metadata(config, broker_name(config), COMPONENT)
    meta["annotations"] = {"eventing.knative.dev/broker.class": "Kafka"}
    spec = {"config": {"apiVersion": "v1", "kind": "ConfigMap", "name": cm["metadata"]["name"],
                       "namespace": config.namespace}}
    return [cm, {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "metadata": meta, "spec": spec}]


def _delivery(config: DeployConfig, *, timeout: bool, dead_letters: bool = True) -> Doc:
    k = config.knative
    delivery: Doc = {"retry": k.retry, "backoffPolicy": "exponential", "backoffDelay": k.backoff_delay}
    if dead_letters:
        delivery = {"deadLetterSink": _sink_ref(config, "dlq"), **delivery}
    if timeout:
        delivery["timeout"] = k.timeout
    return delivery


def _trigger(config: DeployConfig, role: str, event_type: str, subscriber: Doc, delivery: Doc) -> Doc:
    meta = metadata(config, f"{config.name}-{role}", COMPONENT)
    # Unordered: many events in flight per partition, so the predictor's batches fill.
    meta["annotations"] = {"kafka.eventing.knative.dev/delivery.order": config.knative.ordering}
    spec: Doc = {"broker": broker_name(config), "filter": {"attributes": {"type": event_type}},
                 "subscriber": subscriber, "delivery": delivery}
    return {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": meta, "spec": spec}


def triggers(config: DeployConfig) -> list[Doc]:
    service = {"ref": {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
                       "name": config.name, "namespace": config.namespace},
               "uri": f"/v1/models/{config.entry_model}:predict"}
    return [
        _trigger(config, "requests", REQUEST_TYPE, service, _delivery(config, timeout=True)),
        _trigger(config, "results", RESULT_TYPE, _sink_ref(config, "results"), _delivery(config, timeout=False)),
        # Error events a batch reply carries for its failed items. Retries ride out a broker hiccup;
        # no dead-letter sink, as it would be the same DLQ sink that just failed.
        _trigger(config, "errors", ERROR_TYPE, _sink_ref(config, "dlq"),
                 _delivery(config, timeout=False, dead_letters=False)),
    ]


def _net(config: DeployConfig) -> Doc | None:
    auth = config.kafka.auth
    if not auth.enabled:
        return None
    net: Doc = {}
    if auth.mechanism != "none":
        net["sasl"] = {"enable": True, "user": secret_key(config, "user"),
                       "password": secret_key(config, "password"), "type": secret_key(config, "sasl.mechanism")}
    if auth.tls:
        net["tls"] = {"enable": True, "caCert": secret_key(config, "ca.crt")}
    return net


def kafka_source(config: DeployConfig) -> Doc:
    k = config.knative
    spec: Doc = {
        "bootstrapServers": bootstrap_list(config), "topics": [config.kafka.requests.name],
        "consumerGroup": k.consumer_group, "initialOffset": k.initial_offset, "ordering": k.ordering,
        "sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                         "name": broker_name(config), "namespace": config.namespace}},
    }
    if (net := _net(config)) is not None:
        spec["net"] = net
    return {"apiVersion": "sources.knative.dev/v1", "kind": "KafkaSource",
            "metadata": metadata(config, f"{config.name}-requests", COMPONENT), "spec": spec}


def knative_route(config: DeployConfig) -> list[Doc]:
    return [*broker(config), *kafka_sinks(config), *triggers(config), kafka_source(config)]
