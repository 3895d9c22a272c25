"""Kafka topics (Strimzi ``KafkaTopic``) and the Kafka credentials, by reference only.

One Secret (named by ``kafka.auth.secret``, created by you, never rendered) serves every client, in
the key layout Knative's Kafka components read: ``protocol``, ``sasl.mechanism``, ``user``,
``password``, ``ca.crt``. The KEDA scaler and the worker read the same keys.
"""

from __future__ import annotations

from manifests.config import DeployConfig, Topic
from manifests.settings import Doc, labels

SASL_MECHANISMS = {"plain": "PLAIN", "scram-sha-256": "SCRAM-SHA-256", "scram-sha-512": "SCRAM-SHA-512"}
# KEDA's kafka scaler spells the mechanisms its own way (https://keda.sh/docs/latest/scalers/apache-kafka/).
KEDA_SASL = {"none": "none", "plain": "plaintext", "scram-sha-256": "scram_sha256", "scram-sha-512": "scram_sha512"}
TLS_MOUNT = "/etc/kzero/kafka-tls"


def security_protocol(config: DeployConfig) -> str:
    auth = config.kafka.auth
    if auth.mechanism == "none":
        return "SSL" if auth.tls else "PLAINTEXT"
    return "SASL_SSL" if auth.tls else "SASL_PLAINTEXT"


def bootstrap_list(config: DeployConfig) -> list[str]:
    return [s.strip() for s in config.kafka.bootstrap_servers.split(",") if s.strip()]


def secret_key(config: DeployConfig, key: str) -> Doc:
    assert config.kafka.auth.secret is not None
    return {"secretKeyRef": {"name": config.kafka.auth.secret, "key": key}}


def _topic(config: DeployConfig, role: str, topic: Topic) -> Doc:
    # The resource name must be a DNS name; the Kafka topic name (dots allowed) is spec.topicName.
    return {
        "apiVersion": "kafka.strimzi.io/v1",
        "kind": "KafkaTopic",
        "metadata": {"name": f"{config.name}-{role}", "namespace": config.kafka.namespace,
                     "labels": {**labels(config, "kafka"), "strimzi.io/cluster": config.kafka.cluster}},
        "spec": {"topicName": topic.name, "partitions": config.kafka.partitions, "replicas": config.kafka.replicas,
                 "config": {"retention.ms": topic.retention_ms, "cleanup.policy": "delete"}},
    }


def kafka_topics(config: DeployConfig) -> list[Doc]:
    k = config.kafka
    return [_topic(config, "requests", k.requests), _topic(config, "results", k.results), _topic(config, "dlq", k.dlq)]
