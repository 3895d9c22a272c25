"""Every rendered document against its schema: Kubernetes' own for core kinds, the documented fields
of Knative, KEDA and Strimzi for theirs (see crd_schemas.py), the kserve SDK for the InferenceService."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from manifests.config import DeployConfig
from tests.manifests import crd_schemas
from tests.manifests.helpers import EXAMPLES, all_documents, example, strict_deserialize

KUBERNETES_VERSION = "1.33.0"  # the k3s release docs/deploy.md installs
CORE_MODELS = {
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
}
KNATIVE_SERVICE = ("serving.knative.dev/v1", "Service")
CUSTOM = set(crd_schemas.SPECS) | {("serving.kserve.io/v1beta1", "InferenceService"), KNATIVE_SERVICE}


def with_kafka_auth(config: DeployConfig) -> DeployConfig:
    raw = config.model_dump()
    raw["kafka"]["auth"] = {"mechanism": "scram-sha-512", "tls": True, "secret": "kafka-credentials"}
    return DeployConfig.model_validate(raw)


def with_api_keys(config: DeployConfig) -> DeployConfig:
    return DeployConfig.model_validate({**config.model_dump(), "auth": {"api_keys_secret": "kzero-api-keys"}})


CONFIGS = {p.stem: example(p.stem) for p in EXAMPLES}
CONFIGS |= {f"{name}+sasl-tls": with_kafka_auth(c) for name, c in list(CONFIGS.items())}
CONFIGS |= {f"{name}+api-keys": with_api_keys(c) for name, c in list(CONFIGS.items()) if "+" not in name}

def _distinct() -> list[tuple[str, dict[str, Any]]]:
    """Each distinct document once (the overlays share most of theirs), named by where it first appears."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, config in CONFIGS.items():
        for overlay, doc in all_documents(config):
            seen.setdefault(json.dumps(doc, sort_keys=True),
                            (f"{name}/{overlay}/{doc['kind']}/{doc['metadata']['name']}", doc))
    return list(seen.values())


DOCS = _distinct()


def _ids(docs: list[tuple[str, Any]]) -> list[str]:
    return [i for i, _ in docs]


def test_every_kind_has_a_schema_check() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in DOCS}
    assert kinds <= set(CORE_MODELS) | CUSTOM, kinds - set(CORE_MODELS) - CUSTOM


@pytest.mark.parametrize("doc", [d for _, d in DOCS if (d["apiVersion"], d["kind"]) in CORE_MODELS],
                         ids=_ids([x for x in DOCS if (x[1]["apiVersion"], x[1]["kind"]) in CORE_MODELS]))
def test_core_kinds_match_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    strict_deserialize(doc, CORE_MODELS[(doc["apiVersion"], doc["kind"])])


@pytest.mark.parametrize("doc", [d for _, d in DOCS if (d["apiVersion"], d["kind"]) in crd_schemas.SPECS],
                         ids=_ids([x for x in DOCS if (x[1]["apiVersion"], x[1]["kind"]) in crd_schemas.SPECS]))
def test_custom_resources_use_documented_fields(doc: dict[str, Any]) -> None:
    crd_schemas.validate(doc)


@pytest.mark.parametrize("doc", [d for _, d in DOCS if (d["apiVersion"], d["kind"]) == KNATIVE_SERVICE],
                         ids=_ids([x for x in DOCS if (x[1]["apiVersion"], x[1]["kind"]) == KNATIVE_SERVICE]))
def test_knative_services_carry_a_kubernetes_pod_spec(doc: dict[str, Any]) -> None:
    # A revision template is a pod spec plus Knative's two revision fields (the webhook checks the rest).
    assert set(doc["spec"]) == {"template"}
    template = doc["spec"]["template"]
    strict_deserialize(template["metadata"], "V1ObjectMeta")
    revision_fields = ("containerConcurrency", "timeoutSeconds")
    strict_deserialize({k: v for k, v in template["spec"].items() if k not in revision_fields}, "V1PodSpec")


def test_a_misspelled_field_is_caught() -> None:
    # The checks above are only worth something if they fail on a typo.
    _, deployment = next(x for x in DOCS if x[1]["kind"] == "Deployment")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    _, source = next(x for x in DOCS if x[1]["kind"] == "KafkaSource")
    with pytest.raises(ValueError, match="consumerGroups"):
        crd_schemas.validate({**source, "spec": {**source["spec"], "consumerGroups": "x"}})
    _, isvc = next(x for x in DOCS if x[1]["kind"] == "InferenceService")
    bad = {**isvc, "spec": {"predictor": {**isvc["spec"]["predictor"], "minReplica": 0}}}
    with pytest.raises(AssertionError, match="minReplica"):
        strict_deserialize(bad, "V1beta1InferenceService")
