"""Knative Serving's admission rules for a revision template, in Python: the fast guard until the suite
runs the real webhook.

Transcribed from knative.dev/serving v0.50.0: ``pkg/apis/serving/k8s_validation.go`` (pod spec,
containers, probes, volumes, env), ``fieldmask.go`` (the fields allowed, some behind a feature flag),
``v1/revision_validation.go`` with ``v1/revision_defaults.go`` (the defaults applied before
validation) and ``autoscaling/annotation_validation.go`` (the template's annotations), under the
default ``config-defaults`` and ``config-autoscaler`` and a given ``config-features``. Rules the
renderer cannot reach (gRPC probes, projected and image volumes, ``secure-pod-defaults``) are left out.

KServe turns each InferenceService component into a Knative Service (its ksvc reconciler): the
component's pod-spec fields become the revision's pod spec, ``minReplicas``/``maxReplicas``/
``scaleTarget``/``scaleMetric`` become autoscaling annotations next to the component's own,
``timeout`` and ``containerConcurrency`` the revision's fields. ``from_component`` does the same.
"""

from __future__ import annotations

import copy
import posixpath
import re
from typing import Any

Doc = dict[str, Any]

# config-features: every key Knative reads (pkg/apis/config/features.go) and its default.
FEATURE_DEFAULTS = {
    "multi-container": "enabled", "multi-container-probing": "disabled", "secure-pod-defaults": "disabled",
    "tag-header-based-routing": "disabled", "autodetect-http2": "disabled", "queueproxy.mount-podinfo": "disabled",
    "queueproxy.resource-defaults": "disabled", "kubernetes.containerspec-addcapabilities": "disabled",
    "kubernetes.podspec-volumes-emptydir": "enabled",
    **dict.fromkeys([f"kubernetes.podspec-{name}" for name in (
        "affinity", "topologyspreadconstraints", "hostaliases", "fieldref", "nodeselector", "runtimeclassname",
        "securitycontext", "shareprocessnamespace", "hostipc", "hostpid", "hostnetwork", "priorityclassname",
        "schedulername", "tolerations", "volumes-hostpath", "volumes-mount-propagation", "volumes-csi",
        "volumes-ephemeral", "volumes-image", "init-containers", "persistent-volume-claim",
        "persistent-volume-write", "dnspolicy", "dnsconfig")], "disabled"),
}
FLAG_VALUES = {"enabled", "disabled", "allowed"}  # Knative compares them case-insensitively
MAX_REVISION_TIMEOUT_S = 600  # config-defaults max-revision-timeout-seconds
MAX_CONTAINER_CONCURRENCY = 1000  # config-defaults container-concurrency-max-limit
ALLOW_ZERO_INITIAL_SCALE = False  # config-autoscaler allow-zero-initial-scale
WINDOW_S = (6, 3600)  # autoscaling WindowMin, WindowMax (also the bound of scale-down-delay)

# PodSpecMask: fields always allowed, and those behind a flag (allowed unless it is "disabled").
POD_ALLOWED = {"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
               "automountServiceAccountToken"}
POD_FLAGGED = {field: f"kubernetes.podspec-{field.lower()}" for field in (
    "affinity", "topologySpreadConstraints", "hostAliases", "nodeSelector", "runtimeClassName", "tolerations",
    "securityContext", "shareProcessNamespace", "priorityClassName", "schedulerName", "initContainers",
    "dnsPolicy", "dnsConfig", "hostIPC", "hostPID", "hostNetwork")}
POD_FLAGGED["initContainers"] = "kubernetes.podspec-init-containers"
POD_SECURITY_ALLOWED = {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups", "seccompProfile"}
CONTAINER_ALLOWED = {"name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
                     "livenessProbe", "ports", "readinessProbe", "resources", "securityContext", "startupProbe",
                     "terminationMessagePath", "terminationMessagePolicy", "volumeMounts"}
SECURITY_ALLOWED = {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
                    "allowPrivilegeEscalation", "seccompProfile"}  # and privileged, only as false
PROBE_ALLOWED = {"exec", "httpGet", "tcpSocket", "grpc", "initialDelaySeconds", "timeoutSeconds", "periodSeconds",
                 "successThreshold", "failureThreshold", "terminationGracePeriodSeconds"}
HANDLER_ALLOWED = {"httpGet": {"host", "path", "scheme", "httpHeaders", "port"}, "tcpSocket": {"host", "port"},
                   "exec": {"command"}, "grpc": {"port", "service"}}
ENV_SOURCES = {"configMapKeyRef", "secretKeyRef"}  # fieldRef, resourceFieldRef with kubernetes.podspec-fieldref
VOLUME_SOURCES = {"secret": None, "configMap": None, "projected": None,
                  "emptyDir": "kubernetes.podspec-volumes-emptydir",
                  "persistentVolumeClaim": "kubernetes.podspec-persistent-volume-claim",
                  "hostPath": "kubernetes.podspec-volumes-hostpath", "csi": "kubernetes.podspec-volumes-csi",
                  "ephemeral": "kubernetes.podspec-volumes-ephemeral", "image": "kubernetes.podspec-volumes-image"}
WRITABLE_SOURCES = {"emptyDir", "persistentVolumeClaim", "ephemeral"}  # a mount of any other must be readOnly
RESERVED_PATHS = {"/", "/dev", "/dev/log"}
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}  # PORT only in the serving container
RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}  # queue-proxy's, the metrics', profiling
PORT_NAMES = {"", "h2c", "http1"}

