"""Every rendered document, applied to a real API server holding the operators' upstream CRDs.

Server-side apply with strict field validation: a field the CRD (or Kubernetes) does not declare is
refused, so what passes here is what the cluster accepts. Each config gets namespaces of its own.
"""

from __future__ import annotations

import pytest
from kubernetes import client

from manifests.cluster import Cluster, Invalid, Ref
from manifests.config import DeployConfig
from manifests.render import OVERLAYS, overlay_documents
from tests.manifests.test_schemas import CONFIGS


def _isolated(name: str, config: DeployConfig) -> DeployConfig:
    raw = config.model_dump()
    slug = name.replace("+", "-")
    raw["namespace"] = f"accept-{slug}"
    raw["kafka"]["namespace"] = f"accept-{slug}-kafka"
    return DeployConfig.model_validate(raw)


def _apply_all(cluster: Cluster, docs: list[dict]) -> list[str]:
    for namespace in dict.fromkeys(d["metadata"]["namespace"] for d in docs):
        if cluster.get(Ref("v1", "Namespace", namespace)) is None:
            cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    applied = []
    for doc in docs:
        result = cluster.apply(doc)
        assert result["metadata"]["name"] == doc["metadata"]["name"]
        applied.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return applied


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_document_is_accepted(kube_api: client.ApiClient, name: str, overlay: str) -> None:
    config = _isolated(name, CONFIGS[name])
    docs = overlay_documents(config, overlay)
    applied = _apply_all(Cluster(kube_api), docs)
    assert len(applied) == len(docs)


def test_a_misspelled_field_is_refused(kube_api: client.ApiClient) -> None:
    # The check above is only worth something if the server refuses a field nobody declared.
    cluster = Cluster(kube_api)
    config = _isolated("typo", CONFIGS["rag"])
    docs = overlay_documents(config, "kafka-worker")
    _apply_all(cluster, [d for d in docs if d["kind"] == "ServiceAccount"])
    isvc = next(d for d in docs if d["kind"] == "InferenceService")
    typo = {**isvc, "spec": {**isvc["spec"], "predictor": {**isvc["spec"]["predictor"], "minReplica": 0}}}
    with pytest.raises(Invalid, match="minReplica"):
        cluster.apply(typo)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    with pytest.raises(Invalid, match="replica"):
        cluster.apply({**deployment, "spec": {**deployment["spec"], "replica": 1}})
    source = next(d for d in overlay_documents(config, "kafka-knative") if d["kind"] == "KafkaSource")
    with pytest.raises(Invalid, match="consumerGroups"):
        cluster.apply({**source, "spec": {**source["spec"], "consumerGroups": "x"}})
    assert cluster.get(Ref.of(isvc)) is None
