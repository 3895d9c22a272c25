"""The eventing worker: a Deployment that KEDA scales from zero on the consumer group's lag.

No probes: the worker serves no port, and its liveness is already watched by Kafka. A worker that
stops polling for ``max.poll.interval.ms`` is evicted from the group and its partitions move to the
others; one that crashes exits non-zero and the kubelet restarts it. An exec probe would need a
heartbeat file the worker does not write, and would cost a process per check.
"""

from __future__ import annotations

from manifests.config import DeployConfig
from manifests.kafka import KEDA_SASL, SASL_MECHANISMS, TLS_MOUNT, secret_key, security_protocol
from manifests.security import api_key_env, container_security, pod_security, worker_account
from manifests.settings import Doc, common_env, labels, metadata, selector, setting_env, telemetry_env, tmp_volume

COMPONENT = "worker"


def worker_name(config: DeployConfig) -> str:
    return f"{config.name}-worker"


def worker_args(config: DeployConfig) -> list[str]:
    """``python -m eventing`` arguments; the bootstrap servers come from $KAFKA_BOOTSTRAP_SERVERS."""
    w, k = config.worker, config.kafka
    return ["worker", "--input-topic", k.requests.name, "--output-topic", k.results.name,
            "--dlq-topic", k.dlq.name, "--group", w.group,
            "--predictor-url", f"http://{config.component_host(config.entry_component)}",
            "--model", config.entry_model, "--protocol", w.protocol,
            "--max-batch", str(config.worker_max_batch), "--max-wait-ms", str(w.max_wait_ms),
            "--max-in-flight", str(w.max_in_flight), "--max-attempts", str(w.max_attempts)]


def _auth_env(config: DeployConfig) -> tuple[list[Doc], list[Doc], list[Doc]]:
    """Env, volumes and mounts carrying the Kafka credentials from the Secret (nothing inline)."""
    auth = config.kafka.auth
    if not auth.enabled:
        return [], [], []
    env: list[Doc] = [{"name": "KAFKA_SECURITY_PROTOCOL", "value": security_protocol(config)}]
    if auth.mechanism != "none":
        env += [{"name": "KAFKA_SASL_MECHANISM", "value": SASL_MECHANISMS[auth.mechanism]},
                {"name": "KAFKA_SASL_USERNAME", "valueFrom": secret_key(config, "user")},
                {"name": "KAFKA_SASL_PASSWORD", "valueFrom": secret_key(config, "password")}]
    if not auth.tls:
        return env, [], []
    env.append({"name": "KAFKA_SSL_CAFILE", "value": f"{TLS_MOUNT}/ca.crt"})
    items = [{"key": "ca.crt", "path": "ca.crt"}]
    volume = {"name": "kafka-tls", "secret": {"secretName": auth.secret, "items": items}}
    return env, [volume], [{"name": "kafka-tls", "mountPath": TLS_MOUNT, "readOnly": True}]


def worker_deployment(config: DeployConfig) -> Doc:
    w = config.worker
    tmp, tmp_mount = tmp_volume()
    auth_env, auth_volumes, auth_mounts = _auth_env(config)
    env = [setting_env(config, "KAFKA_BOOTSTRAP_SERVERS"), *common_env(cache=False), *auth_env,
           *telemetry_env(config, "kzero-worker"), *api_key_env(config, server=False, client=True)]
    container = {
        "name": COMPONENT, "image": config.image, "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-m", "eventing"], "args": worker_args(config), "env": env,
        "resources": w.resources.to_k8s(), "securityContext": container_security(),
        "volumeMounts": [tmp_mount, *auth_mounts],
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": metadata(config, worker_name(config), COMPONENT),
        # No replicas: the ScaledObject owns the count (a re-apply must not reset it).
        "spec": {
            "selector": {"matchLabels": selector(config, COMPONENT)},
            "template": {
                "metadata": {"labels": labels(config, COMPONENT)},
                "spec": {
                    "serviceAccountName": worker_account(config), "automountServiceAccountToken": False,
                    "securityContext": pod_security(),
                    # SIGTERM: the worker finishes in-flight batches within its grace, commits, exits 0.
                    "terminationGracePeriodSeconds": w.shutdown_grace_s + 15,
                    "containers": [container], "volumes": [tmp, *auth_volumes],
                },
            },
        },
    }


def _trigger_auth_name(config: DeployConfig) -> str:
    return f"{config.name}-kafka"


def trigger_authentication(config: DeployConfig) -> Doc | None:
    """KEDA's access to the same Secret (https://keda.sh/docs/latest/concepts/authentication/)."""
    auth = config.kafka.auth
    if not auth.enabled:
        return None
    refs = []
    if auth.mechanism != "none":
        refs += [{"parameter": "username", "name": auth.secret, "key": "user"},
                 {"parameter": "password", "name": auth.secret, "key": "password"}]
    if auth.tls:
        refs.append({"parameter": "ca", "name": auth.secret, "key": "ca.crt"})
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": metadata(config, _trigger_auth_name(config), COMPONENT),
            "spec": {"secretTargetRef": refs}}


def scaled_object(config: DeployConfig) -> Doc:
    """Scale on lag (https://keda.sh/docs/latest/scalers/apache-kafka/); zero when the group is caught up."""
    w, k = config.worker, config.kafka
    trigger_meta = {
        "bootstrapServers": k.bootstrap_servers, "consumerGroup": w.group, "topic": k.requests.name,
        "lagThreshold": str(w.lag_threshold), "activationLagThreshold": str(w.activation_lag_threshold),
        "offsetResetPolicy": "earliest",  # as the worker's consumer: a new group starts at the beginning
    }
    trigger: Doc = {"type": "kafka", "metadata": trigger_meta}
    if k.auth.enabled:
        trigger_meta["sasl"] = KEDA_SASL[k.auth.mechanism]
        trigger_meta["tls"] = "enable" if k.auth.tls else "disable"
        trigger["authenticationRef"] = {"name": _trigger_auth_name(config)}
    return {
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": metadata(config, worker_name(config), COMPONENT),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker_name(config)},
            "pollingInterval": w.polling_interval_s, "cooldownPeriod": w.cooldown_period_s,
            "minReplicaCount": 0, "maxReplicaCount": config.worker_max_replicas,
            "triggers": [trigger],
        },
    }
