"""Helpers for the manifest tests: rendered sets, strict model deserialization, kubelet-style env expansion."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models

from manifests.config import DeployConfig, load_config
from manifests.render import OVERLAYS, overlay_documents

REPO_ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = REPO_ROOT / "manifests"
EXAMPLES = sorted((MANIFESTS / "examples").glob("*.yaml"))
COMMITTED_SOURCE = MANIFESTS / "examples" / "rag.yaml"  # the committed tree under manifests/ comes from it

Doc = dict[str, Any]


def example(name: str) -> DeployConfig:
    return load_config(MANIFESTS / "examples" / f"{name}.yaml")


def all_documents(config: DeployConfig) -> Iterator[tuple[str, Doc]]:
    for overlay in OVERLAYS:
        for doc in overlay_documents(config, overlay):
            yield overlay, doc


def find(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def serving_components(docs: list[Doc]) -> dict[str, Doc]:
    """Pod spec by component (predictor, transformer): from the InferenceService, or from the Knative
    Services of the knative-service overlay (their template's spec, labels added as KServe would)."""
    found = {name: spec for isvc in of_kind(docs, "InferenceService") for name, spec in isvc["spec"].items()}
    for ksvc in of_kind(docs, "Service"):
        if ksvc["apiVersion"].startswith("serving.knative.dev/"):
            template = ksvc["spec"]["template"]
            found[ksvc["metadata"]["labels"]["app.kubernetes.io/component"]] = {
                **template["spec"], "labels": template["metadata"]["labels"]}
    return found


# -- strict deserialization into the generated SDK models -------------------------------------------

class UnknownField(AssertionError):
    pass


def _model_class(name: str) -> Any:
    return getattr(kserve_models, name, None) or getattr(k8s_models, name, None)


def strict_deserialize(data: Any, type_name: str, path: str = "") -> Any:
    """Build the SDK model ``type_name`` from ``data``, failing on any key the model does not know.

    The SDKs' own deserializers silently drop unknown keys (and kserve's cannot parse its
    ``List[...]`` type names), so a misspelled field would pass unnoticed.
    """
    if data is None:
        return None
    if m := re.fullmatch(r"(?:List|list)\[(.+)\]", type_name):
        assert isinstance(data, list), f"{path}: expected a list, got {data!r}"
        return [strict_deserialize(v, m.group(1), f"{path}[{i}]") for i, v in enumerate(data)]
    if m := re.fullmatch(r"(?:Dict\[|dict\()str, (.+)[\])]", type_name):
        assert isinstance(data, dict), f"{path}: expected a mapping, got {data!r}"
        return {k: strict_deserialize(v, m.group(1), f"{path}.{k}") for k, v in data.items()}
    primitives: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}
    if type_name in primitives:
        assert isinstance(data, primitives[type_name]), f"{path}: expected {type_name}, got {data!r}"
        return data
    if type_name == "object":
        return data
    cls = _model_class(type_name)
    assert cls is not None, f"{path}: no SDK model named {type_name}"
    assert isinstance(data, dict), f"{path}: expected a {type_name} mapping, got {data!r}"
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(by_json))
    if unknown:
        raise UnknownField(f"{path or type_name}: {type_name} has no field(s) {unknown}")
    kwargs = {by_json[k]: strict_deserialize(v, cls.openapi_types[by_json[k]], f"{path}.{k}") for k, v in data.items()}
    return cls(**kwargs)


# -- what the kubelet does to a container's env and args ------------------------------------------

Data = dict[str, dict[str, str]]


def resolve_env(container: Doc, configmaps: Data, secrets: Data) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif ref := var["valueFrom"].get("configMapKeyRef"):
            env[var["name"]] = configmaps[ref["name"]][ref["key"]]
        elif ref := var["valueFrom"].get("secretKeyRef"):
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are replaced, ``$$`` escapes, others stay."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def configmap_data(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(docs, "ConfigMap")}


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    i = args.index(flag)
    return [*args[: i + 1], value, *args[i + 2:]]


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]
