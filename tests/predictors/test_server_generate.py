"""The packaged SmolLM2 model behind a real server process, called with real clients."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.launch import PredictorProcess
from tests.conftest import start_predictor
from tests.predictors.metrics import batch_histogram, scrape, value

pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Kafka is a distributed",
    "The three primary colors are",
    "A good name for a cat is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
]


async def v1(server: PredictorProcess, body: dict, status: int = 200) -> dict:
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        response = await client.post("/v1/models/smol:predict", json=body)
    assert response.status_code == status, response.text
    return response.json()


def prompt_body(prompt: str, **parameters: object) -> dict:
    return {"instances": [{"prompt": prompt}], "parameters": {"max_new_tokens": 12, **parameters}}


async def test_v1_prompt_and_chat(generate_server: PredictorProcess) -> None:
    body = {
        "instances": [{"prompt": "The capital of France is"},
                      {"messages": [{"role": "user", "content": "What is the capital of France?"}]}],
        "parameters": {"max_new_tokens": 16},
    }
    prompt, chat = (await v1(generate_server, body))["predictions"]
    assert "Paris" in prompt["text"] and "Paris" in chat["text"]
    assert chat["usage"]["prompt_tokens"] > prompt["usage"]["prompt_tokens"]  # the chat template adds tokens
    assert 0 < prompt["usage"]["completion_tokens"] <= 16
    assert {prompt["finish_reason"], chat["finish_reason"]} <= {"stop", "length"}


async def test_limits_and_stop_strings(generate_server: PredictorProcess) -> None:
    [free] = (await v1(generate_server, prompt_body("Count: one, two, three, four,", max_new_tokens=20)))["predictions"]
    assert free["finish_reason"] == "length" and free["usage"]["completion_tokens"] == 20
    stop = free["text"].strip()[:3]
    [stopped] = (await v1(generate_server, prompt_body("Count: one, two, three, four,", max_new_tokens=20,
                                                       stop=[stop])))["predictions"]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == free["text"][: free["text"].find(stop)]


async def test_v2_rest_and_grpc(generate_server: PredictorProcess) -> None:
    def request() -> InferRequest:
        tensor = InferInput("text", [2], "BYTES")
        tensor.set_data_from_numpy(np.array(PROMPTS[:2], dtype=object), binary_data=False)
        return InferRequest(model_name="smol", infer_inputs=[tensor], parameters={"max_new_tokens": 8})

    rest = InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc_client = InferenceGRPCClient(generate_server.grpc_target)
    try:
        by_rest = (await rest.infer(generate_server.url, request(), model_name="smol")).outputs[0]
        by_grpc = (await grpc_client.infer(request())).outputs[0]
    finally:
        await rest.close()
        await grpc_client.close()
    assert by_rest.datatype == "BYTES" and by_rest.shape == [2]
    texts = [t.decode() if isinstance(t, bytes) else t for t in by_grpc.as_numpy().tolist()]
    assert texts == list(by_rest.data)
    assert "Paris" in texts[0]


async def test_openai_completions_chat_and_stream(generate_server: PredictorProcess) -> None:
    client = openai.AsyncOpenAI(base_url=generate_server.url + "/openai/v1", api_key="unused")
    assert [m.id for m in (await client.models.list()).data] == ["smol"]
    completion = await client.completions.create(model="smol", prompt=PROMPTS[0], max_tokens=8, temperature=0)
    assert "Paris" in completion.choices[0].text and completion.usage.completion_tokens <= 8
    messages = [{"role": "user", "content": "Name one color."}]
    chat = await client.chat.completions.create(model="smol", messages=messages, max_tokens=24, temperature=0)
    stream = await client.chat.completions.create(
        model="smol", messages=messages, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) > 1, "the answer arrives in pieces"
    assert "".join(pieces) == chat.choices[0].message.content
    assert finish == chat.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == chat.usage.completion_tokens


async def test_openai_errors_use_openai_shapes(generate_server: PredictorProcess) -> None:
    client = openai.AsyncOpenAI(base_url=generate_server.url + "/openai/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        await client.completions.create(model="gpt-4", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="max_new_tokens: 5000 exceeds the limit of 128"):
        await client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=5000)
    with pytest.raises(openai.BadRequestError, match="does not support embeddings"):
        await client.embeddings.create(model="smol", input="x")


def _first_tokens(server: PredictorProcess) -> float:
    return value(scrape(server.url), "kzero_time_to_first_token_seconds_count", model="smol") or 0.0


async def test_concurrent_generations_share_the_running_batch_and_keep_their_answers(
    generate_server: PredictorProcess,
) -> None:
    """The default engine is the continuous one: each request joins the running batch (its first token is
    counted once), and greedy answers do not depend on the rows beside them."""
    alone = [(await v1(generate_server, prompt_body(p)))["predictions"][0]["text"] for p in PROMPTS[:4]]
    before = _first_tokens(generate_server)
    together = await asyncio.gather(*(v1(generate_server, prompt_body(p)) for p in PROMPTS))
    assert _first_tokens(generate_server) - before == len(PROMPTS)
    assert [r["predictions"][0]["text"] for r in together[:4]] == alone


@pytest.fixture(scope="module")
def static_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[PredictorProcess]:
    args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--cache_dir", str(model_cache),
            "--engine", "static", "--max_batch_size", "16", "--max_batch_latency_ms", "20", "--max_new_tokens", "128"]
    server = start_predictor(tmp_path_factory, "smol", args)
    yield server
    assert server.stop() == 0


async def test_the_static_engine_batches_concurrent_generations(static_server: PredictorProcess) -> None:
    alone = [(await v1(static_server, prompt_body(p)))["predictions"][0]["text"] for p in PROMPTS[:4]]
    before = batch_histogram(static_server.url, "smol")
    together = await asyncio.gather(*(v1(static_server, prompt_body(p)) for p in PROMPTS))
    after = batch_histogram(static_server.url, "smol")
    assert after.sum - before.sum == len(PROMPTS)
    assert after.multi > before.multi
    assert [r["predictions"][0]["text"] for r in together[:4]] == alone


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"instances": [{"prompt": "a"}], "parameters": {"max_new_tokens": 129}}, "limit of 128"),
        ({"instances": [{"prompt": "a"}], "parameters": {"top_k": 5}}, "parameters.top_k: unknown field"),
        ({"instances": [{"prompt": "a"}], "parameters": {"temperature": 3}}, "parameters.temperature"),
        ({"instances": [{"messages": []}]}, "instances[0].messages"),
        ({"instances": [{"prompt": "word " * 3000}]}, "instances[0]: prompt has"),
        ({"instances": [{}]}, "instances[0]: Value error, give exactly one"),
    ],
)
async def test_bad_generation_input_is_400(generate_server: PredictorProcess, body: dict, message: str) -> None:
    assert message in (await v1(generate_server, body, status=400))["error"]


@pytest.fixture(scope="module")
def tiny_queue_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[PredictorProcess]:
    args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--cache_dir", str(model_cache),
            "--engine", "static", "--max_batch_size", "1", "--max_queue", "2"]  # the batcher's queue bound
    server = start_predictor(tmp_path_factory, "smol", args)
    yield server
    assert server.stop() == 0


async def test_queue_overflow_is_503_with_retry_after(tiny_queue_server: PredictorProcess) -> None:
    async with httpx.AsyncClient(base_url=tiny_queue_server.url, timeout=120) as client:
        responses = await asyncio.gather(*(
            client.post("/v1/models/smol:predict", json=prompt_body(p, max_new_tokens=24)) for p in PROMPTS * 2
        ))
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 503}
        shed = next(r for r in responses if r.status_code == 503)
        assert int(shed.headers["retry-after"]) > 0 and "overloaded" in shed.json()["error"]
        assert (await client.get("/v2/health/ready")).status_code == 200
    grpc_client = InferenceGRPCClient(tiny_queue_server.grpc_target)

    def request(prompt: str) -> InferRequest:
        tensor = InferInput("text", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([prompt], dtype=object), binary_data=False)
        return InferRequest(model_name="smol", infer_inputs=[tensor], parameters={"max_new_tokens": 24})

    try:
        results = await asyncio.gather(*(grpc_client.infer(request(p)) for p in PROMPTS * 2), return_exceptions=True)
    finally:
        await grpc_client.close()
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert errors and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in errors)
    assert len(errors) < len(results)
