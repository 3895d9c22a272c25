"""Is an object ready? Read from what its controller wrote (pure functions over the API's dicts).

Knative, KServe, KEDA and Strimzi all report a ``Ready`` condition: ``True`` is ready. Whether
``False`` means failed depends on who writes it. Knative Serving keeps ``Unknown`` for work in
progress, so its ``False`` is a failure; an InferenceService's ``Ready`` is also ``False`` while its
predictor comes up (KServe marks ``IngressReady`` False until then), so only a component's
condition (``PredictorReady``, ``TransformerReady``) being ``False`` is its failure; a Trigger is
``False`` until its subscriber has a URL, so for the eventing kinds ``False`` is only "not ready
yet" (its reason is shown, and a wait ends at the timeout). A status written for an older
generation is not trusted. Objects that no controller reconciles (ConfigMap, ServiceAccount,
NetworkPolicy, ...) are ready once present; a PersistentVolumeClaim once Bound; a Deployment when
``Available``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]

KNATIVE_SERVING = {"Service", "Configuration", "Revision", "Route"}
COMPONENT_CONDITIONS = ("PredictorReady", "TransformerReady", "ExplainerReady")
PRESENT_IS_READY = {"ConfigMap", "ServiceAccount", "NetworkPolicy", "Secret", "Namespace", "TriggerAuthentication",
                    "Role", "RoleBinding"}


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str = ""
    message: str = ""
    failed: bool = False
    url: str = ""
    replicas: str = ""

    def describe(self) -> str:
        if self.ready:
            return "ready"
        detail = ": ".join(p for p in (self.reason, self.message) if p)
        return f"{'failed' if self.failed else 'not ready'}{': ' + detail if detail else ''}"


def _condition(conditions: list[Doc], kind: str) -> Doc | None:
    return next((c for c in conditions if c.get("type") == kind), None)


def _url(status: Doc) -> str:
    return str(status.get("url") or (status.get("address") or {}).get("url") or "")


def readiness(obj: Doc | None) -> Readiness:
    if obj is None:
        return Readiness(False, "Missing", "not in the cluster")
    kind, status = obj.get("kind", ""), obj.get("status") or {}
    if kind in PRESENT_IS_READY:
        return Readiness(True)
    if kind == "PersistentVolumeClaim":
        phase = status.get("phase", "Pending")
        return Readiness(phase == "Bound", "" if phase == "Bound" else phase, "waiting for a volume to bind")
    replicas = ""
    if kind == "Deployment":
        replicas = f"{status.get('readyReplicas', 0)}/{obj.get('spec', {}).get('replicas', 1)}"
    conditions = status.get("conditions") or []
    generation, observed = obj.get("metadata", {}).get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return Readiness(False, "Reconciling", f"status is for generation {observed}, the spec is at {generation}",
                         url=_url(status), replicas=replicas)
    ready = _condition(conditions, "Available" if kind == "Deployment" else "Ready")
    if ready is None:
        return Readiness(False, "NoStatus", "no controller has reported its status yet", replicas=replicas)
    if ready.get("status") == "True":
        return Readiness(True, url=_url(status), replicas=replicas)
    if failure := _failure(obj, conditions, ready):
        return Readiness(False, failure.get("reason", ""), failure.get("message", ""), failed=True,
                         url=_url(status), replicas=replicas)
    # While Ready is not True, the first other condition that is not True often says more.
    pending = next((c for c in conditions if c.get("status") != "True" and c is not ready and c.get("reason")), None)
    reason = ready.get("reason") or (pending or {}).get("reason", "")
    message = ready.get("message") or (pending or {}).get("message", "")
    return Readiness(False, reason, message, url=_url(status), replicas=replicas)


def _failure(obj: Doc, conditions: list[Doc], ready: Doc) -> Doc | None:
    """The condition that says the object failed, if its controller's conventions make one terminal."""
    kind, group = obj.get("kind", ""), obj.get("apiVersion", "").rpartition("/")[0]
    if kind == "InferenceService":
        return next((c for c in conditions if c.get("type") in COMPONENT_CONDITIONS and c.get("status") == "False"),
                    None)
    if group == "serving.knative.dev" and kind in KNATIVE_SERVING and ready.get("status") == "False":
        return ready
    return None
