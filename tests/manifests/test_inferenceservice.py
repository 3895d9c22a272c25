"""The InferenceService: the kserve SDK's model accepts every field, and the values agree with the servers."""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

import pytest

from manifests.config import DeployConfig
from manifests.render import OVERLAYS, overlay_documents
from predictors.__main__ import build_parser as predictor_parser
from predictors.__main__ import config_from_args
from predictors.config import LimitsConfig
from tests.manifests.helpers import (
    EXAMPLES,
    configmap_data,
    example,
    expand,
    find,
    flag,
    resolve_env,
    strict_deserialize,
)

HEALTH_PATHS = {"/v2/health/live", "/v2/health/ready"}  # served by serving.server; checked live in test_containers
SERVING_OVERLAYS = ("cpu", "gpu")
KSERVE_OVERLAYS = [o for o in OVERLAYS if o != "knative-service"]  # that one renders Knative Services instead


def _isvc(config: DeployConfig, overlay: str) -> dict[str, Any]:
    return find(overlay_documents(config, overlay), "InferenceService")


def _container(component: dict[str, Any]) -> dict[str, Any]:
    (container,) = component["containers"]
    return container


def _quantity(value: str) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", value).groups()  # type: ignore[union-attr]
    return float(number) * units.get(unit, 1)


def _minutes(duration: str) -> float:
    number, unit = int(duration[:-1]), duration[-1]
    return number * {"s": 1 / 60, "m": 1, "h": 60}[unit]


@pytest.fixture(params=[p.stem for p in EXAMPLES])
def config(request: pytest.FixtureRequest) -> DeployConfig:
    return example(request.param)


