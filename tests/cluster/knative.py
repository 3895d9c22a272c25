"""Knative Serving's own controller, webhook and autoscaler on the test control plane, with
kube-controller-manager (Deployments, ReplicaSets, Endpoints, garbage collection) and kwok (one
fake node whose pods turn Running and Ready without a kubelet).

- The webhook is a real admission webhook, registered by URL (``https://127.0.0.1:8443``) with a
  self-signed certificate. Its configurations are named as Knative names them, but hold a webhook
  entry of another name, so Knative's reconcilers (which expect a Service reference) leave them be.
- ConfigMaps come from the Knative modules (config/core/configmaps, networking's config-network)
  with the feature flags docs/deploy.md sets, ``registries-skipping-tag-resolving`` covering the
  registries of the rendered images (nothing resolves a tag over the network) and
  ``target-burst-capacity: 0`` (no activator runs, so it must never be put in the request path).
- The autoscaler hard-codes its stats server on :8080, as the controller does its probes: it runs in
  a second loopback-only namespace, reaching the API server through a relay. It scrapes pod IPs
  (10.244.0.x from kwok) that do not exist in either namespace, so no packet leaves the machine.
- No scheduler: ``Binder`` binds each pending pod to the fake node. No ingress: ``IngressStatus``
  writes the status an ingress would on each Knative Ingress.
"""

from __future__ import annotations

import base64
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from tests.cluster import crds, netns
from tests.cluster.local import API_PORT, ControlPlane, self_signed

Doc = dict[str, Any]
SYSTEM = "knative-serving"
NODE = "kwok-node-0"
WEBHOOK_PORT = 8443
POD_CIDR = "10.244.0.1/24"
AUTOSCALER_IP = "10.244.1.1"
READY_TIMEOUT_S = 120


def _load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


class Watcher:
    """A thread that handles every ADDED or MODIFIED object of one watch, re-watching until closed."""

    name = "watcher"

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name=self.name)

    def _stream(self) -> Any:
        raise NotImplementedError

    def _handle(self, obj: Any) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for event in self._stream():
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._handle(event["object"])
            except (ApiException, OSError):
                time.sleep(0.5)  # the API server is going away, or a watch broke: try again

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


class Binder(Watcher):
    """The scheduler's last step for every pod without a node: a Binding to the fake node."""

    name = "binder"

    def __init__(self, api: client.ApiClient) -> None:
        self.core = client.CoreV1Api(api)
        super().__init__()

    def _stream(self) -> Any:
        return watch.Watch().stream(self.core.list_pod_for_all_namespaces, field_selector="spec.nodeName=",
                                    timeout_seconds=5)

    def _handle(self, pod: Any) -> None:
        if not pod.spec.node_name:
            self._bind(pod.metadata.namespace, pod.metadata.name)

    def _bind(self, namespace: str, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE}}
        try:  # the client cannot parse a Binding response: leave it unread
            self.core.create_namespaced_binding(namespace, body, _preload_content=False)
        except ApiException as err:
            if err.status not in (404, 409):  # gone, or bound already
                raise


