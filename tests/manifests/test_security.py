"""Secure defaults hold for every pod in every overlay, and the NetworkPolicies cover every pod."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from manifests.config import DeployConfig
from manifests.render import OVERLAYS, overlay_documents
from tests.manifests.helpers import EXAMPLES, example, of_kind, serving_components

Doc = dict[str, Any]


@pytest.fixture(params=[(p.stem, o) for p in EXAMPLES for o in OVERLAYS], ids=lambda p: f"{p[0]}-{p[1]}")
def docs(request: pytest.FixtureRequest) -> list[Doc]:
    name, overlay = request.param
    return overlay_documents(example(name), overlay)


def pods(docs: list[Doc]) -> Iterator[tuple[str, dict[str, str], Doc]]:
    """(where, pod labels, pod spec) for every pod the set creates."""
    for component, spec in serving_components(docs).items():
        yield f"serving {component}", spec["labels"], spec
    for deployment in of_kind(docs, "Deployment"):
        template = deployment["spec"]["template"]
        yield f"Deployment {deployment['metadata']['name']}", template["metadata"]["labels"], template["spec"]


def test_pods_run_locked_down(docs: list[Doc]) -> None:
    accounts = {a["metadata"]["name"]: a for a in of_kind(docs, "ServiceAccount")}
    for where, _, pod in pods(docs):
        account = accounts[pod["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False, where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert not any("hostPath" in v for v in volumes.values()), where
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert "emptyDir" in mounts["/tmp"], f"{where}: a read-only root needs a writable /tmp"


def test_no_secrets_and_no_api_permissions(docs: list[Doc]) -> None:
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Secret", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def _selects(policy: Doc, pod_labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"]
    return all(pod_labels.get(k) == v for k, v in wanted.items())


def test_every_pod_is_fenced_in_both_directions(docs: list[Doc]) -> None:
    policies = of_kind(docs, "NetworkPolicy")
    for where, pod_labels, _ in pods(docs):
        mine = [p for p in policies if _selects(p, pod_labels)]
        assert len(mine) == 1, f"{where}: {len(mine)} NetworkPolicies select it"
        assert set(mine[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, where
    for policy in policies:
        assert any(_selects(policy, pod_labels) for _, pod_labels, _ in pods(docs)), (
            f"NetworkPolicy {policy['metadata']['name']} selects no pod of this set")


def _namespaces(rules: list[Doc], key: str) -> set[str]:
    return {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in rules for peer in rule[key] if "namespaceSelector" in peer}


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_policies_admit_only_the_expected_callers(name: str) -> None:
    config: DeployConfig = example(name)
    docs = overlay_documents(config, "kafka-worker")
    by_component = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p["spec"]
                    for p in of_kind(docs, "NetworkPolicy")}
    net = config.network
    knative = {net.ingress_namespace, net.serving_namespace, net.eventing_namespace}
    assert _namespaces(by_component["predictor"]["ingress"], "from") == knative
    assert _namespaces(by_component["predictor"]["egress"], "to") == {net.dns_namespace, config.telemetry.namespace}
    assert by_component["worker"]["ingress"] == []  # the worker serves nothing
    assert config.kafka.namespace in _namespaces(by_component["worker"]["egress"], "to")
    if config.transformer is not None:
        assert config.milvus.namespace in _namespaces(by_component["transformer"]["egress"], "to")