# What KServe's ksvc reconciler moves out of a component into annotations and revision fields.
KSERVE_EXTENSION = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType", "autoScaling",
                    "containerConcurrency", "timeout", "annotations", "labels", "canaryTrafficPercent", "logger",
                    "batcher", "deploymentStrategy", "storageUris"}
KSERVE_DEFAULT_MIN_REPLICAS = 1
AUTOSCALING = "autoscaling.knative.dev/"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def features(overrides: dict[str, str]) -> dict[str, str]:
    """config-features patched with ``overrides``. A key or value Knative does not know is an error
    here, because Knative ignores it silently and the flag stays at its default."""
    unknown = sorted(set(overrides) - set(FEATURE_DEFAULTS))
    if unknown:
        raise ValueError(f"not Knative Serving feature flags: {unknown}")
    bad = {k: v for k, v in overrides.items() if v.lower() not in FLAG_VALUES}
    if bad:
        raise ValueError(f"not flag values (enabled, disabled, allowed): {bad}")
    return {**FEATURE_DEFAULTS, **{k: v.lower() for k, v in overrides.items()}}


def go_duration_s(value: str) -> float | None:
    """Go's time.ParseDuration in seconds, or None where Go refuses the string."""
    sign, body = (-1, value[1:]) if value.startswith("-") else (1, value.removeprefix("+"))
    if body == "0":
        return 0.0
    parts = _GO_DURATION_PART.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        return None
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)


def from_component(component: Doc) -> Doc:
    """The Knative Service KServe creates for one InferenceService component."""
    ext = {k: v for k, v in component.items() if k in KSERVE_EXTENSION}
    annotations = {**ext.get("annotations", {}),
                   f"{AUTOSCALING}min-scale": str(ext.get("minReplicas", KSERVE_DEFAULT_MIN_REPLICAS))}
    annotations.setdefault(f"{AUTOSCALING}class", "kpa.autoscaling.knative.dev")
    for field, key in (("maxReplicas", "max-scale"), ("scaleTarget", "target"), ("scaleMetric", "metric")):
        if ext.get(field):
            annotations[AUTOSCALING + key] = str(ext[field])
    spec = {k: copy.deepcopy(v) for k, v in component.items() if k not in KSERVE_EXTENSION}
    for field, key in (("timeout", "timeoutSeconds"), ("containerConcurrency", "containerConcurrency")):
        if field in ext:
            spec[key] = ext[field]
    return {"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "spec": {"template": {"metadata": {"labels": ext.get("labels", {}), "annotations": annotations},
                                  "spec": spec}}}


def knative_services(doc: Doc) -> list[tuple[str, Doc]]:
    """(where, Knative Service) for a rendered Knative Service, or for each InferenceService component."""
    if doc["kind"] == "Service" and doc["apiVersion"].startswith("serving.knative.dev/"):
        return [(f"Service {doc['metadata']['name']}", doc)]
    if doc["kind"] == "InferenceService":
        return [(f"InferenceService {doc['metadata']['name']} {name}", from_component(component))
                for name, component in doc["spec"].items()]
    return []


def check(ksvc: Doc, flags: dict[str, str]) -> list[str]:
    """Every rule the Service's revision template breaks, each as ``path: message``."""
    checker = _Checker(flags)
    template = ksvc["spec"]["template"]
    checker.annotations("spec.template.metadata.annotations", template.get("metadata", {}).get("annotations", {}))
    checker.revision("spec.template.spec", template["spec"])
    return checker.errors


