"""A predictor with ``--engine continuous`` (tiny random model) behind a real server process, called
with real clients: the routes work on top of it, disconnects leave the batch, admission sheds load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from serving.launch import PredictorProcess
from tests.conftest import start_predictor
from tests.predictors.metrics import scrape, value
from tests.tiny_models import tiny_causal_lm

NAME = "tinylm"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictorProcess]:
    path = tiny_causal_lm(tmp_path_factory.mktemp("lm"), max_positions=4096)
    # A cache of 2096 tokens (131 pages of 16 tokens of 512 bytes): two rows of 1 + 1000 tokens fit, 2100 never.
    args = ["--task", "generate", "--model_dir", str(path), "--engine", "continuous", "--max_num_seqs", "2",
            "--max_queue", "2", "--kv_cache_memory_gb", "0.001", "--kv_page_size", "16", "--max_new_tokens", "2200"]
    server = start_predictor(tmp_path_factory, NAME, args)
    yield server
    assert server.stop() == 0


def metric(server: PredictorProcess, name: str, **labels: str) -> float:
    return value(scrape(server.url), name, model=NAME, **labels) or 0.0


async def until(condition, what: str) -> None:
    """Wait for the server to get there (a bound against hangs, not a performance assertion)."""
    for _ in range(3000):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never: {what}")


async def test_v1_v2_and_openai_routes_with_request_extras(server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        body = {"instances": [{"prompt": "hello"}, {"prompt": "world"}],
                "parameters": {"max_new_tokens": 9, "ignore_eos": True, "min_tokens": 2}}
        response = await client.post(f"/v1/models/{NAME}:predict", json=body)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["usage"]["completion_tokens"] for p in predictions] == [9, 9]
        assert all(p["finish_reason"] == "length" for p in predictions)
        v2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}],
              "parameters": {"max_new_tokens": 5, "ignore_eos": True}}
        response = await client.post(f"/v2/models/{NAME}/infer", json=v2)
        assert response.status_code == 200, response.text
        assert len(response.json()["outputs"][0]["data"][0]) == 5  # one character per token
        seeded = {"instances": ["hi"], "parameters": {"seed": 1, "temperature": 1.5, "max_new_tokens": 12,
                                                         "ignore_eos": True}}
        answers = [(await client.post(f"/v1/models/{NAME}:predict", json=seeded)).json()["predictions"][0]
                   for _ in range(2)]
        assert answers[0]["usage"]["completion_tokens"] == 12
        assert answers[0]["text"] == answers[1]["text"]  # a per-request seed, honoured on this engine
        response = await client.post(f"/v1/models/{NAME}:predict",
                                     json={"instances": ["hi"], "parameters": {"max_new_tokens": 2100}})
        assert response.status_code == 400 and "--kv_cache_memory_gb" in response.json()["error"]

    api = openai.AsyncOpenAI(base_url=f"{server.url}/openai/v1", api_key="none")
    stream = await api.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True, temperature=0,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})  # sampled, a special token
    # (<eos>, <pad>, <unk>: no text) could be drawn and the text be shorter than the tokens
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None and usage.completion_tokens == 6 and len(text) == 6
    completion = await api.completions.create(model=NAME, prompt="abc", max_tokens=4, extra_body={"ignore_eos": True})
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    assert completion.choices[0].finish_reason == "length"
    samples = scrape(server.url)
    for name in ("kzero_time_to_first_token_seconds_count", "kzero_time_per_output_token_seconds_count",
                 "kzero_generation_duration_seconds_count"):
        assert (value(samples, name, model=NAME) or 0) >= 4, name
    assert (value(samples, "kzero_prompt_tokens_total", model=NAME) or 0) > 0
    assert value(samples, "kzero_kv_cache_usage_ratio", model=NAME) is not None


async def test_a_cancelled_grpc_call_leaves_the_batch(server: PredictorProcess) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    cancelled_before = metric(server, "kzero_cancelled_requests_total", reason="disconnect")
    text = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"a"]))
    request = pb.ModelInferRequest(model_name=NAME, inputs=[text], parameters={
        "max_new_tokens": pb.InferParameter(int64_param=1000), "ignore_eos": pb.InferParameter(bool_param=True)})
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        await cancel_while_decoding(server, pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request))
    await left_the_batch(server, cancelled_before)


async def cancel_while_decoding(server: PredictorProcess, call: Any) -> None:
    """Cancel ``call`` (a task or a gRPC call) once its row decodes, as a client that goes away does."""
    await until(lambda: metric(server, "kzero_generation_running") == 1, "the request decodes")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call


async def left_the_batch(server: PredictorProcess, cancelled_before: float) -> None:
    await until(lambda: metric(server, "kzero_cancelled_requests_total", reason="disconnect") == cancelled_before + 1,
                "the disconnect is counted")
    await until(lambda: metric(server, "kzero_generation_running") == 0
                and metric(server, "kzero_kv_cache_usage_ratio") == 0, "its slot and blocks are free")


@pytest.mark.parametrize("route", ["v1", "openai"])
async def test_a_client_that_leaves_a_plain_json_request_takes_its_row_out(
    server: PredictorProcess, route: str,
) -> None:
    """Not streamed: nothing is written until the end, so only the connection tells the client has gone."""
    if route == "v1":
        path, body = f"/v1/models/{NAME}:predict", {"instances": ["a"],
                                                     "parameters": {"max_new_tokens": 1000, "ignore_eos": True}}
    else:
        path, body = "/openai/v1/completions", {"model": NAME, "prompt": "a", "max_tokens": 1000, "ignore_eos": True}
    cancelled_before = metric(server, "kzero_cancelled_requests_total", reason="disconnect")
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        # Cancelling the task closes the connection, as a client process that dies or times out does.
        await cancel_while_decoding(server, asyncio.ensure_future(client.post(path, json=body)))
    await left_the_batch(server, cancelled_before)
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:  # the server answers on
        response = await client.post(path, json={**body, **({"max_tokens": 3} if route == "openai" else
                                                              {"parameters": {"max_new_tokens": 3}})})
        assert response.status_code == 200, response.text
