"""Render a deploy config into a kustomize tree (base, components, overlays) or one overlay's documents.

The tree is what ``kubectl apply -k manifests/overlays/<overlay>`` takes, and what you can layer your
own kustomize patches on. ``overlay_documents`` computes the same overlay in Python (applying the
overlays' JSON patches itself), for ``--overlay`` output without kustomize and for the tests, which
check that both agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from manifests.config import DeployConfig
from manifests.kafka import kafka_topics
from manifests.knative import knative_route
from manifests.knative_service import knative_services
from manifests.security import service_account, serving_account, serving_policies, worker_account, worker_policy
from manifests.serving import inference_service, profile_patch
from manifests.settings import Doc, cache_claim, settings_configmap
from manifests.worker import scaled_object, trigger_authentication, worker_deployment

OVERLAYS = ("cpu", "gpu", "kafka-worker", "kafka-knative", "knative-service")
MANAGED_DIRS = ("base", "components", "overlays")
KUSTOMIZE_API = "kustomize.config.k8s.io/v1beta1"
COMPONENT_API = "kustomize.config.k8s.io/v1alpha1"


@dataclass(frozen=True)
class File:
    path: str
    docs: list[Any]  # YAML documents: resources, kustomizations, or a JSON patch (a list)
    why: str = ""


def _component_files(config: DeployConfig) -> dict[str, list[File]]:
    worker = [service_account(config, worker_account(config), "worker"), worker_deployment(config),
              scaled_object(config), worker_policy(config)]
    if (auth := trigger_authentication(config)) is not None:
        worker.insert(2, auth)
    route_why = ("KafkaSource -> Kafka Broker -> Trigger -> InferenceService; replies -> KafkaSink.\n"
                 "The source feeds the Broker, not the service: KafkaSources drop replies.")
    if config.auth.api_keys_secret is not None:
        route_why += ("\nWith API keys the service refuses these deliveries: a Trigger cannot send a key "
                      "(docs/deploy.md, API keys).")
    ksvc_why = (f"Knative Services instead of the InferenceService (Knative Serving without KServe), on the "
                f"{config.kafka_overlays_on} profile;\nthe same containers, probes and annotations, KServe's names.")
    return {
        "knative-service": [File("knative-service.yaml", knative_services(config, _profiled_isvc(config)), ksvc_why)],
        "kafka-topics": [File("kafka-topics.yaml", kafka_topics(config),
                              "Strimzi KafkaTopics, in the namespace its topic operator watches.")],
        "worker": [File("worker.yaml", worker,
                        "The eventing worker, scaled from zero on consumer lag by KEDA. No probes: it serves no port;\n"
                        "Kafka evicts a worker that stops polling, and a crashed one exits and is restarted.")],
        "knative-route": [File("knative-route.yaml", knative_route(config), route_why)],
    }


def _base_files(config: DeployConfig) -> list[File]:
    files = [
        File("serviceaccount.yaml", [service_account(config, serving_account(config), "serving")],
             "No RoleBinding and no mounted token: the serving pods never call the Kubernetes API."),
        File("settings.yaml", [settings_configmap(config)], "Connection settings; credentials live in Secrets."),
        File("inferenceservice.yaml", [inference_service(config)],
             "Accelerator-neutral: the cpu and gpu overlays add device flags, resources and scheduling."),
        File("networkpolicies.yaml", serving_policies(config),
             "Only Knative, Knative Eventing and our own pods call in."),
    ]
    if (claim := cache_claim(config)) is not None:
        files.append(File("model-cache.yaml", [claim], "The model cache survives scale-to-zero on this volume."))
    return files


def _kustomization(resources: list[str], *, component: bool = False, **extra: object) -> Doc:
    kind, api = ("Component", COMPONENT_API) if component else ("Kustomization", KUSTOMIZE_API)
    return {"apiVersion": api, "kind": kind, "resources": resources, **extra}


def _isvc_target(config: DeployConfig) -> Doc:
    return {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService", "name": config.name}


def render_tree(config: DeployConfig) -> list[File]:
    files: list[File] = []
    base = _base_files(config)
    files += [File(f"base/{f.path}", f.docs, f.why) for f in base]
    files.append(File("base/kustomization.yaml", [_kustomization([f.path for f in base])]))
    for name, component in _component_files(config).items():
        files += [File(f"components/{name}/{f.path}", f.docs, f.why) for f in component]
        extra = {"patches": [_delete_isvc(config)]} if name == "knative-service" else {}
        files.append(File(f"components/{name}/kustomization.yaml",
                          [_kustomization([f.path for f in component], component=True, **extra)]))
    for accelerator in ("cpu", "gpu"):
        profile = config.profile(accelerator)
        files.append(File(f"overlays/{accelerator}/inferenceservice-patch.yaml", [profile_patch(profile, accelerator)],
                          f"JSON patch (RFC 6902): the predictor on {accelerator}."))
        patch = {"path": "inferenceservice-patch.yaml", "target": _isvc_target(config)}
        files.append(File(f"overlays/{accelerator}/kustomization.yaml",
                          [_kustomization(["../../base"], patches=[patch])]))
    for route in ("worker", "knative"):
        components = ["../../components/kafka-topics", f"../../components/{_route_component(route)}"]
        files.append(File(f"overlays/kafka-{route}/kustomization.yaml",
                          [_kustomization([f"../{config.kafka_overlays_on}"], components=components)],
                          f"The {config.kafka_overlays_on} service, its topics, and the {route} consuming requests."))
    files.append(File("overlays/knative-service/kustomization.yaml",
                      [_kustomization(["../../base"], components=["../../components/knative-service"])],
                      "The service as Knative Services, for Knative Serving without KServe."))
    return files


def _delete_isvc(config: DeployConfig) -> Doc:
    target = _isvc_target(config)
    patch = {"$patch": "delete", "apiVersion": f"{target['group']}/{target['version']}", "kind": target["kind"],
             "metadata": {"name": config.name}}
    return {"target": target, "patch": yaml.safe_dump(patch, sort_keys=False)}


def _profiled_isvc(config: DeployConfig, profile: str | None = None) -> Doc:
    """The InferenceService with a profile's patch applied (default: the one ``kafka_overlays_on`` names)."""
    name = profile or config.kafka_overlays_on
    return apply_patch(inference_service(config), profile_patch(config.profile(name), name))


