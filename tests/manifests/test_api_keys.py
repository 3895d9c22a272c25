"""API keys reach the servers and their clients by Secret reference only, never as a value."""

from __future__ import annotations

from typing import Any

import pytest

from manifests.config import DeployConfig
from manifests.render import OVERLAYS, overlay_documents, render_tree
from predictors.__main__ import config_from_args as predictor_config
from tests.manifests.helpers import (
    EXAMPLES,
    configmap_data,
    example,
    expand,
    of_kind,
    resolve_env,
    serving_components,
)
from transformers_pre.__main__ import config_from_args as transformer_config

Doc = dict[str, Any]
SECRET = "kzero-api-keys"
VALUES = {"api-keys": "key-one-1f3a,key-two-9c2e", "client-key": "key-two-9c2e"}  # what the user's Secret holds
SERVER, CLIENT = "KZERO_API_KEYS", "KZERO_PREDICTOR_API_KEY"


def with_keys(name: str) -> DeployConfig:
    raw = example(name).model_dump()
    raw["auth"] = {"api_keys_secret": SECRET}
    return DeployConfig.model_validate(raw)


def _containers(docs: list[Doc]) -> dict[str, Doc]:
    """Container by component: predictor, transformer (InferenceService or Knative Services), worker (Deployment)."""
    found = {name: component["containers"][0] for name, component in serving_components(docs).items()}
    for deployment in of_kind(docs, "Deployment"):
        found["worker"] = deployment["spec"]["template"]["spec"]["containers"][0]
    return found


def _refs(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container["env"] if e["name"] in (SERVER, CLIENT)}


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_each_container_gets_the_keys_its_role_needs(name: str) -> None:
    config = with_keys(name)
    docs = overlay_documents(config, "kafka-worker")
    containers = _containers(docs)
    wanted = {"predictor": {SERVER}, "transformer": {SERVER, CLIENT}, "worker": {CLIENT}}
    assert set(containers) == {"predictor", "worker"} | ({"transformer"} if config.transformer else set())
    for component, container in containers.items():
        refs = _refs(container)
        assert set(refs) == wanted[component], component
        for var, key in ((SERVER, "api-keys"), (CLIENT, "client-key")):
            if var in refs:
                assert refs[var] == {"name": var, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}
        # What the kubelet hands the process, given the user's Secret.
        env = resolve_env(container, configmap_data(docs), {SECRET: VALUES})
        assert {k: env[k] for k in refs} == {k: VALUES["api-keys" if k == SERVER else "client-key"] for k in refs}


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_no_key_value_and_no_secret_is_ever_rendered(name: str) -> None:
    config = with_keys(name)
    rendered = [doc for f in render_tree(config) for doc in f.docs] + [
        doc for overlay in OVERLAYS for doc in overlay_documents(config, overlay)]
    text = str(rendered)
    assert not any(value in text for value in VALUES.values())
    assert not [d for d in rendered if isinstance(d, dict) and d.get("kind") == "Secret"]
    for overlay in OVERLAYS:
        for container in _containers(overlay_documents(config, overlay)).values():
            assert all("value" not in ref for ref in _refs(container).values())


@pytest.mark.parametrize("name", [p.stem for p in EXAMPLES])
def test_without_auth_nothing_refers_to_keys(name: str) -> None:
    for overlay in OVERLAYS:
        text = str(overlay_documents(example(name), overlay))
        assert SERVER not in text and CLIENT not in text


def test_the_servers_read_the_rendered_keys() -> None:
    """Through the servers' own parsers: the predictor accepts the keys, the transformer also sends one."""
    docs = overlay_documents(with_keys("rag"), "cpu")
    containers = _containers(docs)
    env = resolve_env(containers["predictor"], configmap_data(docs), {SECRET: VALUES})
    keys = predictor_config(containers["predictor"]["args"], env).auth.api_keys
    assert keys is not None and [k.get_secret_value() for k in keys] == VALUES["api-keys"].split(",")
    env = resolve_env(containers["transformer"], configmap_data(docs), {SECRET: VALUES})
    transformer = transformer_config([expand(a, env) for a in containers["transformer"]["args"]], env)
    assert transformer.auth.enabled
    assert transformer.predictor_api_key is not None
    assert transformer.predictor_api_key.get_secret_value() == VALUES["client-key"]


def test_the_knative_route_says_it_cannot_send_a_key() -> None:
    files = {f.path: f for f in render_tree(with_keys("rag"))}
    assert "cannot send a key" in files["components/knative-route/knative-route.yaml"].why
    assert "cannot send a key" not in {f.path: f for f in render_tree(example("rag"))}[
        "components/knative-route/knative-route.yaml"].why
