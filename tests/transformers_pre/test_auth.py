"""The transformer with API keys: its own (callers need one) and the one it sends to keyed predictors
(``KZERO_PREDICTOR_API_KEY``), through its chain and its OpenAI relay, streamed and not."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import openai
import pytest
from kserve import InferenceGRPCClient
from kserve.protocol.infer_type import InferInput, InferRequest

from serving.launch import PredictorProcess
from tests.conftest import start_predictor
from tests.keyed import KEY, KEYS
from tests.tiny_models import tiny_causal_lm
from tests.transformers_pre.conftest import seed, transformer_process
from transformers_pre.__main__ import config_from_args
from transformers_pre.__main__ import main as transformer_main

RAG_KEY = "kz-rag-caller-key-0001"  # what the transformer's callers send; not a predictor key
QUESTION = "How many dimensions do the sentence vectors have?"
MESSAGES = [{"role": "user", "content": QUESTION}]


def test_the_predictor_key_is_a_secret_and_an_empty_one_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_from_args(["--predictor_host", "h:1"], {"KZERO_PREDICTOR_API_KEY": "very-secret-2",
                                                             "KZERO_API_KEYS": "very-secret-3"})
    assert config.predictor_api_key is not None and config.predictor_api_key.get_secret_value() == "very-secret-2"
    assert "very-secret" not in repr(config) and "very-secret" not in str(config)
    monkeypatch.setenv("KZERO_PREDICTOR_API_KEY", " ")
    assert transformer_main(["--predictor_host", "h:1"]) == 2
    err = capsys.readouterr().err
    assert "KZERO_PREDICTOR_API_KEY is set but holds no key" in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def auth_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    db = tmp_path_factory.mktemp("milvus-auth") / "rag.db"
    asyncio.run(seed(db))
    return db


@pytest.fixture(scope="module")
def keyed_generator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictorProcess]:
    """A tiny random chat model that requires one of ``tests.keyed.KEYS``."""
    model = tiny_causal_lm(tmp_path_factory.mktemp("tiny-lm"))
    args = ["--task", "generate", "--model_dir", str(model), "--max_new_tokens", "64"]
    server = start_predictor(tmp_path_factory, "smol", args, env={"KZERO_API_KEYS": ",".join(KEYS)})
    yield server
    assert server.stop() == 0


Start = Callable[[str, dict[str, str]], PredictorProcess]


@pytest.fixture
def start_transformer(
    tmp_path_factory: pytest.TempPathFactory, auth_db: Path, keyed_generator: PredictorProcess,
) -> Iterator[Start]:
    """One transformer at a time: Milvus Lite opens a file from one process only."""
    started: list[PredictorProcess] = []

    def start(embedder: str, env: dict[str, str]) -> PredictorProcess:
        # One passage: the tiny model's character tokens must fit its 512 positions.
        server = transformer_process(tmp_path_factory, auth_db, f"127.0.0.1:{keyed_generator.http_port}",
                                     "--embedder", embedder, "--top_k", "1", env=env)
        started.append(server)
        server.wait_ready()
        return server

    yield start
    for server in started:
        assert server.stop() == 0


@pytest.mark.slow
async def test_with_the_key_the_transformer_reaches_keyed_predictors(
    start_transformer: Start, keyed_embed_server: PredictorProcess,
) -> None:
    # Its embedder is keyed too: the probe at start-up already needed the key.
    rag = start_transformer(f"{keyed_embed_server.url}#minilm",
                            {"KZERO_PREDICTOR_API_KEY": KEY, "KZERO_API_KEYS": RAG_KEY})
    body = {"instances": [{"question": QUESTION}]}
    async with httpx.AsyncClient(base_url=rag.url, timeout=180) as client:
        assert (await client.post("/v1/models/rag:predict", json=body)).status_code == 401
        # The predictors' key is not the transformer's: a caller cannot use it here.
        assert (await client.post("/v1/models/rag:predict", json=body,
                                  headers={"Authorization": f"Bearer {KEY}"})).status_code == 401
        answered = await client.post("/v1/models/rag:predict", json=body,
                                     headers={"Authorization": f"Bearer {RAG_KEY}"})
    assert answered.status_code == 200, answered.text
    [prediction] = answered.json()["predictions"]
    assert prediction["sources"][0]["doc_id"] == "embedding-model" and prediction["usage"]["completion_tokens"] > 0

    tensor = InferInput("question", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([QUESTION], dtype=object), binary_data=False)
    grpc_client = InferenceGRPCClient(rag.grpc_target)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await grpc_client.infer(InferRequest(model_name="rag", infer_inputs=[tensor]))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await grpc_client.infer(InferRequest(model_name="rag", infer_inputs=[tensor]),
                                        headers=(("authorization", f"Bearer {RAG_KEY}"),))
    finally:
        await grpc_client.close()
    assert reply.outputs[0].name == "answer"

    async with openai.AsyncOpenAI(base_url=rag.url + "/openai/v1", api_key=KEY, max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.chat.completions.create(model="rag", messages=MESSAGES, max_tokens=8)
    async with openai.AsyncOpenAI(base_url=rag.url + "/openai/v1", api_key=RAG_KEY, max_retries=0) as oa:
        whole = await oa.chat.completions.create(model="rag", messages=MESSAGES, max_tokens=16, temperature=0)
        assert whole.usage is not None and whole.usage.completion_tokens > 0  # the relay got through
        stream = await oa.chat.completions.create(model="rag", messages=MESSAGES, max_tokens=16, temperature=0,
                                                  stream=True)
        chunks = [chunk async for chunk in stream]
    assert any(getattr(c, "sources", None) for c in chunks)  # the last chunk: the relay's stream ended well
    assert not any(getattr(c, "error", None) for c in chunks)


@pytest.mark.slow
async def test_without_the_key_the_transformer_answers_503_naming_the_refusal(
    start_transformer: Start, embed_server: PredictorProcess, keyed_generator: PredictorProcess,
) -> None:
    # An unkeyed embedder, so that only the generator refuses: the chain runs up to it.
    rag = start_transformer(f"{embed_server.url}#minilm", {})
    refusal = f"predictor at http://127.0.0.1:{keyed_generator.http_port} refused a request without an API key (401)"
    async with httpx.AsyncClient(base_url=rag.url, timeout=180) as client:
        response = await client.post("/v1/models/rag:predict", json={"instances": [{"question": QUESTION}]})
    assert response.status_code == 503, response.text
    assert refusal in response.json()["error"] and "KZERO_PREDICTOR_API_KEY" in response.json()["error"]
    async with openai.AsyncOpenAI(base_url=rag.url + "/openai/v1", api_key="unused", max_retries=0) as oa:
        with pytest.raises(openai.InternalServerError) as failed:
            await oa.chat.completions.create(model="rag", messages=MESSAGES, max_tokens=8)
        assert failed.value.status_code == 503 and "refused a request without an API key (401)" in str(failed.value)
        # Streamed, the refusal comes before the first byte: the same 503, not a stream with an error chunk.
        with pytest.raises(openai.InternalServerError) as failed:
            await oa.chat.completions.create(model="rag", messages=MESSAGES, max_tokens=8, stream=True)
        assert failed.value.status_code == 503 and "refused a request without an API key (401)" in str(failed.value)
