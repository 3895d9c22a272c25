"""Every pod the InferenceService turns into passes Knative Serving's admission rules (knative_rules.py)
under the feature flags docs/deploy.md tells users to set; each rule catches its violation."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from manifests.config import DeployConfig
from manifests.render import OVERLAYS, overlay_documents
from tests.manifests import knative_rules
from tests.manifests.helpers import EXAMPLES, REPO_ROOT, example

Doc = dict[str, Any]


def documented_flags() -> dict[str, str]:
    """The config-features patch of docs/deploy.md, as a user applies it."""
    text = (REPO_ROOT / "docs" / "deploy.md").read_text()
    found = re.search(r"kubectl patch configmap/config-features -n knative-serving --type merge -p '(\{.*?\})'",
                      text, re.DOTALL)
    assert found, "docs/deploy.md no longer patches config-features in knative-serving"
    return json.loads(found.group(1))["data"]


FLAGS = knative_rules.features(documented_flags())


def _variants() -> dict[str, DeployConfig]:
    configs = {p.stem: example(p.stem) for p in EXAMPLES}
    for name, config in list(configs.items()):
        raw = config.model_dump()
        raw["auth"] = {"api_keys_secret": "kzero-api-keys"}
        raw["kafka"]["auth"] = {"mechanism": "scram-sha-512", "tls": True, "secret": "kafka-credentials"}
        configs[f"{name}+auth"] = DeployConfig.model_validate(raw)
        raw = config.model_dump()
        raw["cache"] = {"volume": "pvc", "size": "10Gi"}
        raw["predictor"] |= {"storage_uri": "pvc://models/m", "model_id": None}
        configs[f"{name}+pvc"] = DeployConfig.model_validate(raw)
    return configs


SERVICES = [(f"{name}/{overlay}/{where}", ksvc)
            for name, config in _variants().items() for overlay in OVERLAYS
            for doc in overlay_documents(config, overlay) for where, ksvc in knative_rules.knative_services(doc)]


def test_the_documented_flags_are_knative_flags() -> None:
    assert documented_flags(), "no flags parsed"
    with pytest.raises(ValueError, match="not Knative Serving feature flags"):
        knative_rules.features({"kubernetes.podspec-security-context": "enabled"})  # a plausible typo
    with pytest.raises(ValueError, match="not flag values"):
        knative_rules.features({"kubernetes.podspec-tolerations": "true"})
    assert set(knative_rules.POD_FLAGGED.values()) <= set(knative_rules.FEATURE_DEFAULTS)
    assert {f for f in knative_rules.VOLUME_SOURCES.values() if f} <= set(knative_rules.FEATURE_DEFAULTS)


def test_every_overlay_has_a_service_to_check() -> None:
    where = {w.split("/")[1] for w, _ in SERVICES}
    assert where == set(OVERLAYS)
    assert any("transformer" in w for w, _ in SERVICES) and any("predictor" in w for w, _ in SERVICES)


@pytest.mark.parametrize("ksvc", [s for _, s in SERVICES], ids=[w for w, _ in SERVICES])
def test_knative_admits_every_rendered_pod(ksvc: Doc) -> None:
    assert knative_rules.check(ksvc, FLAGS) == []


def test_the_flags_are_needed() -> None:
    # Without the documented flags the rag set is refused: the pod securityContext, the PVC, the gpu scheduling.
    defaults = knative_rules.features({})
    refused = {e.split(":")[0].rsplit(".", 1)[-1] for w, s in SERVICES if "+pvc/gpu/" in w
               for e in knative_rules.check(s, defaults)}
    assert {"securityContext", "nodeSelector", "tolerations"} <= refused, refused


# -- each rule reports its violation ----------------------------------------------------------------

def _rag_predictor() -> Doc:
    return next(s for w, s in SERVICES if w == "rag/gpu/InferenceService kzero-rag predictor")


def _pod(ksvc: Doc) -> Doc:
    return ksvc["spec"]["template"]["spec"]


def _container(ksvc: Doc) -> Doc:
    return _pod(ksvc)["containers"][0]


def _annotations(ksvc: Doc) -> Doc:
    return ksvc["spec"]["template"]["metadata"]["annotations"]


def _sidecar(ksvc: Doc) -> None:
    _pod(ksvc)["containers"].append({"name": "side", "image": "img:1", "ports": [{"containerPort": 9000}]})


VIOLATIONS: list[tuple[str, Callable[[Doc], object], str]] = [
    ("readiness timeout without period", lambda s: _container(s)["readinessProbe"].update(timeoutSeconds=2),
     "timeoutSeconds is disallowed when periodSeconds is zero"),
    ("readiness failures without period", lambda s: _container(s)["readinessProbe"].update(failureThreshold=3),
     "failureThreshold is disallowed when periodSeconds is zero"),
    ("readiness period with a negative timeout",
     lambda s: _container(s)["readinessProbe"].update(periodSeconds=5, timeoutSeconds=-1),
     "expected 1 <= timeoutSeconds"),
    ("two probe handlers", lambda s: _container(s)["livenessProbe"].update(tcpSocket={"port": 8080}),
     "expected exactly one of"),
    ("probe on a named port that is not the container's",
     lambda s: _container(s)["startupProbe"]["httpGet"].update(port="admin"), "Probe port must match"),
    ("unknown probe field", lambda s: _container(s)["livenessProbe"].update(probeTimeout=1), "probeTimeout"),
    ("pod field Knative never allows", lambda s: _pod(s).update(terminationGracePeriodSeconds=30),
     "terminationGracePeriodSeconds: must not"),
    ("automounted token", lambda s: _pod(s).update(automountServiceAccountToken=True), "may only be set to false"),
    ("pod securityContext field",
     lambda s: _pod(s)["securityContext"].update(sysctls=[{"name": "net.core.somaxconn", "value": "1024"}]), "sysctls"),
    ("init containers", lambda s: _pod(s).update(initContainers=[{"name": "init", "image": "img:1"}]),
     "init-containers is off"),
    ("bad service account", lambda s: _pod(s).update(serviceAccountName="Not_A_Name"), "serviceAccountName"),
    ("container lifecycle", lambda s: _container(s).update(lifecycle={"preStop": {}}), "lifecycle: must not"),
    ("reserved container name", lambda s: _container(s).update(name="queue-proxy"), "reserved container name"),
    ("no image", lambda s: _container(s).update(image=""), "image: missing"),
    ("reserved env var", lambda s: _container(s)["env"].append({"name": "K_REVISION", "value": "x"}),
     "reserved variable"),
    ("env fieldRef without its flag",
     lambda s: _container(s)["env"].append({"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}),
     "fieldRef: must not"),
    ("second port", lambda s: _container(s)["ports"].append({"containerPort": 9000}), "more than one container port"),
    ("port name", lambda s: _container(s)["ports"][0].update(name="grpc"), "Port name grpc is not allowed"),
    ("port protocol", lambda s: _container(s)["ports"][0].update(protocol="UDP"), "protocol: invalid"),
    ("reserved port", lambda s: _container(s)["ports"][0].update(containerPort=8012), "reserved or invalid port"),
    ("host port", lambda s: _container(s)["ports"][0].update(hostPort=80), "hostPort: must not"),
    ("resource claims", lambda s: _container(s)["resources"].update(claims=[]), "claims: must not"),
    ("privileged", lambda s: _container(s)["securityContext"].update(privileged=True), "privileged: must not"),
    ("added capability", lambda s: _container(s)["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
     "capabilities.add: must not"),
    ("mount without volume", lambda s: _container(s)["volumeMounts"].append({"name": "nope", "mountPath": "/x"}),
     "volumeMount has no matching volume"),
    ("reserved mount path", lambda s: _container(s)["volumeMounts"][0].update(mountPath="/dev/"), "reserved"),
    ("duplicate mount path", lambda s: _container(s)["volumeMounts"][1].update(
        mountPath=_container(s)["volumeMounts"][0]["mountPath"]), "not unique"),
    # (A writable mount of a secret is no violation: Knative's defaults make it read-only first.)
    ("read-only claim mounted writable",
     lambda s: (_pod(s)["volumes"].append({"name": "ro", "persistentVolumeClaim": {"claimName": "c",
                                                                                    "readOnly": True}}),
                _container(s)["volumeMounts"].append({"name": "ro", "mountPath": "/ro"})),
     "volume is readOnly but volume mount is not"),
    ("unmounted volume", lambda s: _pod(s)["volumes"].append({"name": "spare", "emptyDir": {}}), "not mounted"),
    ("hostPath volume", lambda s: (_pod(s)["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
                                   _container(s)["volumeMounts"].append({"name": "host", "mountPath": "/h",
                                                                         "readOnly": True})),
     "hostPath volume support is disabled"),
    ("two volume sources", lambda s: _pod(s)["volumes"][0].update(configMap={"name": "c"}),
     "exactly one volume source"),
    ("emptyDir medium", lambda s: next(v for v in _pod(s)["volumes"] if "emptyDir" in v)["emptyDir"].update(
        medium="HugePages"), "medium: invalid"),
    ("sidecar probe without multi-container-probing",
     lambda s: (_sidecar(s), _pod(s)["containers"][1]["ports"].clear(),
                _pod(s)["containers"][1].update(livenessProbe={"tcpSocket": {"port": 9000}})), "livenessProbe"),
    ("two containers with ports", _sidecar, "more than one container port"),
    ("timeout above the cluster maximum", lambda s: _pod(s).update(timeoutSeconds=601), "timeoutSeconds"),
    ("concurrency above the cluster maximum", lambda s: _pod(s).update(containerConcurrency=1001),
     "containerConcurrency"),
    ("window below 6s", lambda s: _annotations(s).update({"autoscaling.knative.dev/window": "5s"}), "window"),
    ("window not a duration", lambda s: _annotations(s).update({"autoscaling.knative.dev/window": "1 min"}), "window"),
    ("scale-down-delay above 1h", lambda s: _annotations(s).update({"autoscaling.knative.dev/scale-down-delay": "2h"}),
     "scale-down-delay"),
    ("initial scale 0", lambda s: _annotations(s).update({"autoscaling.knative.dev/initial-scale": "0"}),
     "initial-scale=0 not allowed"),
    ("max below min", lambda s: _annotations(s).update({"autoscaling.knative.dev/min-scale": "5"}),
     "max-scale is less than min-scale"),
    ("metric the KPA lacks", lambda s: _annotations(s).update({"autoscaling.knative.dev/metric": "cpu"}), "metric"),
    ("progress deadline below a second", lambda s: _annotations(s).update(
        {"serving.knative.dev/progress-deadline": "1500ms"}), "progress-deadline"),
]


@pytest.mark.parametrize(("mutate", "expected"), [(m, e) for _, m, e in VIOLATIONS], ids=[n for n, _, _ in VIOLATIONS])
def test_each_rule_reports_its_violation(mutate: Callable[[Doc], object], expected: str) -> None:
    ksvc = copy.deepcopy(_rag_predictor())
    assert knative_rules.check(ksvc, FLAGS) == []
    mutate(ksvc)
    errors = knative_rules.check(ksvc, FLAGS)
    assert any(expected in e for e in errors), errors


def test_the_kserve_translation_moves_scaling_into_annotations() -> None:
    ksvc = _rag_predictor()
    annotations, spec = _annotations(ksvc), _pod(ksvc)
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert annotations["autoscaling.knative.dev/metric"] == "concurrency"
    assert {"timeoutSeconds", "containerConcurrency", "containers"} <= set(spec)
    assert not {"minReplicas", "scaleTarget", "annotations", "labels"} & set(spec)


@pytest.mark.parametrize(("value", "seconds"), [("90s", 90), ("1h30m", 5400), ("1.5s", 1.5), ("0", 0), ("5", None),
                                                ("", None), ("10 m", None), ("-2m", -120)])
def test_go_durations(value: str, seconds: float | None) -> None:
    assert knative_rules.go_duration_s(value) == seconds
