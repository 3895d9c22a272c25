"""GPU checks: skipped without CUDA, run on the GPU machine (H100/H200)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from predictors.device import resolve_placement
from predictors.engines.embed import EmbedEngine
from serving.packaged import resolve_packaged
from tests.conftest import start_predictor
from tests.predictors.metrics import batch_histogram

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_auto_placement_picks_cuda_with_half_precision() -> None:
    import torch

    placement = resolve_placement("auto", "auto")
    assert placement.is_cuda and placement.dtype in (torch.bfloat16, torch.float16)


def test_gpu_embeddings_match_cpu() -> None:
    path, _ = resolve_packaged("all-minilm-l6-v2").location()
    texts = ["GPU and CPU agree", "within half-precision tolerance"]
    cpu = EmbedEngine.load(path, resolve_placement("cpu", "float32")).run_batch(texts)
    gpu = EmbedEngine.load(path, resolve_placement("cuda", "auto")).run_batch(texts)
    for a, b in zip(cpu, gpu, strict=True):
        assert float(np.dot(a, b)) > 0.99


async def test_gpu_server_batches_generation(tmp_path_factory: pytest.TempPathFactory, model_cache) -> None:
    args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--device", "cuda",
            "--cache_dir", str(model_cache), "--max_batch_size", "32", "--max_batch_latency_ms", "10"]
    server = start_predictor(tmp_path_factory, "smol", args)
    try:
        body = {"instances": [{"prompt": "The capital of France is"}], "parameters": {"max_new_tokens": 8}}
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            before = batch_histogram(server.url, "smol")
            responses = await asyncio.gather(*(client.post("/v1/models/smol:predict", json=body) for _ in range(32)))
        assert all(r.status_code == 200 for r in responses)
        assert all("Paris" in r.json()["predictions"][0]["text"] for r in responses)
        assert batch_histogram(server.url, "smol").multi > before.multi
    finally:
        assert server.stop() == 0


async def test_gpu_continuous_engine_serves_64_concurrent_streams(
    tmp_path_factory: pytest.TempPathFactory, model_cache
) -> None:
    """The CUDA path of ``--engine continuous``: 64 requests share the running batch and each gets its length."""
    args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--device", "cuda", "--engine", "continuous",
            "--cache_dir", str(model_cache), "--max_num_seqs", "64", "--kv_cache_memory_gb", "2"]
    server = start_predictor(tmp_path_factory, "smol", args)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            bodies = [{"instances": [{"prompt": "The capital of France is"}],
                       "parameters": {"max_new_tokens": 8 + i, "ignore_eos": True}} for i in range(64)]
            responses = await asyncio.gather(*(client.post("/v1/models/smol:predict", json=b) for b in bodies))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200][:1]
        counts = [r.json()["predictions"][0]["usage"]["completion_tokens"] for r in responses]
        assert counts == [8 + i for i in range(64)]
        assert "Paris" in responses[0].json()["predictions"][0]["text"]
    finally:
        assert server.stop() == 0