class IngressStatus(Watcher):
    """What an ingress (Kourier) reports on each Knative Ingress: configured, with its load balancers.
    Written again whenever the Ingress changes, so the Route always sees its current generation."""

    INGRESS = ("networking.internal.knative.dev", "v1alpha1", "ingresses")
    GATEWAY = "kourier-internal.kourier-system.svc.cluster.local"
    name = "ingress-status"

    def __init__(self, api: client.ApiClient) -> None:
        self.custom = client.CustomObjectsApi(api)
        super().__init__()

    def _stream(self) -> Any:
        group, version, plural = self.INGRESS
        return watch.Watch().stream(self.custom.list_cluster_custom_object, group, version, plural,
                                    timeout_seconds=5)

    def _handle(self, ingress: Doc) -> None:
        meta, status = ingress["metadata"], ingress.get("status") or {}
        if status.get("observedGeneration") == meta["generation"]:
            return
        balancer = {"ingress": [{"domainInternal": self.GATEWAY}]}
        conditions = [{"type": t, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
                      for t in ("LoadBalancerReady", "NetworkConfigured", "Ready")]
        body = {"status": {"observedGeneration": meta["generation"], "conditions": conditions,
                           "publicLoadBalancer": balancer, "privateLoadBalancer": balancer}}
        group, version, plural = self.INGRESS
        try:
            self.custom.patch_namespaced_custom_object_status(group, version, meta["namespace"], plural,
                                                              meta["name"], body)
        except ApiException as err:
            if err.status not in (404, 409):
                raise


class KnativeServing:
    def __init__(self, plane: ControlPlane, binaries: dict[str, str], api: client.ApiClient, *,
                 features: dict[str, str], registries: set[str]) -> None:
        self.plane, self.binaries, self.api = plane, binaries, api
        self.features, self.registries = features, registries
        self.module = Path(binaries["knative-serving-module"])
        self.binder = Binder(api)
        self.ingress = IngressStatus(api)
        self.autoscaler_namespace: netns.Namespace | None = None

    # -- set-up ---------------------------------------------------------------------------------

    def start(self) -> KnativeServing:
        try:
            self._install_crds()
            self._configure()
            self._start_kube_parts()
            self._start_knative()
            self._register_webhooks()
        except BaseException:
            self.close()
            raise
        return self

    def _install_crds(self) -> None:
        # The serving kinds come from the shared upstream CRDs; the internal ones from the modules.
        networking = Path(self.binaries["knative-networking-module"]) / "config"
        caching = Path(self.binaries["knative-caching-module"]) / "config"
        paths = [networking / f for f in ("certificate.yaml", "ingress.yaml", "serverlessservice.yaml",
                                          "domain-claim.yaml")] + [caching / "image.yaml"]
        crds.install(self.api, crds.load(paths))

    def _configmaps(self) -> list[Doc]:
        paths = sorted((self.module / "config" / "core" / "configmaps").glob("*.yaml"))
        paths.append(Path(self.binaries["knative-networking-module"]) / "config" / "config-network.yaml")
        maps = {d["metadata"]["name"]: d for p in paths for d in _load(p) if d.get("kind") == "ConfigMap"}
        data = {
            "config-features": self.features,
            "config-deployment": {"queue-sidecar-image": "kind.local/knative/queue:v0.50.0",
                                  "registries-skipping-tag-resolving": ",".join(sorted(self.registries))},
            "config-autoscaler": {"target-burst-capacity": "0"},
            "config-network": {"ingress-class": "kourier.ingress.networking.knative.dev"},
        }
        for name, values in data.items():
            maps[name]["data"] = {**(maps[name].get("data") or {}), **values}
        return list(maps.values())

    def _configure(self) -> None:
        core = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": SYSTEM}})
        for cm in self._configmaps():
            core.create_namespaced_config_map(SYSTEM, cm)
        pki = self.plane.workdir / "pki"
        self.webhook_cert, key = self_signed(pki, "knative-webhook")
        pem = {"server-cert.pem": self.webhook_cert.read_text(), "server-key.pem": key.read_text(),
               "ca-cert.pem": self.webhook_cert.read_text()}
        core.create_namespaced_secret(SYSTEM, {"metadata": {"name": "webhook-certs"}, "string_data": pem})
        # The ServerlessService reconciler reads the activator's endpoints even when the activator is not
        # in the path: its Service, selecting no pod, gets empty Endpoints from kube-controller-manager.
        core.create_namespaced_service(SYSTEM, {"metadata": {"name": "activator-service"}, "spec": {
            "selector": {"app": "activator"}, "ports": [{"name": "http", "port": 80, "targetPort": 8012}]}})

    def _start_kube_parts(self) -> None:
        inside = str(self.plane.kubeconfig(inside=True))
        pki = self.plane.workdir / "pki"
        self.plane.spawn("kube-controller-manager", [
            self.binaries["kube-controller-manager"], "--kubeconfig", inside,
            "--secure-port", "0", "--leader-elect=false",  # no health endpoint: nothing here asks for it
            "--use-service-account-credentials=false", "--controllers", "*",
            "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(self.plane.ca),
            "--cluster-signing-duration", "24h", "--v", "1"])
        stages = Path(self.binaries["kwok-module"]) / "kustomize" / "stage"
        stage_files = [stages / "node" / "fast" / "node-initialize.yaml",
                       stages / "node" / "heartbeat-with-lease" / "node-heartbeat-with-lease.yaml",
                       *sorted((stages / "pod" / "fast").glob("pod-*.yaml"))]
        self.plane.spawn("kwok", [
            self.binaries["kwok"], "--kubeconfig", inside, *(f"--config={f}" for f in stage_files),
            "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
            "--cidr", POD_CIDR, "--node-ip", "10.244.0.254"])
        capacity = {"cpu": "32", "memory": "256Gi", "pods": "110"}
        client.CoreV1Api(self.api).create_node({
            "metadata": {"name": NODE, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"kubernetes.io/hostname": NODE, "type": "kwok"}},
            "status": {"capacity": capacity, "allocatable": capacity}})
        self.binder.start()
        self.ingress.start()

    def _knative_env(self, name: str) -> dict[str, str]:
        return {"SYSTEM_NAMESPACE": SYSTEM, "POD_NAME": f"{name}-0", "CONFIG_LOGGING_NAME": "config-logging",
                "CONFIG_OBSERVABILITY_NAME": "config-observability", "KUBECONFIG": ""}

    def _start_knative(self) -> None:
        inside = str(self.plane.kubeconfig(inside=True))
        self.plane.spawn("knative-controller", [self.binaries["knative-controller"], "--kubeconfig", inside],
                         env=self._knative_env("controller"))
        self.plane.spawn("knative-webhook", [self.binaries["knative-webhook"], "--kubeconfig", inside],
                         env={**self._knative_env("webhook"), "WEBHOOK_NAME": "webhook",
                              "WEBHOOK_PORT": str(WEBHOOK_PORT), "PROFILING_PORT": "8009"})
        # Its own namespace (its :8080 would clash with the controller's); the API server through a relay.
        self.autoscaler_namespace = ns = netns.Namespace()
        log = self.plane.workdir / "logs" / "autoscaler-relay.log"
        relay, _ = netns.relay(connect_port=API_PORT, connect_netns=self.plane.namespace.path,
                               listen_port=API_PORT, listen_netns=ns.path, log=log)
        self.plane.adopt("autoscaler-relay", relay, log)
        # POD_IP names the autoscaler in its bucket's EndpointSlice, which refuses loopback addresses: an
        # address of the fake pod network that no interface has (only other autoscaler replicas would dial it).
        self.plane.spawn("knative-autoscaler", [self.binaries["knative-autoscaler"], "--kubeconfig", inside],
                         env={**self._knative_env("autoscaler"), "POD_IP": AUTOSCALER_IP}, namespace=ns)

    def _webhook(self, name: str, path: str, source: Doc) -> Doc:
        (entry,) = source["webhooks"]
        url = f"https://127.0.0.1:{WEBHOOK_PORT}{path}"
        ca = base64.b64encode(self.webhook_cert.read_bytes()).decode()
        hook = {**entry, "name": f"loopback.{name}", "clientConfig": {"url": url, "caBundle": ca}}
        return {**source, "webhooks": [hook]}

    def _register_webhooks(self) -> None:
        hooks = self.module / "config" / "core" / "webhooks"
        defaulting = _load(hooks / "defaulting.yaml")[0]
        validation = _load(hooks / "resource-validation.yaml")[0]
        config = _load(hooks / "configmap-validation.yaml")[0]
        (entry,) = config["webhooks"]
        # Knative fills this rule in at run time (webhook/configmaps): its ConfigMaps, on create and update.
        entry["rules"] = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"],
                           "resources": ["configmaps/*"], "scope": "Namespaced"}]
        self._wait_for_webhook()
        admission = client.AdmissionregistrationV1Api(self.api)
        admission.create_mutating_webhook_configuration(
            self._webhook(defaulting["metadata"]["name"], "/defaulting", defaulting))
        admission.create_validating_webhook_configuration(
            self._webhook(validation["metadata"]["name"], "/resource-validation", validation))
        admission.create_validating_webhook_configuration(
            self._webhook(config["metadata"]["name"], "/config-validation", config))

    def _wait_for_webhook(self) -> None:
        """The webhook serves TLS on its port (checked from inside the namespace, through a relay)."""
        log = self.plane.workdir / "logs" / "webhook-probe-relay.log"
        relay, port = netns.relay(connect_port=WEBHOOK_PORT, connect_netns=self.plane.namespace.path, log=log)
        context = ssl.create_default_context(cafile=str(self.webhook_cert))
        deadline = time.monotonic() + READY_TIMEOUT_S
        try:
            while True:
                for p in self.plane.processes:
                    p.check()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as raw, \
                            context.wrap_socket(raw, server_hostname="127.0.0.1"):
                        return
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"Knative's webhook not serving after {READY_TIMEOUT_S}s") from None
                    time.sleep(0.5)
        finally:
            relay.kill()
            relay.wait()

    def check(self) -> None:
        """Every process still runs (a Knative component that exits says why in its log)."""
        for process in self.plane.processes:
            process.check()

    def close(self) -> None:
        self.binder.close()
        self.ingress.close()
        if self.autoscaler_namespace is not None:
            self.autoscaler_namespace.close()
