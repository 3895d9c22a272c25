"""The operators' upstream CRDs, read from the shared directory (never copied into the repository).

``$KZERO_CRDS_DIR`` or ``<repo>/../shared/crds`` (SOURCES.txt there says where each file comes from:
KServe, Knative Serving/Eventing, eventing-kafka-broker, KEDA, Strimzi). A CRD that converts
between versions with a webhook is installed with conversion ``None``: no conversion webhook runs
here, and the manifests use one version of each kind.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.cluster.local import REPO_ROOT

Doc = dict[str, Any]


def crds_dir() -> Path:
    path = Path(os.environ.get("KZERO_CRDS_DIR") or REPO_ROOT.parent / "shared" / "crds")
    if not (path / "SOURCES.txt").is_file():
        raise FileNotFoundError(f"no upstream CRDs at {path} (SOURCES.txt missing): set KZERO_CRDS_DIR to the "
                                "directory of KServe/Knative/KEDA/Strimzi CRDs")
    return path


def load(paths: Iterable[Path]) -> list[Doc]:
    # libyaml's loader: the pure-Python one takes half a minute over these files.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for p in sorted(paths) for d in yaml.load_all(p.read_text(), Loader=loader) if d]
    return [without_conversion_webhook(d) for d in docs if d.get("kind") == "CustomResourceDefinition"]


def upstream() -> list[Doc]:
    return load(crds_dir().glob("*.yaml"))


def without_conversion_webhook(crd: Doc) -> Doc:
    if crd["spec"].get("conversion", {}).get("strategy") != "Webhook":
        return crd
    crd = copy.deepcopy(crd)
    crd["spec"]["conversion"] = {"strategy": "None"}
    return crd


def install(api: client.ApiClient, crds: list[Doc], timeout_s: float = 60) -> None:
    """Create (or replace) each CRD and wait until all are Established."""
    ext = client.ApiextensionsV1Api(api)
    for crd in crds:
        try:
            ext.create_custom_resource_definition(crd)
        except ApiException as err:
            if err.status != 409:
                raise
            live = ext.read_custom_resource_definition(crd["metadata"]["name"])
            body = {**crd, "metadata": {**crd["metadata"], "resourceVersion": live.metadata.resource_version}}
            ext.replace_custom_resource_definition(crd["metadata"]["name"], body)
    deadline = time.monotonic() + timeout_s
    for crd in crds:
        while not established(ext, crd["metadata"]["name"]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRD {crd['metadata']['name']} not Established after {timeout_s}s")
            time.sleep(0.2)


def established(ext: client.ApiextensionsV1Api, name: str) -> bool:
    conditions = ext.read_custom_resource_definition(name).status.conditions or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def remove(api: client.ApiClient, name: str, timeout_s: float = 60) -> None:
    ext = client.ApiextensionsV1Api(api)
    ext.delete_custom_resource_definition(name)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ext.read_custom_resource_definition(name)
        except ApiException as err:
            if err.status == 404:
                return
            raise
        time.sleep(0.2)
    raise TimeoutError(f"CRD {name} still present after {timeout_s}s")
