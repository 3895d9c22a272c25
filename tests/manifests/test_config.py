"""The deploy config refuses inconsistent settings, naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from manifests.config import DeployConfig


def _config(**overrides: Any) -> dict[str, Any]:
    predictor = {"model_name": "minilm", "task": "embed", "model_id": "all-minilm-l6-v2", "max_batch_size": 32}
    base: dict[str, Any] = {"name": "kz", "namespace": "ns", "image": "img:1", "predictor": predictor}
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def _error(**overrides: Any) -> str:
    with pytest.raises(ValidationError) as err:
        DeployConfig.model_validate(_config(**overrides))
    return str(err.value)


def test_defaults_size_knative_to_the_batcher() -> None:
    p = DeployConfig.model_validate(_config()).predictor
    assert p.effective_scale_target == 32
    assert p.effective_container_concurrency == 64


@pytest.mark.parametrize(("predictor", "message"), [
    ({"container_concurrency": 16}, "must be >= scale_target"),
    ({"max_queue": 40}, "must be <= max_queue"),
    ({"model_id": "no-such-model"}, "is not packaged"),
    ({"task": "generate"}, "is a embed model, not generate"),
    ({"storage_uri": "pvc://models/minilm"}, "exactly one of model_id"),
    ({"gguf_file": "m.gguf"}, "gguf_file needs storage_uri"),
    ({"min_replicas": 5, "max_replicas": 2}, "min_replicas (5) > max_replicas (2)"),
    ({"storage_uri": "s3://bucket/m", "model_id": None}, "storage_uri"),
    # Knative's defaults: max-revision-timeout-seconds, container-concurrency-max-limit, allow-zero-initial-scale.
    ({"timeout_s": 601}, "timeout_s"),
    ({"max_batch_size": 600, "max_queue": 2000}, "exceeds Knative's limit of 1000"),
    ({"initial_scale": 0}, "initial_scale"),
])
def test_predictor_rules(predictor: dict[str, Any], message: str) -> None:
    assert message in _error(predictor=predictor)


@pytest.mark.parametrize(("profile", "message"), [
    ({"window": "5s"}, "window '5s' must lie between 6s and 1h"),
    ({"window": "2h"}, "window '2h' must lie between 6s and 1h"),
    ({"scale_down_delay": "61m"}, "scale_down_delay '61m' must be at most 1h"),
])
def test_profiles_stay_within_knative_bounds(profile: dict[str, Any], message: str) -> None:
    assert message in _error(profiles={"gpu": profile})


def test_worker_cannot_outnumber_partitions() -> None:
    assert "the extra workers would get no partition" in _error(kafka={"partitions": 3}, worker={"max_replicas": 4})


def test_credentials_need_a_secret_reference() -> None:
    assert "kafka.auth.secret is required" in _error(kafka={"auth": {"mechanism": "scram-sha-512", "tls": True}})


def test_unknown_keys_are_refused() -> None:
    assert "Extra inputs are not permitted" in _error(predictor={"max_batchsize": 8})


def test_a_partial_profile_is_merged_over_the_default() -> None:
    config = DeployConfig.model_validate(_config(profiles={"gpu": {"image": "img:1-cuda"}}))
    assert config.profiles.gpu.image == "img:1-cuda"
    assert config.profiles.gpu.resources.gpus == 1
    assert config.profiles.cpu.device == "cpu"


def test_names_must_be_dns_labels() -> None:
    assert "name" in _error(name="Kzero_Embed")


def test_transformer_answers_must_fit_the_predictor_limit() -> None:
    message = _error(predictor={"task": "generate", "model_id": "smollm2-135m-instruct", "max_new_tokens": 128},
                     transformer={"model_name": "rag", "max_new_tokens": 256})
    assert "exceeds the predictor's max_new_tokens (128)" in message
