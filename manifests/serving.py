"""The InferenceService: a custom predictor (``python -m predictors``) and, for RAG, a custom
transformer (``python -m transformers_pre``), both Knative revisions that scale to zero.

The base is accelerator-neutral; ``profile_patch`` is the JSON patch the cpu and gpu overlays apply
(device flags, resources, GPU scheduling, the Knative timings that differ between the two).
"""

from __future__ import annotations

from manifests.config import Adapter, DeployConfig, Profile
from manifests.security import api_key_env, container_security, pod_security, serving_account
from manifests.settings import (
    ADAPTERS_MOUNT,
    CACHE_MOUNT,
    GRPC_PORT,
    HTTP_PORT,
    MODEL_MOUNT,
    Doc,
    cache_volume,
    common_env,
    labels,
    metadata,
    setting_env,
    telemetry_env,
    tmp_volume,
)

PREDICTOR = "predictor"
TRANSFORMER = "transformer"
CONTAINER = "kserve-container"  # KServe renames the first container of a custom component to this
LIVE, READY = "/v2/health/live", "/v2/health/ready"
PROFILE_ANNOTATION = "kzero.dev/profile"


def _num(value: float) -> str:
    return f"{value:g}"


def predictor_args(config: DeployConfig) -> list[str]:
    """Flags of ``python -m predictors`` (the device flags come from the overlay's profile)."""
    p = config.predictor
    args = ["--model_name", p.model_name, "--task", p.task]
    if p.model_id is not None:
        args += ["--model_id", p.model_id]
    else:
        args += ["--model_dir", MODEL_MOUNT] + (["--gguf_file", p.gguf_file] if p.gguf_file else [])
    # Knative routes one port per container (http1 here), so the gRPC server would be unreachable.
    args += ["--http_port", str(HTTP_PORT), "--grpc_port", str(GRPC_PORT), "--enable_grpc", "false",
             "--max_batch_size", str(p.max_batch_size), "--max_batch_latency_ms", _num(p.max_batch_latency_ms),
             "--max_queue", str(p.max_queue), "--load_wait_s", _num(p.load_wait_s)]
    if p.max_input_tokens is not None:
        args += ["--max_input_tokens", str(p.max_input_tokens)]
    if p.max_new_tokens is not None:
        args += ["--max_new_tokens", str(p.max_new_tokens)]
    if p.task == "generate":  # the continuous engine's sequences at once: what sizing and scaling assume
        args += ["--max_num_seqs", str(p.max_batch_size)]
    for adapter in p.adapters:
        args += ["--lora", f"{adapter.name}={adapter_mount(adapter)}"]
    return args


def adapter_mount(adapter: Adapter) -> str:
    return f"{ADAPTERS_MOUNT}/{adapter.name}"


def adapter_volumes(adapters: list[Adapter]) -> tuple[list[Doc], list[Doc]]:
    """(volumes, mounts) of the adapters on a PVC: each mounted read-only where ``--lora`` reads it."""
    volumes: list[Doc] = []
    mounts: list[Doc] = []
    for i, adapter in enumerate(a for a in adapters if a.on_pvc):
        claim, _, path = adapter.storage_uri.removeprefix("pvc://").partition("/")
        name = f"adapter-{i}"  # adapter names may hold characters a volume name cannot
        volumes.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mount: Doc = {"name": name, "mountPath": adapter_mount(adapter), "readOnly": True}
        mounts.append(mount | ({"subPath": path} if path else {}))
    return volumes, mounts


def adapter_storage_uris(adapters: list[Adapter]) -> list[Doc]:
    """KServe's storageUris for the adapters in object storage: its storage initializer fetches one per entry."""
    return [{"uri": a.storage_uri, "mountPath": adapter_mount(a)} for a in adapters if not a.on_pvc]


def profile_args(profile: Profile) -> list[str]:
    kv = ["--kv_cache_memory_gb", _num(profile.kv_cache_memory_gb)] if profile.kv_cache_memory_gb else []
    return ["--device", profile.device, "--dtype", profile.dtype, *kv]


def transformer_args(config: DeployConfig) -> list[str]:
    """Flags of ``python -m transformers_pre``. All the ones KServe would otherwise append
    (--model_name, --predictor_host, --http_port) are given, so it appends nothing."""
    t = config.transformer
    assert t is not None
    return ["--model_name", t.model_name,
            "--predictor_host", f"{config.component_host(PREDICTOR)}:80",
            "--predictor_protocol", t.predictor_protocol, "--predictor_model", config.predictor.model_name,
            "--embedder", t.embedder,
            "--milvus_uri", "$(MILVUS_URI)",  # expanded by the kubelet from the env below
            "--collection", t.collection, "--top_k", str(t.top_k), "--max_new_tokens", str(t.max_new_tokens),
            "--http_port", str(HTTP_PORT), "--grpc_port", str(GRPC_PORT), "--enable_grpc", "false"]