def with_knative_defaults(pod: Doc) -> Doc:
    """What Knative's defaulting webhook does before validation (revision_defaults.go): probe defaults,
    and every mount of a volume that is not writable (emptyDir, PVC, ephemeral) made read-only."""
    pod = copy.deepcopy(pod)
    containers = pod.get("containers", [])
    writable = {v.get("name") for v in pod.get("volumes", []) if WRITABLE_SOURCES & set(v)}
    for container in containers:
        for mount in container.get("volumeMounts", []):
            if mount.get("name") not in writable:
                mount["readOnly"] = True
        if len(containers) == 1 or container.get("ports"):
            probe = container.setdefault("readinessProbe", {})
            if not set(HANDLER_ALLOWED) & set(probe):
                probe["tcpSocket"] = {}
        if (probe := container.get("readinessProbe")) is not None:
            probe["successThreshold"] = probe.get("successThreshold") or 1
            if probe.get("periodSeconds"):
                probe["failureThreshold"] = probe.get("failureThreshold") or 3
                probe["timeoutSeconds"] = probe.get("timeoutSeconds") or 1
    return pod


class _Checker:
    def __init__(self, flags: dict[str, str]) -> None:
        if flags["secure-pod-defaults"] != "disabled":
            raise ValueError("secure-pod-defaults is not modelled here")
        self.flags = flags
        self.errors: list[str] = []

    def on(self, flag: str) -> bool:
        return self.flags[flag] == "enabled"

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"{path}: {message}")

    def only(self, path: str, obj: Doc, allowed: set[str]) -> None:
        for key in sorted(set(obj) - allowed):
            self.error(f"{path}.{key}", "must not set the field(s)")

    def duration(self, path: str, value: str, low: float, high: float) -> None:
        seconds = go_duration_s(value)
        if seconds is None or not low <= seconds <= high or seconds != int(seconds):
            self.error(path, f"{value!r} is not a whole-second duration within {low:g}s..{high:g}s")

    def annotations(self, path: str, annotations: dict[str, str]) -> None:
        def get(key: str) -> tuple[str, str | None]:
            return f"{path}[{AUTOSCALING}{key}]", annotations.get(AUTOSCALING + key)

        scale: dict[str, int] = {}
        for key in ("min-scale", "max-scale", "initial-scale"):
            where, value = get(key)
            if value is not None and not value.isdigit():
                self.error(where, f"invalid value {value!r}")
            elif value is not None:
                scale[key] = int(value)
        if scale.get("max-scale", 0) and scale["max-scale"] < scale.get("min-scale", 0):
            self.error(get("max-scale")[0], "max-scale is less than min-scale")
        if scale.get("initial-scale") == 0 and not ALLOW_ZERO_INITIAL_SCALE:
            self.error(get("initial-scale")[0], "initial-scale=0 not allowed by cluster")
        if (window := get("window"))[1] is not None:
            self.duration(window[0], window[1], *WINDOW_S)
        if (delay := get("scale-down-delay"))[1] is not None:
            self.duration(delay[0], delay[1], 0, WINDOW_S[1])
        if (deadline := annotations.get("serving.knative.dev/progress-deadline")) is not None:
            self.duration(f"{path}[serving.knative.dev/progress-deadline]", deadline, 0, float("inf"))
        where, metric = get("metric")
        kpa = annotations.get(AUTOSCALING + "class", "kpa.autoscaling.knative.dev") == "kpa.autoscaling.knative.dev"
        if kpa and metric is not None and metric not in ("concurrency", "rps"):
            self.error(where, f"invalid value {metric!r} for the KPA")
        where, target = get("target")
        if target is not None and not (re.fullmatch(r"\d+(\.\d+)?", target) and float(target) >= 0.01):
            self.error(where, f"target {target!r} should be a number of at least 0.01")

    def revision(self, path: str, spec: Doc) -> None:
        bounds = {"timeoutSeconds": MAX_REVISION_TIMEOUT_S, "containerConcurrency": MAX_CONTAINER_CONCURRENCY}
        for key, high in bounds.items():
            if key in spec and not 0 <= spec[key] <= high:
                self.error(f"{path}.{key}", f"expected 0 <= {spec[key]} <= {high}")
        pod = {k: v for k, v in spec.items() if k not in bounds}
        self.pod(path, with_knative_defaults(pod))

    def pod(self, path: str, pod: Doc) -> None:
        self.only(path, pod, POD_ALLOWED | {f for f, flag in POD_FLAGGED.items() if self.flags[flag] != "disabled"})
        if pod.get("automountServiceAccountToken") is True:
            self.error(f"{path}.automountServiceAccountToken", "may only be set to false")
        if "securityContext" in pod and self.flags["kubernetes.podspec-securitycontext"] != "disabled":
            self.only(f"{path}.securityContext", pod["securityContext"], POD_SECURITY_ALLOWED)
        if pod.get("initContainers") and not self.on("kubernetes.podspec-init-containers"):
            self.error(path, f"pod spec support for init-containers is off, but found {len(pod['initContainers'])}")
        containers = pod.get("containers", [])
        mounted = {m.get("name") for c in containers + pod.get("initContainers", []) for m in c.get("volumeMounts", [])}
        volumes = self.volumes(f"{path}.volumes", pod.get("volumes", []), mounted)
        ports = [p for c in containers for p in c.get("ports", [])]
        if len(ports) > 1:
            self.error(f"{path}.containers[*].ports", "more than one container port is set")
        elif not ports and len(containers) > 1:
            self.error(f"{path}.containers[*].ports", "missing field(s)")
        if not containers:
            self.error(f"{path}.containers", "missing field(s)")
        elif len(containers) > 1 and not self.on("multi-container"):
            self.error(path, f"multi-container is off, but found {len(containers)} containers")
        names = [c.get("name") for c in containers]
        for i, container in enumerate(containers):
            if names.count(container.get("name")) > 1:
                self.error(f"{path}.containers[{i}].name", f"duplicate container name {container.get('name')!r}")
            serving = len(containers) == 1 or bool(container.get("ports"))
            self.container(f"{path}.containers[{i}]", container, volumes, (ports or [{}])[0] if serving else None)
        account = pod.get("serviceAccountName")
        if account and not _DNS1123_SUBDOMAIN.match(account):
            self.error(f"{path}.serviceAccountName", f"invalid value {account!r}")

    def volumes(self, path: str, volumes: list[Doc], mounted: set[str]) -> dict[str, Doc]:
        by_name: dict[str, Doc] = {}
        for i, volume in enumerate(volumes):
            where, name = f"{path}[{i}]", volume.get("name", "")
            if name in by_name:
                self.error(f"{where}.name", f"duplicate volume name {name!r}")
            if name not in mounted:
                self.error(f"{where}.name", f"volume with name {name!r} not mounted")
            if not _DNS1123_LABEL.match(name):
                self.error(f"{where}.name", f"invalid value {name!r}")
            sources = [k for k in volume if k != "name"]
            self.only(where, volume, {"name", *VOLUME_SOURCES})
            known = [k for k in sources if k in VOLUME_SOURCES]
            if len(known) != 1:
                self.error(where, f"expected exactly one volume source, got {known}")
            for key in known:
                if (flag := VOLUME_SOURCES[key]) is not None and not self.on(flag):
                    self.error(where, f"{key} volume support is disabled ({flag}), but found volume {name}")
            claim = volume.get("persistentVolumeClaim")
            if claim and not claim.get("readOnly") and not self.on("kubernetes.podspec-persistent-volume-write"):
                self.error(where, f"Persistent volume write support is disabled, but found persistent volume claim "
                                  f"{claim.get('claimName')} that is not read-only")
            if (medium := (volume.get("emptyDir") or {}).get("medium", "")) not in ("", "Memory"):
                self.error(f"{where}.emptyDir.medium", f"invalid value {medium!r}")
            by_name[name] = volume
        return by_name

    def container(self, path: str, container: Doc, volumes: dict[str, Doc], port: Doc | None) -> None:
        self.only(path, container, CONTAINER_ALLOWED)
        if container.get("name") == "queue-proxy":
            self.error(f"{path}.name", "'queue-proxy' is a reserved container name")
        if not container.get("image"):
            self.error(f"{path}.image", "missing field(s)")
        reserved = RESERVED_ENV if port is not None else RESERVED_ENV - {"PORT"}
        sources = ENV_SOURCES | ({"fieldRef", "resourceFieldRef"} if self.flags["kubernetes.podspec-fieldref"]
                                 != "disabled" else set())
        for i, var in enumerate(container.get("env", [])):
            self.only(f"{path}.env[{i}]", var, {"name", "value", "valueFrom"})
            if var.get("name") in reserved or not var.get("name"):
                self.error(f"{path}.env[{i}].name", f"{var.get('name')!r} is missing or a reserved variable")
            self.only(f"{path}.env[{i}].valueFrom", var.get("valueFrom", {}), sources)
        for i, p in enumerate(container.get("ports", [])):
            self.port(f"{path}.ports[{i}]", p)
        self.only(f"{path}.resources", container.get("resources", {}), {"limits", "requests"})
        if (sc := container.get("securityContext")) is not None:
            self.only(f"{path}.securityContext", sc, SECURITY_ALLOWED | ({"privileged"} if sc.get("privileged") is False
                                                                         else set()))
            add = {"add"} if self.on("kubernetes.containerspec-addcapabilities") else set()
            self.only(f"{path}.securityContext.capabilities", sc.get("capabilities") or {}, {"drop", *add})
        if container.get("terminationMessagePolicy", "File") not in ("File", "FallbackToLogsOnError"):
            self.error(f"{path}.terminationMessagePolicy", "invalid value")
        self.mounts(f"{path}.volumeMounts", container.get("volumeMounts", []), volumes)
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            if (probe := container.get(kind)) is None:
                continue
            if port is None and not self.on("multi-container-probing"):
                self.only(f"{path}.{kind}", probe, set())  # a sidecar may not have probes without the flag
            else:
                self.probe(f"{path}.{kind}", probe, port, readiness=kind == "readinessProbe")

    def port(self, path: str, port: Doc) -> None:
        self.only(path, port, {"containerPort", "name", "protocol"})
        number = port.get("containerPort", 0)
        if number in RESERVED_PORTS or not 0 <= number <= 65535:
            self.error(f"{path}.containerPort", f"{number} is a reserved or invalid port")
        if port.get("protocol", "TCP") != "TCP":
            self.error(f"{path}.protocol", f"invalid value {port['protocol']!r}")
        if port.get("name", "") not in PORT_NAMES:
            self.error(path, f"Port name {port['name']} is not allowed (empty, 'h2c' or 'http1')")

    def mounts(self, path: str, mounts: list[Doc], volumes: dict[str, Doc]) -> None:
        seen: set[str] = set()
        propagation = {"mountPropagation"} if self.on("kubernetes.podspec-volumes-mount-propagation") else set()
        for i, mount in enumerate(mounts):
            where, target = f"{path}[{i}]", mount.get("mountPath", "")
            self.only(where, mount, {"name", "readOnly", "mountPath", "subPath", *propagation})
            volume = volumes.get(mount.get("name", ""))
            if volume is None:
                self.error(f"{where}.name", "volumeMount has no matching volume")
            clean = posixpath.normpath(target) if target else ""
            if not target.startswith("/") or clean in RESERVED_PATHS or clean in seen:
                self.error(f"{where}.mountPath", f"{target!r} is missing, relative, reserved or not unique")
            seen.add(clean)
            if volume is not None and not WRITABLE_SOURCES & set(volume) and not mount.get("readOnly"):
                self.error(f"{where}.readOnly", "volume mount should be readOnly for this type of volume")
            if (volume or {}).get("persistentVolumeClaim", {}).get("readOnly") and not mount.get("readOnly"):
                self.error(f"{where}.readOnly", "volume is readOnly but volume mount is not")

    def probe(self, path: str, probe: Doc, port: Doc | None, *, readiness: bool) -> None:
        self.only(path, probe, PROBE_ALLOWED)
        handlers = [h for h in HANDLER_ALLOWED if h in probe]
        if len(handlers) != 1:
            self.error(path, f"expected exactly one of httpGet, tcpSocket, exec, grpc, got {handlers}")
        for handler in handlers:
            self.only(f"{path}.{handler}", probe[handler], HANDLER_ALLOWED[handler])
            target = probe[handler].get("port")
            if port is not None and isinstance(target, str) and target != port.get("name", "http"):
                self.error(f"{path}.{handler}.port", "Probe port must match container port")
            if port is None and handler in ("httpGet", "tcpSocket") and not target:
                self.error(f"{path}.{handler}.port", "Probe port must be specified")
        if not readiness:
            return
        for key in ("periodSeconds", "initialDelaySeconds"):
            if probe.get(key, 0) < 0:
                self.error(f"{path}.{key}", f"expected 0 <= {probe[key]}")
        if probe.get("successThreshold", 0) < 1:
            self.error(f"{path}.successThreshold", "expected 1 <= successThreshold")
        periodic = probe.get("periodSeconds", 0) != 0
        for key in ("failureThreshold", "timeoutSeconds"):
            if not periodic and probe.get(key, 0) != 0:
                self.error(f"{path}.{key}", f"{key} is disallowed when periodSeconds is zero")
            elif periodic and probe.get(key, 0) < 1:
                self.error(f"{path}.{key}", f"expected 1 <= {key}")
