"""Shared building blocks: labels, the settings ConfigMap, env references into it, volumes."""

from __future__ import annotations

from typing import Any

from manifests.config import DeployConfig

Doc = dict[str, Any]

CACHE_MOUNT = "/cache"
MODEL_MOUNT = "/mnt/models"  # where KServe mounts storageUri (PVC or modelcar)
ADAPTERS_MOUNT = "/mnt/adapters"  # one directory per LoRA adapter
HTTP_PORT = 8080
GRPC_PORT = 8081


def labels(config: DeployConfig, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kzero",
        "app.kubernetes.io/instance": config.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "kzero",
    }


def selector(config: DeployConfig, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": config.name, "app.kubernetes.io/component": component}


def metadata(config: DeployConfig, name: str, component: str, namespace: str | None = None) -> Doc:
    return {"name": name, "namespace": namespace or config.namespace, "labels": labels(config, component)}


def settings_name(config: DeployConfig) -> str:
    return f"{config.name}-settings"


def settings_configmap(config: DeployConfig) -> Doc:
    """Connection settings only; credentials never go here (see ``KafkaAuth.secret``)."""
    data = {
        "KAFKA_BOOTSTRAP_SERVERS": config.kafka.bootstrap_servers,
        "MILVUS_URI": config.milvus.uri,
        "OTEL_EXPORTER_OTLP_PROTOCOL": config.telemetry.protocol,
        "OTEL_TRACES_SAMPLER": config.telemetry.sampler,
        "OTEL_TRACES_SAMPLER_ARG": config.telemetry.sampler_arg,
        "KZERO_LOG_FORMAT": config.telemetry.log_format,
    }
    if config.telemetry.endpoint:
        data["OTEL_EXPORTER_OTLP_ENDPOINT"] = config.telemetry.endpoint
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": metadata(config, settings_name(config), "settings"), "data": data}


def setting_env(config: DeployConfig, key: str) -> Doc:
    return {"name": key, "valueFrom": {"configMapKeyRef": {"name": settings_name(config), "key": key}}}


def telemetry_env(config: DeployConfig, service_name: str) -> list[Doc]:
    keys = ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "KZERO_LOG_FORMAT"]
    if config.telemetry.endpoint:
        keys.insert(0, "OTEL_EXPORTER_OTLP_ENDPOINT")
    return [{"name": "OTEL_SERVICE_NAME", "value": service_name}, *(setting_env(config, k) for k in keys)]


def common_env(cache: bool) -> list[Doc]:
    env = [{"name": "HF_HUB_OFFLINE", "value": "1"}]
    if cache:
        env.append({"name": "KZERO_CACHE_DIR", "value": CACHE_MOUNT})
    return env


def tmp_volume() -> tuple[Doc, Doc]:
    """A writable /tmp: the root filesystem is read-only."""
    return {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, {"name": "tmp", "mountPath": "/tmp"}


def cache_volume(config: DeployConfig) -> tuple[Doc, Doc]:
    """The model cache (GGUF -> safetensors conversions): a PVC survives scale-to-zero, an emptyDir does not."""
    if config.cache.volume == "pvc":
        volume: Doc = {"name": "cache", "persistentVolumeClaim": {"claimName": config.cache_claim}}
    else:
        volume = {"name": "cache", "emptyDir": {"sizeLimit": config.cache.size}}
    return volume, {"name": "cache", "mountPath": CACHE_MOUNT}


def cache_claim(config: DeployConfig) -> Doc | None:
    if config.cache.volume != "pvc" or not config.cache.create:
        return None
    spec: Doc = {"accessModes": [config.cache.access_mode], "resources": {"requests": {"storage": config.cache.size}}}
    if config.cache.storage_class:
        spec["storageClassName"] = config.cache.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": metadata(config, config.cache_claim, "predictor"), "spec": spec}