@pytest.mark.parametrize("overlay", KSERVE_OVERLAYS)
def test_the_kserve_sdk_model_knows_every_field(config: DeployConfig, overlay: str) -> None:
    isvc = strict_deserialize(_isvc(config, overlay), "V1beta1InferenceService")
    assert isvc.spec.predictor.containers[0].name == "kserve-container"


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_predictor_scales_to_zero_sized_to_its_batcher(config: DeployConfig, overlay: str) -> None:
    isvc = _isvc(config, overlay)
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
    predictor = isvc["spec"]["predictor"]
    args = predictor_parser().parse_args(_container(predictor)["args"])
    assert predictor["minReplicas"] == 0
    assert predictor["maxReplicas"] >= 1
    assert predictor["scaleMetric"] == "concurrency"
    assert predictor["scaleTarget"] == args.max_batch_size
    assert args.max_batch_size <= predictor["containerConcurrency"] <= args.max_queue
    annotations = predictor["annotations"]
    for key in ("autoscaling.knative.dev/initial-scale", "autoscaling.knative.dev/scale-down-delay",
                "autoscaling.knative.dev/window", "serving.knative.dev/progress-deadline"):
        assert key in annotations, key


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_predictor_command_is_what_the_server_accepts(config: DeployConfig, overlay: str) -> None:
    container = _container(_isvc(config, overlay)["spec"]["predictor"])
    assert container["command"] == ["python", "-m", "predictors"]
    env = resolve_env(container, configmap_data(overlay_documents(config, overlay)), {})
    predictor = config_from_args(container["args"], env)  # the server's own parser and validation
    assert predictor.model_name == config.predictor.model_name
    (port,) = container["ports"]
    assert port == {"name": "http1", "containerPort": predictor.http_port, "protocol": "TCP"}
    assert predictor.enable_grpc is False  # Knative routes only the http1 port
    assert predictor.workers == 1
    assert predictor.device == ("cuda" if overlay == "gpu" else "cpu")
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(predictor.cache_dir) in mounts and "/tmp" in mounts


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_probes_use_the_honest_health_endpoints(config: DeployConfig, overlay: str) -> None:
    for component in ("predictor", "transformer"):
        if component not in _isvc(config, overlay)["spec"]:
            continue
        container = _container(_isvc(config, overlay)["spec"][component])
        port = container["ports"][0]["containerPort"]
        probes = {k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
        assert {p["port"] for p in probes.values()} == {port}
        assert {p["path"] for p in probes.values()} <= HEALTH_PATHS
        assert probes["readinessProbe"]["path"] == "/v2/health/ready"
        assert probes["livenessProbe"]["path"] == "/v2/health/live"


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_every_container_sets_requests_and_limits(config: DeployConfig, overlay: str) -> None:
    # KServe adds its own defaults (1 CPU, 2Gi limits) to a container without them.
    spec = _isvc(config, overlay)["spec"]
    for component in spec.values():
        resources = _container(component)["resources"]
        for kind in ("cpu", "memory"):
            assert _quantity(resources["requests"][kind]) <= _quantity(resources["limits"][kind])


def test_gpu_overlay_asks_for_a_gpu_node_and_cpu_overlay_never_does(config: DeployConfig) -> None:
    gpu = _isvc(config, "gpu")["spec"]["predictor"]
    assert int(_container(gpu)["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert gpu["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
    cold_gpu, cold_cpu = (_minutes(_isvc(config, o)["spec"]["predictor"]["annotations"]
                                   ["serving.knative.dev/progress-deadline"]) for o in ("gpu", "cpu"))
    assert cold_gpu >= 20 and cold_gpu > cold_cpu  # a cold GPU node: autoscaler, image pull, weights
    for overlay in ("cpu", "kafka-worker", "kafka-knative"):
        assert "nvidia.com/gpu" not in str(overlay_documents(config, overlay))


def _transformer_main() -> ModuleType:
    """``transformers_pre.__main__``; the test fails (not skips) while it has no ``build_parser``."""
    try:
        from transformers_pre import __main__ as main
    except ImportError as err:
        pytest.fail(f"cannot import transformers_pre.__main__ ({err}): the manifests run `python -m transformers_pre`",
                    pytrace=False)
    if not hasattr(main, "build_parser"):
        pytest.fail("transformers_pre.__main__ has no build_parser(): the manifests' transformer flags must be "
                    "checked against the transformer's own parser", pytrace=False)
    return main


def _kserve_transformer_appends(args: list[str], config: DeployConfig, component: dict[str, Any]) -> list[str]:
    """What KServe's CustomTransformer.GetContainer appends to a custom transformer's args
    (kserve pkg/apis/serving/v1beta1/transformer_custom.go): each flag only when absent."""
    appended: list[str] = []
    defaults = {"--model_name": config.name, "--predictor_host": f"{config.name}-predictor.{config.namespace}",
                "--http_port": "8080"}
    for name, value in defaults.items():
        if name not in args:
            appended += [name, value]
    if "--workers" not in args and component.get("containerConcurrency") is not None:
        appended += ["--workers", str(component["containerConcurrency"])]
    return appended


def test_transformer_command_is_what_the_transformer_accepts() -> None:
    config = example("rag")
    docs = overlay_documents(config, "cpu")
    component = find(docs, "InferenceService")["spec"]["transformer"]
    container = _container(component)
    assert container["command"] == ["python", "-m", "transformers_pre"]
    args = container["args"]
    assert _kserve_transformer_appends(args, config, component) == []
    env = resolve_env(container, configmap_data(docs), {})
    expanded = [expand(a, env) for a in args]
    assert flag(expanded, "--milvus_uri") == config.milvus.uri
    assert flag(expanded, "--predictor_host") == f"{config.name}-predictor.{config.namespace}.svc.cluster.local:80"
    main = _transformer_main()
    parsed = main.build_parser().parse_args(expanded)
    if hasattr(main, "config_from_args"):  # its settings validation, as `main` runs it
        main.config_from_args(expanded)
    assert parsed.model_name == config.entry_model
    assert parsed.predictor_model == config.predictor.model_name  # not the transformer's own name
    assert parsed.http_port == container["ports"][0]["containerPort"]
    assert parsed.enable_grpc is False
    assert parsed.max_new_tokens <= (config.predictor.max_new_tokens or LimitsConfig().max_new_tokens)


def test_storage_uri_mounts_the_model_and_keeps_the_cache_on_a_volume() -> None:
    raw = example("embed").model_dump()
    raw["predictor"] |= {"model_id": None, "storage_uri": "pvc://models/minilm", "task": "embed"}
    raw["cache"] = {"volume": "pvc", "size": "10Gi"}
    config = DeployConfig.model_validate(raw)
    docs = overlay_documents(config, "cpu")
    predictor = find(docs, "InferenceService")["spec"]["predictor"]
    container = _container(predictor)
    env = resolve_env(container, configmap_data(docs), {})
    assert env["STORAGE_URI"] == "pvc://models/minilm"
    assert str(config_from_args(container["args"], env).model_dir) == "/mnt/models"
    claim = find(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in predictor["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]


def _with_adapters(*uris: str) -> DeployConfig:
    raw = example("rag").model_dump()
    raw["predictor"]["adapters"] = [{"name": f"tuned-{i}", "storage_uri": uri} for i, uri in enumerate(uris)]
    return DeployConfig.model_validate(raw)


@pytest.mark.parametrize("overlay", SERVING_OVERLAYS)
def test_adapters_are_mounted_and_named_in_lora_flags(overlay: str) -> None:
    config = _with_adapters("pvc://adapters/support/v3", "s3://bucket/adapters/legal")
    isvc = _isvc(config, overlay)
    strict_deserialize(isvc, "V1beta1InferenceService")
    predictor = isvc["spec"]["predictor"]
    container = _container(predictor)
    parsed = config_from_args(container["args"], {})
    assert [(a.name, str(a.path)) for a in parsed.lora] == [
        ("tuned-0", "/mnt/adapters/tuned-0"), ("tuned-1", "/mnt/adapters/tuned-1")]
    # The PVC one is mounted read-only by the renderer; KServe's storage initializer fetches the other.
    assert {"name": "adapter-0", "mountPath": "/mnt/adapters/tuned-0", "readOnly": True,
            "subPath": "support/v3"} in container["volumeMounts"]
    assert {"name": "adapter-0", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}} in (
        predictor["volumes"])
    assert predictor["storageUris"] == [{"uri": "s3://bucket/adapters/legal", "mountPath": "/mnt/adapters/tuned-1"}]


def test_adapters_need_a_generate_model_and_distinct_names() -> None:
    raw = example("embed").model_dump()
    raw["predictor"]["adapters"] = [{"name": "tuned", "storage_uri": "pvc://adapters/tuned"}]
    with pytest.raises(ValueError, match="LoRA adapters need task generate"):
        DeployConfig.model_validate(raw)
    raw = example("rag").model_dump()
    for names in (["x", "x"], [raw["predictor"]["model_name"]]):
        raw["predictor"]["adapters"] = [{"name": name, "storage_uri": "pvc://a/x"} for name in names]
        with pytest.raises(ValueError, match="names must be unique and differ from model_name"):
            DeployConfig.model_validate(raw)
    with pytest.raises(ValueError, match="storage_uri"):
        _with_adapters("file:///adapters/x")
