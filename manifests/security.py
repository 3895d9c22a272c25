"""Secure defaults: service accounts without API access, locked-down containers, NetworkPolicies.

kzero's pods never call the Kubernetes API, so least privilege for them is a dedicated account
with no RoleBinding and no mounted token. (Knative Eventing's resolver, which turns a Trigger's
reference to the InferenceService into a URL, gets its read access from KServe's chart:
``kserve.controller.knativeAddressableResolver.enabled``, see docs/deploy.md.)
"""

from __future__ import annotations

from manifests.config import DeployConfig
from manifests.settings import Doc, metadata, selector
from serving.auth import API_KEYS_ENV, PREDICTOR_API_KEY_ENV

RUN_AS = 10001  # the image's non-root user (see Dockerfile)


def serving_account(config: DeployConfig) -> str:
    return f"{config.name}-serving"


def worker_account(config: DeployConfig) -> str:
    return f"{config.name}-worker"


def service_account(config: DeployConfig, name: str, component: str) -> Doc:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(config, name, component),
            "automountServiceAccountToken": False}


def pod_security() -> Doc:
    # fsGroup makes a mounted cache PVC writable by the non-root user.
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def container_security() -> Doc:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


# -- API keys --------------------------------------------------------------------------------------

SERVER_KEYS_KEY, CLIENT_KEY_KEY = "api-keys", "client-key"  # the keys of the Secret ``auth.api_keys_secret``


def api_key_env(config: DeployConfig, *, server: bool, client: bool) -> list[Doc]:
    """Env referring to the API-key Secret (never a value); none when ``auth.api_keys_secret`` is unset.

    Not optional: a pod whose Secret is missing does not start, rather than serving without keys.
    """
    secret = config.auth.api_keys_secret
    if secret is None:
        return []
    # The keys a server accepts; the one key a client sends to a predictor or transformer.
    wanted = [(API_KEYS_ENV, SERVER_KEYS_KEY, server), (PREDICTOR_API_KEY_ENV, CLIENT_KEY_KEY, client)]
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
            for name, key, used in wanted if used]


# -- NetworkPolicies -------------------------------------------------------------------------------

def _namespace(name: str) -> Doc:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _ports(*ports: int, protocol: str = "TCP") -> list[Doc]:
    return [{"protocol": protocol, "port": p} for p in ports]


def _dns(config: DeployConfig) -> Doc:
    return {"to": [_namespace(config.network.dns_namespace)],
            "ports": _ports(53, protocol="UDP") + _ports(53)}


def _telemetry(config: DeployConfig) -> list[Doc]:
    if not config.telemetry.endpoint:
        return []
    return [{"to": [_namespace(config.telemetry.namespace)], "ports": _ports(4317, 4318)}]


def _knative_route(config: DeployConfig) -> Doc:
    """Calls to an InferenceService go through Knative: its ingress, the activator, or the pods themselves."""
    own = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": config.name}}}
    return {"to": [_namespace(config.network.ingress_namespace), _namespace(config.network.serving_namespace), own]}


def _knative_callers(config: DeployConfig) -> list[Doc]:
    """Who may call a serving pod: Knative's ingress and activator (and autoscaler scraping the
    queue-proxy), Knative Eventing's dispatchers, this deployment's own pods, and Prometheus."""
    peers = [_namespace(config.network.ingress_namespace), _namespace(config.network.serving_namespace),
             _namespace(config.network.eventing_namespace),
             {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": config.name}}}]
    if config.network.monitoring_namespace:
        peers.append(_namespace(config.network.monitoring_namespace))
    return [{"from": peers}]


def _policy(config: DeployConfig, component: str, ingress: list[Doc], egress: list[Doc]) -> Doc:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(config, f"{config.name}-{component}", component),
        "spec": {"podSelector": {"matchLabels": selector(config, component)}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": ingress, "egress": egress},
    }


def serving_policies(config: DeployConfig) -> list[Doc]:
    # The predictor reads its model from a volume: it needs only DNS and the collector.
    policies = [_policy(config, "predictor", _knative_callers(config), [_dns(config), *_telemetry(config)])]
    if config.transformer is not None:
        milvus = {"to": [_namespace(config.milvus.namespace)], "ports": _ports(config.milvus.port)}
        egress = [_dns(config), milvus, _knative_route(config), *_telemetry(config)]
        policies.append(_policy(config, "transformer", _knative_callers(config), egress))
    return policies


def worker_policy(config: DeployConfig) -> Doc:
    # No ingress at all: the worker serves nothing; it pulls from Kafka and calls the service.
    kafka = {"to": [_namespace(config.kafka.namespace)], "ports": _ports(*config.kafka.ports)}
    return _policy(config, "worker", [], [_dns(config), kafka, _knative_route(config), *_telemetry(config)])
