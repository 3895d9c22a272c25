"""`make demo`: both packaged models behind real predictor servers, called over v1, v2, gRPC and OpenAI.

Starts the embedding and the generation predictor on free loopback ports, sends one request of
each protocol to each, prints answers and timings, and shuts both down.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import numpy as np
import openai
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

from predictors.launch import PredictorProcess

LOGS = Path("data/demo-logs")


def v2_request(model: str, texts: list[str], **parameters: object) -> InferRequest:
    tensor = InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    return InferRequest(model_name=model, infer_inputs=[tensor], parameters=parameters or None)


async def timed(label: str, call) -> object:
    started = time.perf_counter()
    result = await call
    print(f"  {label:<28} {1000 * (time.perf_counter() - started):7.1f} ms")
    return result


async def embed_demo(server: PredictorProcess) -> None:
    texts = ["Kafka carries CloudEvents to the worker.", "KServe scales predictors to zero."]
    v1, v2 = InferenceRESTClient(RESTConfig(protocol="v1")), InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc = InferenceGRPCClient(server.grpc_target)
    oa = openai.AsyncOpenAI(base_url=server.url + "/openai/v1", api_key="unused")
    try:
        r1 = await timed("v1 :predict", v1.infer(server.url, {"instances": texts}, model_name="minilm"))
        r2 = await timed("v2 /infer", v2.infer(server.url, v2_request("minilm", texts), model_name="minilm"))
        r3 = await timed("gRPC ModelInfer", grpc.infer(v2_request("minilm", texts)))
        r4 = await timed("OpenAI /embeddings", oa.embeddings.create(model="minilm", input=texts))
    finally:
        await v1.close(), await v2.close(), await grpc.close()
    vectors = np.array(r1["predictions"])
    print(f"  v1 shape {vectors.shape}, v2 {r2.outputs[0].shape}, gRPC {r3.outputs[0].shape}, "
          f"OpenAI {len(r4.data)}x{len(r4.data[0].embedding)}; cosine(text0, text1) = {vectors[0] @ vectors[1]:.3f}")


async def generate_demo(server: PredictorProcess) -> None:
    prompt = "The capital of France is"
    v1, v2 = InferenceRESTClient(RESTConfig(protocol="v1")), InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc = InferenceGRPCClient(server.grpc_target)
    oa = openai.AsyncOpenAI(base_url=server.url + "/openai/v1", api_key="unused")
    body = {"instances": [{"messages": [{"role": "user", "content": "What is the capital of France?"}]}],
            "parameters": {"max_new_tokens": 24}}
    try:
        r1 = await timed("v1 :predict (chat)", v1.infer(server.url, body, model_name="smol"))
        r2 = await timed("v2 /infer", v2.infer(server.url, v2_request("smol", [prompt], max_new_tokens=12),
                                               model_name="smol"))
        r3 = await timed("gRPC ModelInfer", grpc.infer(v2_request("smol", [prompt], max_new_tokens=12)))
        started = time.perf_counter()
        stream = await oa.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Name three colors."}], max_tokens=32, stream=True,
            temperature=0,
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        print(f"  {'OpenAI chat (stream)':<28} {1000 * (time.perf_counter() - started):7.1f} ms")
    finally:
        await v1.close(), await v2.close(), await grpc.close()
    prediction = r1["predictions"][0]
    print(f"  v1 chat   -> {prediction['text']!r} ({prediction['finish_reason']}, {prediction['usage']})")
    print(f"  v2        -> {prompt + r2.outputs[0].data[0]!r}")
    grpc_text = r3.outputs[0].as_numpy()[0]
    print(f"  gRPC      -> {prompt + (grpc_text.decode() if isinstance(grpc_text, bytes) else grpc_text)!r}")
    print(f"  streamed  -> {''.join(pieces)!r} in {len([p for p in pieces if p])} pieces")


def main() -> int:
    LOGS.mkdir(parents=True, exist_ok=True)
    embed = PredictorProcess(["--task", "embed", "--model_id", "all-minilm-l6-v2"], model_name="minilm",
                             log_path=LOGS / "minilm.log")
    generate = PredictorProcess(["--task", "generate", "--model_id", "smollm2-135m-instruct"], model_name="smol",
                                log_path=LOGS / "smol.log")
    with embed, generate:
        print(f"starting predictors (logs in {LOGS}/) ...")
        print(f"  minilm ready in {embed.wait_ready():.1f}s at {embed.url} (gRPC {embed.grpc_target})")
        print(f"  smol   ready in {generate.wait_ready():.1f}s at {generate.url} (gRPC {generate.grpc_target})"
              " — the first start converts the GGUF file once")
        print("\nembeddings: all-MiniLM-L6-v2")
        asyncio.run(embed_demo(embed))
        print("\ngeneration: SmolLM2-135M-Instruct")
        asyncio.run(generate_demo(generate))
    print("\nboth predictors stopped cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
