"""Readiness from the status each controller writes (the conventions of KServe, Knative, Kubernetes)."""

from __future__ import annotations

from typing import Any

import pytest

from manifests.readiness import readiness

Doc = dict[str, Any]


def _obj(api_version: str, kind: str, status: Doc | None = None, generation: int = 1) -> Doc:
    obj: Doc = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "x", "generation": generation}}
    return obj | ({"status": status} if status is not None else {})


def _cond(kind: str, status: str, reason: str = "", message: str = "") -> Doc:
    return {"type": kind, "status": status, "reason": reason, "message": message}


ISVC, KSVC, TRIGGER = "serving.kserve.io/v1beta1", "serving.knative.dev/v1", "eventing.knative.dev/v1"


def test_missing_and_objects_without_a_controller() -> None:
    assert readiness(None).describe() == "not ready: Missing: not in the cluster"
    assert readiness(_obj("v1", "ConfigMap")).ready
    assert readiness(_obj("networking.k8s.io/v1", "NetworkPolicy")).ready
    assert not readiness(_obj("v1", "PersistentVolumeClaim", {"phase": "Pending"})).ready
    assert readiness(_obj("v1", "PersistentVolumeClaim", {"phase": "Bound"})).ready


def test_ready_true_with_its_url() -> None:
    state = readiness(_obj(ISVC, "InferenceService", {"conditions": [_cond("Ready", "True")], "url": "http://a"}))
    assert state.ready and state.url == "http://a"
    broker = _obj(TRIGGER, "Broker", {"conditions": [_cond("Ready", "True")], "address": {"url": "http://b"}})
    assert readiness(broker).url == "http://b"


def test_an_inferenceservice_is_not_failed_while_its_ingress_waits_for_the_predictor() -> None:
    # KServe marks IngressReady (hence Ready) False until the predictor is ready: that is progress.
    status = {"conditions": [_cond("IngressReady", "False", "Predictor ingress not created"),
                             _cond("PredictorReady", "Unknown", "RevisionMissing"),
                             _cond("Ready", "False", "Predictor ingress not created")]}
    state = readiness(_obj(ISVC, "InferenceService", status))
    assert not state.ready and not state.failed and state.reason == "Predictor ingress not created"


def test_a_failed_component_fails_the_inferenceservice() -> None:
    status = {"conditions": [_cond("PredictorReady", "False", "RevisionFailed", "exit 1"),
                             _cond("Ready", "False", "RevisionFailed")]}
    state = readiness(_obj(ISVC, "InferenceService", status))
    assert state.failed and (state.reason, state.message) == ("RevisionFailed", "exit 1")


@pytest.mark.parametrize(("api_version", "kind", "failed"), [(KSVC, "Service", True), (KSVC, "Revision", True),
                                                             (TRIGGER, "Trigger", False)])
def test_ready_false_is_a_failure_only_where_the_controller_means_it(api_version: str, kind: str,
                                                                      failed: bool) -> None:
    state = readiness(_obj(api_version, kind, {"conditions": [_cond("Ready", "False", "Why", "because")]}))
    assert not state.ready and state.failed is failed and state.reason == "Why"


def test_a_status_for_an_older_generation_is_not_trusted() -> None:
    status = {"observedGeneration": 1, "conditions": [_cond("Ready", "True")]}
    state = readiness(_obj(KSVC, "Service", status, generation=2))
    assert not state.ready and state.reason == "Reconciling"


def test_no_status_yet_and_deployments() -> None:
    assert readiness(_obj(ISVC, "InferenceService")).reason == "NoStatus"
    deployment = _obj("apps/v1", "Deployment", {"readyReplicas": 1, "conditions": [_cond("Available", "True")]})
    deployment["spec"] = {"replicas": 2}
    state = readiness(deployment)
    assert state.ready and state.replicas == "1/2"
