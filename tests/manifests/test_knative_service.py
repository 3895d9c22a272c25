"""The knative-service overlay renders the InferenceService's components as Knative Services, unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from manifests.config import DeployConfig
from manifests.render import overlay_documents
from tests.manifests.helpers import EXAMPLES, example, find, flag, of_kind

Doc = dict[str, Any]


@pytest.fixture(params=[p.stem for p in EXAMPLES])
def config(request: pytest.FixtureRequest) -> DeployConfig:
    return example(request.param)


def _ksvcs(docs: list[Doc]) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, "Service") if d["apiVersion"] == "serving.knative.dev/v1"}


def test_same_pods_as_the_inferenceservice(config: DeployConfig) -> None:
    isvc = find(overlay_documents(config, config.kafka_overlays_on), "InferenceService")
    docs = overlay_documents(config, "knative-service")
    assert not of_kind(docs, "InferenceService")
    ksvcs = _ksvcs(docs)
    assert set(ksvcs) == {f"{config.name}-{component}" for component in isvc["spec"]}
    for component, spec in isvc["spec"].items():
        template = ksvcs[f"{config.name}-{component}"]["spec"]["template"]
        pod = template["spec"]
        for field in ("containers", "volumes", "securityContext", "serviceAccountName", "automountServiceAccountToken"):
            assert pod[field] == spec[field], f"{component}.{field}"
        assert template["metadata"]["labels"] == spec["labels"]
        annotations = template["metadata"]["annotations"]
        assert {k: v for k, v in annotations.items() if k in spec["annotations"]} == spec["annotations"]
        assert annotations["autoscaling.knative.dev/min-scale"] == str(spec["minReplicas"])
        assert annotations["autoscaling.knative.dev/max-scale"] == str(spec["maxReplicas"])
        assert annotations["autoscaling.knative.dev/target"] == str(spec["scaleTarget"])
        assert annotations["autoscaling.knative.dev/metric"] == spec["scaleMetric"]
        assert pod["timeoutSeconds"] == spec["timeout"]
        assert pod.get("containerConcurrency") == spec.get("containerConcurrency")


def test_the_transformer_calls_the_predictor_service_by_its_knative_name() -> None:
    config = example("rag")
    ksvcs = _ksvcs(overlay_documents(config, "knative-service"))
    host = flag(ksvcs["kzero-rag-transformer"]["spec"]["template"]["spec"]["containers"][0]["args"], "--predictor_host")
    assert host == f"kzero-rag-predictor.{config.namespace}.svc.cluster.local:80"
    assert "kzero-rag-predictor" in ksvcs


def _with_storage(uri: str) -> DeployConfig:
    raw = example("embed").model_dump()
    raw["predictor"] |= {"storage_uri": uri, "model_id": None}
    return DeployConfig.model_validate(raw)


def test_a_pvc_model_is_mounted_where_kserve_would_put_it() -> None:
    docs = overlay_documents(_with_storage("pvc://models/minilm/v2"), "knative-service")
    pod = _ksvcs(docs)["kzero-embed-predictor"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert "STORAGE_URI" not in {e["name"] for e in container["env"]}
    assert {"name": "model", "mountPath": "/mnt/models", "readOnly": True, "subPath": "minilm/v2"} in (
        container["volumeMounts"])
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    assert flag(container["args"], "--model_dir") == "/mnt/models"


def test_an_oci_model_needs_kserve() -> None:
    with pytest.raises(ValueError, match=r"oci://.*the knative-service overlay mounts pvc:// models only"):
        overlay_documents(_with_storage("oci://registry.example/models/minilm:1"), "knative-service")


def test_pvc_adapters_are_mounted_and_others_need_kserve() -> None:
    raw = example("rag").model_dump()
    raw["predictor"]["adapters"] = [{"name": "tuned", "storage_uri": "pvc://adapters/tuned"}]
    docs = overlay_documents(DeployConfig.model_validate(raw), "knative-service")
    pod = _ksvcs(docs)["kzero-rag-predictor"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert flag(container["args"], "--lora") == "tuned=/mnt/adapters/tuned"
    assert {"name": "adapter-0", "mountPath": "/mnt/adapters/tuned", "readOnly": True, "subPath": "tuned"} in (
        container["volumeMounts"])
    raw["predictor"]["adapters"].append({"name": "fetched", "storage_uri": "hf://org/adapter"})
    with pytest.raises(ValueError, match=r"mounts pvc:// adapters only; hf://org/adapter need KServe"):
        overlay_documents(DeployConfig.model_validate(raw), "knative-service")
