"""One home per default: every command-line flag and every deploy-config field that maps to a field of a
component's pydantic model shows that model's default, and a command run with no options builds the
model's defaults."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field

from eventing.__main__ import build_parser as eventing_parser
from eventing.__main__ import worker_config
from eventing.config import DEFAULT_DOCUMENTS, DOCUMENTS_GROUP, KafkaSecurity, WorkerConfig
from manifests import config as deploy
from predictors.__main__ import build_parser as predictor_parser
from predictors.__main__ import config_from_args as predictor_config
from predictors.batcher import BatcherConfig
from predictors.config import EngineConfig, LimitsConfig, PredictorConfig
from serving.defaults import default_of
from serving.limits import RequestLimits
from serving.retry import RetryPolicy
from transformers_pre.__main__ import build_parser as transformer_parser
from transformers_pre.__main__ import config_from_args as transformer_config
from transformers_pre.config import TransformerConfig
from transformers_pre.ingest.__main__ import build_parser as ingest_parser
from transformers_pre.ingest.__main__ import config_from_args as ingest_config
from transformers_pre.ingest.config import IngestConfig


def mismatches(values: Mapping[str, Any], models: Iterable[type[BaseModel]], derived: Iterable[str] = ()) -> list[str]:
    """Each of ``values`` (flag or field name -> default) that differs from the default of the model field of
    that name. ``derived`` names may default to None: the model (or the command) works them out."""
    found = []
    for name, value in sorted(values.items()):
        for model in models:
            field = model.model_fields.get(name)
            if field is None or field.is_required() or (value is None and name in derived):
                continue
            if value != default_of(model, name):
                found.append(f"{name}: {value!r} here, {default_of(model, name)!r} in {model.__name__}")
    return found


def defaults(parser: argparse.ArgumentParser, *required: str) -> dict[str, Any]:
    """Every option's default: what parsing only ``required`` leaves in the namespace, less those."""
    given = {arg.lstrip("-").replace("-", "_") for arg in required if arg.startswith("--")}
    return {name: value for name, value in vars(parser.parse_args(list(required))).items() if name not in given}


def test_the_checker_finds_a_restated_default() -> None:
    class Settings(BaseModel):
        model_config = ConfigDict(frozen=True)
        size: int = 4
        name: str = Field(default="a")
        required: str
        derived: str = "from size"

    assert mismatches({"size": 4, "name": "a", "required": "x", "other": 1}, [Settings]) == []
    assert mismatches({"size": 5, "derived": None}, [Settings]) == [
        "derived: None here, 'from size' in Settings", "size: 5 here, 4 in Settings"]
    assert mismatches({"derived": None}, [Settings], derived={"derived"}) == []
    with pytest.raises(KeyError, match=r"Settings\.required has no default"):
        default_of(Settings, "required")


def test_predictor_flags() -> None:
    required = ("--task", "embed", "--model_id", "all-minilm-l6-v2")
    values = defaults(predictor_parser(), *required)
    assert mismatches(values, [PredictorConfig, BatcherConfig, LimitsConfig, EngineConfig, RequestLimits],
                      {"cache_dir", "engine"}) == []  # engine: the default, or static for --lora
    assert {"max_batch_size", "load_wait_s", "max_instances", "max_request_bytes"} <= set(values)
    built = predictor_config(list(required), {"KZERO_CACHE_DIR": "/cache"})
    expected = PredictorConfig(task="embed", model_id="all-minilm-l6-v2", cache_dir="/cache")  # type: ignore[arg-type]
    assert built == expected


def test_the_engine_is_continuous_unless_adapters_come_without_one() -> None:
    base = ["--task", "generate", "--model_id", "smollm2-135m-instruct"]
    assert predictor_config(base, {}).generation.engine == "continuous"
    assert predictor_config([*base, "--engine", "static"], {}).generation.engine == "static"
    adapters = [*base, "--lora", "ada=/adapters/ada", "--max_num_seqs", "4"]
    built = predictor_config(adapters, {}).generation
    assert built.engine == "static" and built.max_num_seqs == 4  # only the engine is chosen for it
    with pytest.raises(ValueError, match="static engine"):  # asked for by name: refused, not overridden
        predictor_config([*adapters, "--engine", "continuous"], {})


def test_transformer_flags() -> None:
    values = defaults(transformer_parser(), "--predictor_host", "h:1")
    assert mismatches(values, [TransformerConfig, RequestLimits],
                      {"predictor_model", "collection", "collections", "filter_fields"}) == []
    assert {"top_k", "load_wait_s", "max_new_tokens", "embedder"} <= set(values)
    built = transformer_config(["--predictor_host", "h:1"])
    assert built == TransformerConfig(predictor_host="h:1", predictor_model=built.model_name)


def test_ingest_flags() -> None:
    values = defaults(ingest_parser(), "--collection", "c")
    assert mismatches(values, [IngestConfig], {"milvus_uri"}) == []
    args = ingest_parser().parse_args(["--collection", "c", "--milvus_uri", "m.db"])
    assert ingest_config(args) == IngestConfig(milvus_uri="m.db", collection="c")


def test_worker_flags() -> None:
    parser = eventing_parser()
    required = ("worker", "--bootstrap-servers", "b:1", "--model", "m", "--predictor-url", "http://p")
    values = defaults(parser, *required)
    assert mismatches(values, [WorkerConfig, RetryPolicy, IngestConfig],
                      {"input_topic", "group", "predictor_url", "milvus_uri"}) == []
    assert {"max_batch", "max_wait_ms", "max_in_flight", "max_attempts", "handler"} <= set(values)
    built = worker_config(parser.parse_args(list(required)), KafkaSecurity(), None)
    assert built == WorkerConfig(bootstrap_servers="b:1", model="m", predictor_url="http://p")

    documents = parser.parse_args(["worker", "--bootstrap-servers", "b:1", "--handler", "documents",
                                   "--milvus-uri", "d.db", "--collection", "c"])
    built = worker_config(documents, KafkaSecurity(), None)
    assert (built.input_topic, built.group) == (DEFAULT_DOCUMENTS, DOCUMENTS_GROUP)
    assert built.documents == IngestConfig(milvus_uri="d.db", collection="c", progress=False)


def test_deploy_config_fields() -> None:
    def fields(model: type[BaseModel]) -> dict[str, Any]:
        return {name: default_of(model, name) for name, f in model.model_fields.items() if not f.is_required()}

    assert mismatches(fields(deploy.Predictor), [BatcherConfig, PredictorConfig]) == []
    assert mismatches(fields(deploy.Transformer), [TransformerConfig]) == []
    assert mismatches(fields(deploy.Worker), [WorkerConfig, RetryPolicy], {"max_batch", "max_replicas"}) == []
    kafka = deploy.Kafka()
    topics = (kafka.requests.name, kafka.results.name, kafka.dlq.name)
    assert topics == tuple(default_of(WorkerConfig, f) for f in ("input_topic", "output_topic", "dlq_topic"))
