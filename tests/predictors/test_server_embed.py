"""The packaged embedding model behind a real server process, called with real clients."""

from __future__ import annotations

import asyncio
import base64

import grpc
import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.launch import PredictorProcess
from tests.predictors.metrics import batch_histogram

pytestmark = pytest.mark.slow

TEXTS = [f"sentence {i}: kafka events drive batch inference on knative" for i in range(40)]


def v2_texts(texts: list[str]) -> InferRequest:
    tensor = InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    return InferRequest(model_name="minilm", infer_inputs=[tensor])


async def test_v1_v2_grpc_and_openai_agree(embed_server: PredictorProcess) -> None:
    texts = ["The broker stores events.", "A predictor answers requests."]
    v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
    v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc_client = InferenceGRPCClient(embed_server.grpc_target)
    try:
        by_v1 = np.array((await v1.infer(embed_server.url, {"instances": texts}, model_name="minilm"))["predictions"])
        by_v2 = (await v2.infer(embed_server.url, v2_texts(texts), model_name="minilm")).outputs[0].as_numpy()
        by_grpc = (await grpc_client.infer(v2_texts(texts))).outputs[0].as_numpy()
    finally:
        await v1.close()
        await v2.close()
        await grpc_client.close()
    oa = openai.AsyncOpenAI(base_url=embed_server.url + "/openai/v1", api_key="unused")
    by_openai = np.array([d.embedding for d in (await oa.embeddings.create(model="minilm", input=texts)).data])
    assert by_v1.shape == (2, 384)
    for other in (by_v2, by_grpc, by_openai):
        np.testing.assert_allclose(other, by_v1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(by_v1, axis=1), 1.0, atol=1e-4)
    # Related sentences score higher than unrelated ones: a real model, not random weights.
    query = np.array((await _v1(embed_server, ["Where are events stored?"]))[0])
    assert query @ by_v1[0] > query @ by_v1[1]


async def _v1(server: PredictorProcess, texts: list[str]) -> list[list[float]]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        response = await client.post("/v1/models/minilm:predict", json={"instances": texts})
    response.raise_for_status()
    return response.json()["predictions"]


async def test_concurrent_requests_form_batches_and_each_gets_its_own_answer(embed_server: PredictorProcess) -> None:
    reference = [np.array((await _v1(embed_server, [t]))[0]) for t in TEXTS[:8]]
    before = batch_histogram(embed_server.url, "minilm")
    answers = await asyncio.gather(*(_v1(embed_server, [t]) for t in TEXTS))
    after = batch_histogram(embed_server.url, "minilm")
    batches = after.count - before.count
    assert after.sum - before.sum == len(TEXTS)
    assert batches < len(TEXTS), "concurrent requests should share forward passes"
    assert after.multi > before.multi
    for text_index, ref in enumerate(reference):
        np.testing.assert_allclose(np.array(answers[text_index][0]), ref, atol=1e-4)


async def test_openai_base64_encoding_matches_floats(embed_server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=embed_server.url + "/openai/v1") as client:
        floats = (await client.post("/embeddings", json={"model": "minilm", "input": "hi"})).json()
        packed = (await client.post("/embeddings", json={"model": "minilm", "input": ["hi"],
                                                          "encoding_format": "base64"})).json()
    decoded = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats["data"][0]["embedding"], atol=1e-7)
    assert floats["usage"]["prompt_tokens"] == 3  # [CLS] hi [SEP]


