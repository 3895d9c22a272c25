"""Task adapters: wire formats in and out, and every bad input named by its field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.infer_type import InferInput, InferRequest

from predictors.config import EngineConfig, LimitsConfig
from predictors.device import resolve_placement
from predictors.tasks.embed import EmbedTask
from predictors.tasks.generate import GenerateTask
from serving.errors import InvalidInput
from tests.tiny_models import tiny_causal_lm, tiny_sentence_transformer

LIMITS = LimitsConfig(max_instances=4, max_input_tokens=40, max_new_tokens=30, default_max_new_tokens=8)


@pytest.fixture(scope="module")
def generate(tmp_path_factory: pytest.TempPathFactory) -> GenerateTask:
    # The wire formats around the static engine's run_batch (the continuous one: tests/predictors/test_continuous.py).
    return GenerateTask.load(tiny_causal_lm(tmp_path_factory.mktemp("lm")), resolve_placement("cpu", "auto"), LIMITS,
                             EngineConfig(engine="static"))


@pytest.fixture(scope="module")
def embed(tmp_path_factory: pytest.TempPathFactory) -> EmbedTask:
    path = tiny_sentence_transformer(tmp_path_factory.mktemp("st"))
    return EmbedTask.load(path, resolve_placement("cpu", "auto"), LIMITS)


def v2_request(values: list[Any], name: str = "text", datatype: str = "BYTES", **parameters: Any) -> InferRequest:
    tensor = InferInput(name, [len(values)], datatype)
    tensor.set_data_from_numpy(np.array(values, dtype=object if datatype == "BYTES" else np.float32), False)
    return InferRequest(model_name="m", infer_inputs=[tensor], request_id="r1", parameters=parameters or None)


def test_generate_v1_roundtrip(generate: GenerateTask) -> None:
    body = {
        "instances": [{"prompt": "hello"}, {"messages": [{"role": "user", "content": "hi"}]}, "plain string"],
        "parameters": {"max_new_tokens": 6, "stop": ["zz"]},
    }
    requests = generate.from_v1(body)
    assert [r.params.max_new_tokens for r in requests] == [6, 6, 6]
    assert requests[0].params.stop == ("zz",)
    out = generate.to_v1(generate.engine.run_batch(requests))
    first = out["predictions"][0]
    assert set(first) == {"text", "finish_reason", "usage"}
    assert first["usage"]["prompt_tokens"] == 5 and first["usage"]["completion_tokens"] <= 6


def test_generate_default_max_new_tokens(generate: GenerateTask) -> None:
    [req] = generate.from_v1({"instances": [{"prompt": "a"}]})
    assert req.params.max_new_tokens == LIMITS.default_max_new_tokens and req.params.greedy


@pytest.mark.parametrize(
    ("body", "field", "problem"),
    [
        ({}, "instances", "required"),
        ({"instances": {}}, "instances", "expected a list"),
        ({"instances": []}, "instances", "must not be empty"),
        ({"instances": [{"prompt": "a"}] * 5}, "instances", "exceed the limit of 4"),
        ({"instances": [{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}]},
         "instances[0]", "exactly one"),
        ({"instances": [{"prompt": "a", "colour": 1}]}, "instances[0].colour", "unknown field"),
        ({"instances": [{"prompt": 5}]}, "instances[0].prompt", "string"),
        ({"instances": [{"messages": [{"role": "robot", "content": "b"}]}]}, "instances[0].messages[0].role", ""),
        ({"instances": [{"prompt": ""}]}, "instances[0].prompt", "must not be empty"),
        ({"instances": [{"prompt": "x" * 41}]}, "instances[0]", "41 tokens"),
        ({"instances": ["a"], "parameters": {"max_new_tokens": 31}}, "parameters.max_new_tokens", "limit of 30"),
        ({"instances": ["a"], "parameters": {"max_new_tokens": 0}}, "parameters.max_new_tokens", "greater than"),
        ({"instances": ["a"], "parameters": {"temperature": "hot"}}, "parameters.temperature", "number"),
        ({"instances": ["a"], "parameters": {"beam_width": 3}}, "parameters.beam_width", "unknown field"),
        ({"instances": ["a"], "parameters": {"stop": ["a", "b", "c", "d", "e"]}}, "parameters", "at most 4"),
        ({"instances": ["a"], "parameters": []}, "parameters", "JSON object"),
        ([1, 2], "body", "JSON object"),
    ],
)
def test_generate_v1_bad_input_names_the_field(generate: GenerateTask, body: Any, field: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        generate.from_v1(body)
    assert err.value.field == field
    assert problem in err.value.problem


def test_generate_v2_with_grpc_parameters(generate: GenerateTask) -> None:
    grpc_params = {"max_new_tokens": pb.InferParameter(int64_param=3), "stop": pb.InferParameter(string_param="zz")}
    request = v2_request(["hello", "world"])
    request.parameters = grpc_params
    requests = generate.from_v2(request)
    assert [(r.params.max_new_tokens, r.params.stop) for r in requests] == [(3, ("zz",))] * 2
    response = generate.to_v2(generate.engine.run_batch(requests), request)
    [output] = response.outputs
    assert output.name == "text" and output.datatype == "BYTES" and output.shape == [2]


def test_embed_v1_and_v2(embed: EmbedTask) -> None:
    texts = embed.from_v1({"instances": ["one", {"text": "two"}]})
    assert texts == ["one", "two"]
    vectors = embed.engine.run_batch(texts)
    assert len(embed.to_v1(vectors)["predictions"][1]) == embed.engine.dimension
    request = v2_request(["one", "two", "three"])
    response = embed.to_v2(embed.engine.run_batch(embed.from_v2(request)), request)
    assert response.outputs[0].shape == [3, embed.engine.dimension] and response.outputs[0].datatype == "FP32"
    assert response.id == "r1"


@pytest.mark.parametrize(
    ("request_", "field", "problem"),
    [
        (v2_request(["a"], name="txt"), "inputs", "named 'text'"),
        (v2_request([1.0], datatype="FP32"), "inputs.text.datatype", "BYTES"),
        (v2_request([""]), "inputs.text[0]", "must not be empty"),
        (v2_request(["a"] * 5), "inputs.text", "limit of 4"),
        (v2_request(["y" * 65]), "inputs.text[0]", "65 tokens exceed"),
    ],
)
def test_embed_v2_bad_input_names_the_field(embed: EmbedTask, request_: InferRequest, field: str, problem: str) -> None:
    with pytest.raises(InvalidInput) as err:
        embed.from_v2(request_)
    assert err.value.field == field and problem in err.value.problem


def test_embed_rejects_parameters_and_non_strings(embed: EmbedTask) -> None:
    with pytest.raises(InvalidInput, match=r"parameters.normalize: unknown parameter"):
        embed.from_v1({"instances": ["a"], "parameters": {"normalize": True}})
    with pytest.raises(InvalidInput, match=r"instances\[1\]: expected a string, got dict"):
        embed.from_v1({"instances": ["a", {"txt": "b"}]})


def test_embed_checks_only_short_text_requests_on_the_event_loop(embed: EmbedTask, generate: GenerateTask) -> None:
    limit = min(embed.engine.max_tokens, LIMITS.max_input_tokens)
    short = "x" * ((limit - 4) // 4)  # four UTF-8 bytes per character at most: never tokenized
    assert embed.cheap_v1({"instances": [short, short]})
    assert not embed.cheap_v1({"instances": [short + "x"]})  # may need the tokenizer: off the loop
    assert not embed.cheap_v1({"instances": [short] * 65})
    assert not embed.cheap_v1({"instances": [{"text": short}]})
    for bad in ([short], short, None, {"instances": short}):
        assert not embed.cheap_v1(bad)  # type: ignore[arg-type]  # from_v1 names the problem, in a thread
    assert not generate.cheap_v1({"instances": ["hi"]})