def probes() -> Doc:
    """Honest health: live once the port listens, ready once the model is loaded and warmed up."""
    def get(path: str) -> Doc:
        return {"httpGet": {"path": path, "port": HTTP_PORT}}

    return {
        # Covers the imports before the port listens (torch on a cold node), then hands over to liveness.
        "startupProbe": {**get(LIVE), "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 300},
        # periodSeconds 0 (unset) is Knative's aggressive probe: the queue-proxy retries every 50 ms
        # with its own 100 ms timeout, so a scaled-from-zero replica takes traffic the moment the model
        # is warm. Knative then refuses timeoutSeconds and failureThreshold (they belong to periodic
        # probing), so neither is set.
        "readinessProbe": get(READY),
        "livenessProbe": {**get(LIVE), "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
    }


def _knative_annotations(initial_scale: int, scale_down_delay: str, window: str, deadline: str) -> dict[str, str]:
    return {
        "autoscaling.knative.dev/initial-scale": str(initial_scale),
        "autoscaling.knative.dev/scale-down-delay": scale_down_delay,
        "autoscaling.knative.dev/window": window,
        "serving.knative.dev/progress-deadline": deadline,
    }


def profile_annotations(profile: Profile) -> dict[str, str]:
    keys = ("autoscaling.knative.dev/scale-down-delay", "autoscaling.knative.dev/window",
            "serving.knative.dev/progress-deadline")
    values = _knative_annotations(0, profile.scale_down_delay, profile.window, profile.progress_deadline)
    return {k: values[k] for k in keys}


def _container(config: DeployConfig, module: str, args: list[str], env: list[Doc], mounts: list[Doc]) -> Doc:
    return {
        "name": CONTAINER, "image": config.image, "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-m", module], "args": args,
        "ports": [{"name": "http1", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "env": env, **probes(), "securityContext": container_security(), "volumeMounts": mounts,
    }


def _component(config: DeployConfig, component: str, container: Doc, volumes: list[Doc]) -> Doc:
    return {
        "labels": labels(config, component),
        "serviceAccountName": serving_account(config), "automountServiceAccountToken": False,
        "securityContext": pod_security(), "containers": [container], "volumes": volumes,
    }


def _predictor(config: DeployConfig) -> Doc:
    p = config.predictor
    tmp, tmp_mount = tmp_volume()
    cache, cache_mount = cache_volume(config)
    env = [*common_env(cache=True), *telemetry_env(config, f"kzero-predictor-{p.model_name}"),
           *api_key_env(config, server=True, client=False)]
    if p.storage_uri is not None:
        env.append({"name": "STORAGE_URI", "value": p.storage_uri})  # KServe mounts it at /mnt/models
    adapter_vols, adapter_mounts = adapter_volumes(p.adapters)
    container = _container(config, "predictors", predictor_args(config), env,
                           [cache_mount, tmp_mount, *adapter_mounts])
    storage_uris = adapter_storage_uris(p.adapters)
    return {
        "minReplicas": p.min_replicas, "maxReplicas": p.max_replicas,
        "scaleMetric": "concurrency", "scaleTarget": p.effective_scale_target,
        "containerConcurrency": p.effective_container_concurrency, "timeout": p.timeout_s,
        "annotations": {"autoscaling.knative.dev/initial-scale": str(p.initial_scale)},
        **_component(config, PREDICTOR, container, [cache, tmp, *adapter_vols]),
        **({"storageUris": storage_uris} if storage_uris else {}),
    }


def _transformer(config: DeployConfig) -> Doc:
    t = config.transformer
    assert t is not None
    tmp, tmp_mount = tmp_volume()
    # Its own scratch cache (the in-process embedder's), never the predictor's claim.
    cache = {"name": "cache", "emptyDir": {"sizeLimit": "2Gi"}}
    cache_mount = {"name": "cache", "mountPath": CACHE_MOUNT}
    env = [*common_env(cache=True), setting_env(config, "MILVUS_URI"),
           *telemetry_env(config, f"kzero-transformer-{t.model_name}"),
           *api_key_env(config, server=True, client=True)]  # it calls its predictor with the client key
    container = {**_container(config, "transformers_pre", transformer_args(config), env, [cache_mount, tmp_mount]),
                 "resources": t.resources.to_k8s()}
    # No containerConcurrency: KServe would append `--workers <it>` to a custom transformer's args.
    return {
        "minReplicas": t.min_replicas, "maxReplicas": t.max_replicas,
        "scaleMetric": "concurrency", "scaleTarget": t.scale_target, "timeout": t.timeout_s,
        "annotations": _knative_annotations(1, "2m", "60s", "10m"),
        **_component(config, TRANSFORMER, container, [cache, tmp]),
    }


def inference_service(config: DeployConfig) -> Doc:
    spec = {"predictor": _predictor(config)}
    if config.transformer is not None:
        spec["transformer"] = _transformer(config)
    meta = metadata(config, config.name, "inferenceservice")
    meta["annotations"] = {"serving.kserve.io/deploymentMode": "Knative"}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": meta, "spec": spec}


def _pointer(*parts: str) -> str:
    return "/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def profile_patch(profile: Profile, name: str) -> list[Doc]:
    """JSON patch (RFC 6902) turning the base InferenceService into the cpu or gpu variant.

    The profile's name is recorded in an annotation, so ``python -m manifests rollout`` renders the
    InferenceService that is deployed, on the same profile."""
    container = ("spec", "predictor", "containers", "0")
    ops: list[Doc] = [{"op": "add", "path": _pointer("metadata", "annotations", PROFILE_ANNOTATION), "value": name}]
    ops += [{"op": "add", "path": _pointer(*container, "args", "-"), "value": v} for v in profile_args(profile)]
    ops.append({"op": "add", "path": _pointer(*container, "resources"), "value": profile.resources.to_k8s()})
    if profile.image:
        ops.append({"op": "replace", "path": _pointer(*container, "image"), "value": profile.image})
    for key, value in profile_annotations(profile).items():
        ops.append({"op": "add", "path": _pointer("spec", "predictor", "annotations", key), "value": value})
    if profile.node_selector:
        ops.append({"op": "add", "path": _pointer("spec", "predictor", "nodeSelector"), "value": profile.node_selector})
    if profile.tolerations:
        tolerations = [t.model_dump(exclude_none=True) for t in profile.tolerations]
        ops.append({"op": "add", "path": _pointer("spec", "predictor", "tolerations"), "value": tolerations})
    return ops
