"""Triton's own clients (tritonclient http and grpc) against the embed and generate predictors and
the RAG transformer: JSON and binary tensors on REST, raw tensors on gRPC, metadata, errors.

``tritonclient.grpc`` runs in a child process (tests/serving/triton_grpc_child.py): its protos
and KServe's cannot be loaded in one process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from serving.launch import PredictorProcess

pytestmark = pytest.mark.slow

TEXTS = ["The broker stores events.", "A predictor answers requests.", "Scale to zero when idle."]
PROMPT = "The capital of France is"


def http_text(name: str, texts: list[str], binary: bool) -> triton_http.InferInput:
    tensor = triton_http.InferInput(name, [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), binary_data=binary)
    return tensor


def triton_grpc(server: PredictorProcess, *calls: dict[str, Any]) -> list[dict[str, Any]]:
    """Results of ``calls`` made with tritonclient.grpc (see triton_grpc_child.py for their shape)."""
    child = subprocess.run(
        [sys.executable, "-m", "tests.serving.triton_grpc_child"], cwd=Path(__file__).parents[2],
        input=json.dumps({"target": server.grpc_target, "calls": list(calls)}), capture_output=True, text=True,
        timeout=600, check=False,
    )
    assert child.returncode == 0, child.stderr
    return list(json.loads(child.stdout))


def grpc_infer(model: str, name: str, values: list[Any], datatype: str = "BYTES", **extra: Any) -> dict[str, Any]:
    return {"op": "infer", "model": model, "inputs": [{"name": name, "datatype": datatype, "values": values}],
            **extra}


def v1(server: PredictorProcess, body: dict[str, Any]) -> list[Any]:
    response = httpx.post(f"{server.url}/v1/models/{server.model_name}:predict", json=body, timeout=300)
    response.raise_for_status()
    return list(response.json()["predictions"])


def decoded(values: np.ndarray) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1).tolist()]


@pytest.mark.parametrize(
    ("binary_in", "binary_out"), [(False, False), (True, False), (False, True), (True, True), (True, None)]
)
def test_http_embeddings_in_json_and_binary_match_v1(
    embed_server: PredictorProcess, binary_in: bool, binary_out: bool | None
) -> None:
    expected = np.array(v1(embed_server, {"instances": TEXTS}))
    client = triton_http.InferenceServerClient(f"127.0.0.1:{embed_server.http_port}")
    try:
        # binary_out None: no outputs named, so tritonclient asks for all of them in binary.
        outputs = None if binary_out is None else [triton_http.InferRequestedOutput("embedding", binary_out)]
        result = client.infer("minilm", [http_text("text", TEXTS, binary_in)], outputs=outputs)
    finally:
        client.close()
    [output] = result.get_response()["outputs"]
    assert ("data" in output) == (binary_out is False)  # JSON only when asked for
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (3, 384) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, expected, atol=1e-5)


def test_grpc_embeddings_are_raw_and_match_v1(embed_server: PredictorProcess) -> None:
    expected = np.array(v1(embed_server, {"instances": TEXTS}))
    [reply] = triton_grpc(embed_server, grpc_infer("minilm", "text", TEXTS, request_id="r7"))
    assert reply["id"] == "r7" and reply["raw_output_contents"] == 1 and reply["contents"] == [False]
    embedding = np.array(reply["outputs"]["embedding"])
    assert embedding.shape == (3, 384)
    np.testing.assert_allclose(embedding, expected, atol=1e-5)


def test_readiness_and_metadata_calls(embed_server: PredictorProcess) -> None:
    http = triton_http.InferenceServerClient(f"127.0.0.1:{embed_server.http_port}")
    try:
        assert http.is_server_live() and http.is_server_ready() and http.is_model_ready("minilm")
        by_http = http.get_model_metadata("minilm")
    finally:
        http.close()
    ready, by_grpc = triton_grpc(embed_server, {"op": "ready", "model": "minilm"},
                                 {"op": "metadata", "model": "minilm"})
    assert ready == {"live": True, "ready": True, "model_ready": True}
    assert by_http["name"] == by_grpc["name"] == "minilm"
    assert by_http["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    assert by_grpc["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": ["-1"]}]  # int64 in JSON is a string


def test_generate_text_with_max_new_tokens_passed_the_triton_way(generate_server: PredictorProcess) -> None:
    # Without max_new_tokens (default 128) the text would run on past these three tokens.
    short = v1(generate_server, {"instances": [PROMPT], "parameters": {"max_new_tokens": 3}})[0]
    assert short["usage"]["completion_tokens"] == 3 and short["finish_reason"] == "length"
    http = triton_http.InferenceServerClient(f"127.0.0.1:{generate_server.http_port}", network_timeout=300)
    texts = {}
    try:
        for binary in (False, True):
            result = http.infer("smol", [http_text("text", [PROMPT], binary)], parameters={"max_new_tokens": 3},
                                outputs=[triton_http.InferRequestedOutput("text", binary_data=binary)])
            texts[f"http binary={binary}"] = decoded(result.as_numpy("text"))
    finally:
        http.close()
    [by_grpc] = triton_grpc(generate_server, grpc_infer("smol", "text", [PROMPT], parameters={"max_new_tokens": 3}))
    texts["grpc"] = by_grpc["outputs"]["text"]
    assert texts == {way: [short["text"]] for way in texts}


def test_transformer_answers_with_sources_over_http_and_grpc(rag_server: PredictorProcess) -> None:
    question = ["Which protocol uses protobuf over HTTP/2?"]
    http = triton_http.InferenceServerClient(f"127.0.0.1:{rag_server.http_port}", network_timeout=300)
    try:
        # One output in binary, one in JSON: the per-output choice Triton's clients make.
        outputs = [triton_http.InferRequestedOutput("answer", binary_data=True),
                   triton_http.InferRequestedOutput("sources", binary_data=False)]
        result = http.infer("rag", [http_text("question", question, True)], outputs=outputs)
    finally:
        http.close()
    assert ["data" in o for o in result.get_response()["outputs"]] == [False, True]
    by_http = {name: decoded(result.as_numpy(name)) for name in ("answer", "sources")}
    [by_grpc] = triton_grpc(rag_server, grpc_infer("rag", "question", question))
    assert by_grpc["raw_output_contents"] == 3  # answer, sources and mode (generative or extractive)
    assert by_grpc["outputs"]["mode"][0] in ("generative", "extractive")
    for outputs_ in (by_http, by_grpc["outputs"]):
        [answer], [sources] = outputs_["answer"], outputs_["sources"]
        assert answer.strip() and json.loads(sources)[0]["doc_id"] == "grpc"


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        (("text", "FP32"), "inputs.text.datatype: expected BYTES, got FP32"),
        (("words", "BYTES"), "inputs: expected an input named 'text' (found: words)"),
    ],
)
def test_bad_input_is_a_clean_error_through_both_clients(
    embed_server: PredictorProcess, tensor: tuple[str, str], message: str
) -> None:
    name, datatype = tensor
    values: list[Any] = [1.0] if datatype == "FP32" else ["a"]
    http = triton_http.InferenceServerClient(f"127.0.0.1:{embed_server.http_port}")
    try:
        for binary in (False, True):
            by_http = triton_http.InferInput(name, [1], datatype)
            by_http.set_data_from_numpy(np.array(values, dtype=np.float32 if datatype == "FP32" else object),
                                        binary_data=binary)
            with pytest.raises(InferenceServerException) as err:
                http.infer("minilm", [by_http])
            assert err.value.status() == "400" and message in err.value.message()
    finally:
        http.close()
    [by_grpc] = triton_grpc(embed_server, grpc_infer("minilm", name, values, datatype))
    assert by_grpc["error"]["status"] == "StatusCode.INVALID_ARGUMENT" and message in by_grpc["error"]["message"]

SHORT_HEADER = json.dumps(
    {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}
).encode()


@pytest.mark.parametrize(
    ("content", "headers", "message"),
    [
        (b'{"inputs": [{"name": "text"', {}, "body: not valid JSON"),
        (b'{"inputs": []}', {"inference-header-content-length": "-1"}, "Inference-Header-Content-Length"),
        (SHORT_HEADER + b"\x01\x00\x00\x00a", {"inference-header-content-length": str(len(SHORT_HEADER))},
         "9 bytes, but 5 bytes follow"),
        (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],'
         b' "outputs": [{"name": "vector"}]}', {}, "vector"),
    ],
)
def test_malformed_v2_bodies_are_400_naming_the_problem(
    embed_server: PredictorProcess, content: bytes, headers: dict[str, str], message: str
) -> None:
    response = httpx.post(f"{embed_server.url}/v2/models/minilm/infer", content=content,
                          headers={"content-type": "application/octet-stream", **headers}, timeout=60)
    assert response.status_code == 400 and message in response.json()["error"], response.text
