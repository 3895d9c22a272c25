"""The ``knative-service`` overlay: the predictor (and the transformer) as plain Knative Services.

For clusters that run Knative Serving without KServe. Each Service is what KServe's Knative-mode
reconciler makes of an InferenceService component: the same container, probes, security context,
volumes, scheduling and annotations; ``minReplicas``/``maxReplicas``/``scaleTarget``/``scaleMetric``
become autoscaling annotations, ``timeout`` and ``containerConcurrency`` the revision's fields. The
names are KServe's (``<name>-predictor``, ``<name>-transformer``), so the hosts the transformer
and the worker call do not change. Without KServe's storage initializer a ``pvc://`` model is
mounted at /mnt/models directly; an ``oci://`` modelcar needs KServe.
"""

from __future__ import annotations

import copy

from manifests.config import DeployConfig
from manifests.settings import MODEL_MOUNT, Doc, labels, metadata

AUTOSCALING = "autoscaling.knative.dev/"
# InferenceService component field -> Knative autoscaling annotation, and -> revision spec field.
TO_ANNOTATION = {"minReplicas": "min-scale", "maxReplicas": "max-scale", "scaleTarget": "target",
                 "scaleMetric": "metric"}
TO_REVISION = {"timeout": "timeoutSeconds", "containerConcurrency": "containerConcurrency"}
KSERVE_ONLY = {"annotations", "labels", "canaryTrafficPercent", *TO_ANNOTATION, *TO_REVISION}


def _model_volume(config: DeployConfig, pod: Doc) -> None:
    """Mount a ``pvc://claim/path`` model where KServe would (read-only), instead of its STORAGE_URI."""
    uri = config.predictor.storage_uri
    if uri is None:
        return
    if not uri.startswith("pvc://"):
        raise ValueError(f"predictor.storage_uri {uri!r}: the knative-service overlay mounts pvc:// models only; "
                         "an oci:// modelcar needs KServe (use the cpu or gpu overlay)")
    claim, _, path = uri.removeprefix("pvc://").partition("/")
    (container,) = pod["containers"]
    container["env"] = [e for e in container.get("env", []) if e["name"] != "STORAGE_URI"]
    mount: Doc = {"name": "model", "mountPath": MODEL_MOUNT, "readOnly": True}
    if path:
        mount["subPath"] = path
    container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
    pod["volumes"] = [*pod.get("volumes", []), {"name": "model",
                                                "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}]


def knative_service(config: DeployConfig, component: str, spec: Doc) -> Doc:
    """The Knative Service for one InferenceService component (``spec``: ``spec.predictor`` etc.)."""
    annotations = {**spec.get("annotations", {}), f"{AUTOSCALING}class": "kpa.autoscaling.knative.dev"}
    annotations |= {AUTOSCALING + key: str(spec[field]) for field, key in TO_ANNOTATION.items() if field in spec}
    pod = {k: copy.deepcopy(v) for k, v in spec.items() if k not in KSERVE_ONLY}
    pod |= {key: spec[field] for field, key in TO_REVISION.items() if field in spec}
    if component == "predictor":
        _model_volume(config, pod)
        if "storageUris" in pod:  # KServe's storage initializer fetches these; a plain Knative Service has none
            raise ValueError("predictor.adapters: the knative-service overlay mounts pvc:// adapters only; "
                             f"{', '.join(u['uri'] for u in pod['storageUris'])} need KServe (the cpu or gpu overlay)")
    template = {"metadata": {"labels": spec.get("labels", labels(config, component)), "annotations": annotations},
                "spec": pod}
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": metadata(config, f"{config.name}-{component}", component), "spec": {"template": template}}


def knative_services(config: DeployConfig, isvc: Doc) -> list[Doc]:
    """One Knative Service per component of ``isvc`` (the InferenceService with its profile applied)."""
    return [knative_service(config, component, spec) for component, spec in isvc["spec"].items()]