def _route_component(route: str) -> str:
    return "worker" if route == "worker" else "knative-route"


def overlay_documents(config: DeployConfig, overlay: str) -> list[Doc]:
    """The documents ``kustomize build overlays/<overlay>`` yields, computed without kustomize."""
    if overlay not in OVERLAYS:
        raise ValueError(f"unknown overlay {overlay!r}; known: {', '.join(OVERLAYS)}")
    if overlay.startswith("kafka-"):
        route = overlay.removeprefix("kafka-")
        components = _component_files(config)
        extra = [d for name in ("kafka-topics", _route_component(route)) for f in components[name] for d in f.docs]
        return overlay_documents(config, config.kafka_overlays_on) + extra
    docs = [copy.deepcopy(d) for f in _base_files(config) for d in f.docs]
    if overlay == "knative-service":
        serving = knative_services(config, _profiled_isvc(config))
    else:
        serving = [_profiled_isvc(config, overlay)]
    return [s for d in docs for s in (serving if d["kind"] == "InferenceService" else [d])]


def apply_patch(doc: Doc, ops: list[Doc]) -> Doc:
    """The subset of RFC 6902 the overlays use: ``add`` (``-`` appends) and ``replace``."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        value = copy.deepcopy(op["value"])
        if isinstance(target, list) and last == "-":
            target.append(value)
        elif isinstance(target, list):
            target.insert(int(last), value)
        elif op["op"] == "replace" and last not in target:
            raise KeyError(f"replace {op['path']}: nothing there")
        else:
            target[last] = value
    return doc


class _Dumper(yaml.SafeDumper):
    """Lists of scalars (container args, topics) on one line, as people write them."""

    def represent_list(self, data: list[Any]) -> yaml.Node:  # type: ignore[override]
        flow = bool(data) and all(isinstance(v, str | int | float | bool) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def dump(docs: list[Any], header: str = "") -> str:
    body = yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=len(docs) > 1)
    return header + body


def header(source: str, why: str) -> str:
    lines = [f"# Generated by `python -m manifests render --config {source}`: change the config, not this file."]
    lines += [f"# {line}" for line in why.splitlines()]
    return "\n".join(lines) + "\n"


def write_tree(files: list[File], out: Path, source: str) -> list[Path]:
    """Write the tree under ``out``, replacing earlier renders (stale files would linger otherwise)."""
    for managed in MANAGED_DIRS:
        for old in sorted((out / managed).rglob("*.yaml")) if (out / managed).is_dir() else []:
            old.unlink()
    written = []
    for f in files:
        path = out / f.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump(f.docs, header(source, f.why)))
        written.append(path)
    return written