async def test_openai_embeddings_give_each_input_token_count_only_when_asked(embed_server: PredictorProcess) -> None:
    """kzero's ``kzero`` body field (the worker asks with it when it merges requests into one call): the
    official client sends it as ``extra_body`` and keeps the reply's extra field; a plain request's reply
    has exactly OpenAI's keys."""
    oa = openai.AsyncOpenAI(base_url=embed_server.url + "/openai/v1", api_key="unused")
    texts = ["hi", "events flow through kafka to the predictor"]
    asked = await oa.embeddings.create(model="minilm", input=texts, extra_body={"kzero": {"input_tokens": True}})
    counts = (asked.model_extra or {})["kzero"]["input_tokens"]
    assert counts[0] == 3 and counts[1] > 3 and sum(counts) == asked.usage.prompt_tokens == asked.usage.total_tokens
    async with httpx.AsyncClient(base_url=embed_server.url + "/openai/v1") as client:
        plain = (await client.post("/embeddings", json={"model": "minilm", "input": texts})).json()
    assert list(plain) == ["object", "data", "model", "usage"]
    assert plain["usage"]["prompt_tokens"] == sum(counts)


BAD_REQUESTS = [
    ("/v1/models/minilm:predict", b"{not json", 400, "body: not valid JSON"),
    ("/v1/models/minilm:predict", {"instances": []}, 400, "instances: must not be empty"),
    ("/v1/models/minilm:predict", {"instances": "text"}, 400, "instances"),
    ("/v1/models/minilm:predict", {"instances": [3]}, 400, "instances[0]: expected a string"),
    ("/v1/models/minilm:predict", {"instances": ["a"] * 300}, 400, "300 instances exceed the limit of 256"),
    ("/v1/models/minilm:predict", {"instances": ["word " * 400]}, 400, "instances[0]: 402 tokens exceed"),
    ("/v1/models/minilm:predict", {"instances": ["a"], "parameters": {"x": 1}}, 400, "parameters.x"),
    ("/v1/models/nope:predict", {"instances": ["a"]}, 404, "nope"),
    ("/v2/models/minilm/infer", {"inputs": {"name": "text"}}, 400, "inputs"),
    ("/v2/models/minilm/infer", {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [3], "data": ["a"]}]},
     400, "inputs.text"),
    ("/v2/models/minilm/infer", {"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["a"]}]},
     400, "expected an input named 'text'"),
    ("/openai/v1/embeddings", {"model": "minilm", "input": []}, 400, "input: must not be empty"),
    ("/openai/v1/embeddings", {"model": "minilm", "input": "a", "dimensions": 8}, 400, "384 dimensions"),
    ("/openai/v1/embeddings", {"model": "other", "input": "a"}, 404, "'other' is not served"),
    ("/openai/v1/embeddings", {"model": "minilm", "input": "a", "colour": "red"}, 400, "colour: unknown field"),
    ("/openai/v1/embeddings", {"model": "minilm", "input": "a", "kzero": {"colour": 1}}, 400,
     "kzero.colour: unknown field"),
    ("/openai/v1/embeddings", {"model": "minilm", "input": ["a", "b"], "kzero": {"traceparents": [None]}}, 400,
     "kzero.traceparents: 1 entries for 2 instances"),
    ("/openai/v1/chat/completions", {"model": "minilm", "messages": [{"role": "user", "content": "a"}]},
     400, "does not support chat completions"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), BAD_REQUESTS)
async def test_bad_input_is_a_4xx_naming_the_problem(
    embed_server: PredictorProcess, path: str, body: object, status: int, message: str
) -> None:
    async with httpx.AsyncClient(base_url=embed_server.url) as client:
        if isinstance(body, bytes):
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in (error["message"] if isinstance(error, dict) else error)


async def test_grpc_errors_map_to_status_codes(embed_server: PredictorProcess) -> None:
    client = InferenceGRPCClient(embed_server.grpc_target)
    bad = v2_texts(["a"])
    bad.inputs[0]._name = "wrong"
    unknown = v2_texts(["a"])
    unknown.model_name = "nope"
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(bad)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected an input named 'text'" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.infer(unknown)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await client.close()


async def test_model_metadata_and_readiness_routes(embed_server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=embed_server.url) as client:
        meta = (await client.get("/v2/models/minilm")).json()
        ready = await client.get("/v2/models/minilm/ready")
        v1_ready = await client.get("/v1/models/minilm")
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert ready.status_code == 200 and v1_ready.json()["ready"] is True
