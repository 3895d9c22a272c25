"""The Kafka overlays wire one consistent path: topics, consumers, scaler, triggers and sinks agree."""

from __future__ import annotations

from typing import Any

import pytest

from eventing.__main__ import build_parser as eventing_parser
from eventing.__main__ import worker_config
from eventing.config import KafkaSecurity, WorkerConfig
from events.event import ERROR_TYPE, REQUEST_TYPE, RESULT_TYPE
from manifests.config import DeployConfig
from manifests.render import overlay_documents
from tests.manifests.helpers import EXAMPLES, configmap_data, example, find, of_kind, resolve_env

Doc = dict[str, Any]


@pytest.fixture(params=[p.stem for p in EXAMPLES])
def config(request: pytest.FixtureRequest) -> DeployConfig:
    return example(request.param)


def _worker(docs: list[Doc]) -> tuple[Doc, Any, dict[str, str]]:
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = resolve_env(container, configmap_data(docs), {})
    assert container["command"] == ["python", "-m", "eventing"]
    return container, eventing_parser().parse_args(container["args"]), env


def _worker_config(args: Any, env: dict[str, str]) -> WorkerConfig:
    """As ``python -m eventing worker`` builds it, so its validation runs on the manifest's flags."""
    args.bootstrap_servers = args.bootstrap_servers or env["KAFKA_BOOTSTRAP_SERVERS"]
    return worker_config(args, KafkaSecurity(), None)


def _topics(docs: list[Doc]) -> dict[str, Doc]:
    return {t["spec"]["topicName"]: t for t in of_kind(docs, "KafkaTopic")}


def test_worker_flags_topics_and_scaler_agree(config: DeployConfig) -> None:
    docs = overlay_documents(config, "kafka-worker")
    _, args, env = _worker(docs)
    worker = _worker_config(args, env)
    assert worker.bootstrap_servers == config.kafka.bootstrap_servers
    assert worker.predictor_url == f"http://{config.name}-{config.entry_component}.{config.namespace}.svc.cluster.local"
    assert worker.model == config.entry_model
    topics = _topics(docs)
    assert set(topics) == {worker.input_topic, worker.output_topic, worker.dlq_topic}
    for topic in topics.values():
        assert topic["metadata"]["namespace"] == config.kafka.namespace
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == config.kafka.cluster
        assert int(topic["spec"]["config"]["retention.ms"]) > 0
    scaled = find(docs, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == find(docs, "Deployment")["metadata"]["name"]
    assert scaled["minReplicaCount"] == 0
    assert scaled["maxReplicaCount"] <= topics[worker.input_topic]["spec"]["partitions"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == worker.input_topic
    assert trigger["metadata"]["consumerGroup"] == worker.group
    assert trigger["metadata"]["bootstrapServers"] == worker.bootstrap_servers


def test_worker_stops_within_its_grace_period(config: DeployConfig) -> None:
    docs = overlay_documents(config, "kafka-worker")
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > WorkerConfig.model_fields["shutdown_grace_s"].default
    assert "replicas" not in find(docs, "Deployment")["spec"]  # KEDA owns it


@pytest.mark.parametrize("overlay", ["kafka-worker", "kafka-knative"])
def test_each_kafka_overlay_has_one_consumer_of_the_requests_topic(config: DeployConfig, overlay: str) -> None:
    docs = overlay_documents(config, overlay)
    requests = config.kafka.requests.name
    consumers = [d for d in of_kind(docs, "KafkaSource") if requests in d["spec"]["topics"]]
    consumers += [d for d in of_kind(docs, "Deployment")
                  if requests in d["spec"]["template"]["spec"]["containers"][0]["args"]]
    assert len(consumers) == 1, "two consumer groups on the requests topic would answer every request twice"


def _resolves(ref: Doc, docs: list[Doc]) -> bool:
    return any(d["apiVersion"] == ref["apiVersion"] and d["kind"] == ref["kind"]
               and d["metadata"]["name"] == ref["name"] for d in docs)


def test_knative_route_reaches_the_service_and_never_loops(config: DeployConfig) -> None:
    docs = overlay_documents(config, "kafka-knative")
    broker = find(docs, "Broker")
    assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    assert _resolves(broker["spec"]["config"], docs)
    source = find(docs, "KafkaSource")["spec"]
    assert source["topics"] == [config.kafka.requests.name]
    assert source["consumerGroup"] and source["initialOffset"] in ("earliest", "latest")
    assert source["ordering"] in ("ordered", "unordered")
    assert source["sink"]["ref"]["kind"] == "Broker" and _resolves(source["sink"]["ref"], docs)
    triggers = {t["spec"]["filter"]["attributes"]["type"]: t["spec"] for t in of_kind(docs, "Trigger")}
    assert set(triggers) == {REQUEST_TYPE, RESULT_TYPE, ERROR_TYPE}
    to_service = [t for t in triggers.values() if t["subscriber"]["ref"]["kind"] == "InferenceService"]
    assert to_service == [triggers[REQUEST_TYPE]]  # a result or error event never reaches the service again
    request = triggers[REQUEST_TYPE]
    assert _resolves(request["subscriber"]["ref"], docs)
    assert request["subscriber"]["uri"] == f"/v1/models/{config.entry_model}:predict"
    delivery = request["delivery"]
    assert delivery["retry"] >= 1 and delivery["backoffPolicy"] == "exponential"
    assert delivery["backoffDelay"].startswith("PT") and delivery["timeout"].startswith("PT")
    sinks = {s["metadata"]["name"]: s["spec"]["topic"] for s in of_kind(docs, "KafkaSink")}
    assert sinks[delivery["deadLetterSink"]["ref"]["name"]] == config.kafka.dlq.name
    assert sinks[triggers[RESULT_TYPE]["subscriber"]["ref"]["name"]] == config.kafka.results.name
    assert sinks[triggers[ERROR_TYPE]["subscriber"]["ref"]["name"]] == config.kafka.dlq.name
    for trigger in triggers.values():  # a broker hiccup is retried on every route, errors included
        assert trigger["delivery"]["retry"] >= 1 and trigger["delivery"]["backoffPolicy"] == "exponential"
        assert trigger["delivery"]["backoffDelay"].startswith("PT")
    assert "deadLetterSink" not in triggers[ERROR_TYPE]["delivery"]  # it would be the sink that just failed
    assert set(sinks.values()) <= set(_topics(docs))


def test_kafka_credentials_are_only_ever_referenced() -> None:
    raw = example("rag").model_dump()
    raw["kafka"]["auth"] = {"mechanism": "scram-sha-512", "tls": True, "secret": "kafka-credentials"}
    config = DeployConfig.model_validate(raw)
    for overlay in ("kafka-worker", "kafka-knative"):
        docs = overlay_documents(config, overlay)
        assert not of_kind(docs, "Secret")
        assert "kafka-credentials" in str(docs)
    worker_docs = overlay_documents(config, "kafka-worker")
    env = {e["name"]: e for e in find(worker_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "kafka-credentials", "key": "password"}
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    scaled = find(worker_docs, "ScaledObject")["spec"]["triggers"][0]
    assert scaled["metadata"]["sasl"] == "scram_sha512" and scaled["metadata"]["tls"] == "enable"
    assert _resolves({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
                      **scaled["authenticationRef"]}, worker_docs)
    knative = overlay_documents(config, "kafka-knative")
    sasl = find(knative, "KafkaSource")["spec"]["net"]["sasl"]
    assert sasl["password"]["secretKeyRef"]["name"] == "kafka-credentials"
    assert all(s["spec"]["auth"]["secret"]["ref"]["name"] == "kafka-credentials" for s in of_kind(knative, "KafkaSink"))
    assert find(knative, "ConfigMap", f"{config.name}-kafka-broker-config")["data"]["auth.secret.ref.name"] == (
        "kafka-credentials")
