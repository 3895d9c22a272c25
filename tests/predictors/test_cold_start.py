"""Honest readiness across a real load: listen at once, ready only when loaded, wait or 503."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serving.launch import PredictorProcess
from tests.conftest import start_predictor
from tests.predictors.metrics import scrape, value

pytestmark = pytest.mark.slow

GENERATE = ["--task", "generate", "--model_id", "smollm2-135m-instruct"]
BODY = {"instances": [{"prompt": "The capital of France is"}], "parameters": {"max_new_tokens": 4}}


async def test_first_start_converts_gguf_and_requests_wait_for_the_load(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    # A wait deadline past any conversion: on a busy 2-core machine it took over 30 s (the default).
    args = [*GENERATE, "--cache_dir", str(cache), "--load_wait_s", "600"]
    server = start_predictor(tmp_path_factory, "smol", args, ready=False)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=300) as client:
            assert (await client.get("/v2/health/live")).status_code == 200
            assert (await client.get("/v2/health/ready")).status_code == 503
            assert (await client.get("/v2/models/smol/ready")).status_code == 503
            sent = time.monotonic()
            response = await client.post("/v1/models/smol:predict", json=BODY)
            waited = time.monotonic() - sent
            assert response.status_code == 200, response.text
            assert "Paris" in response.json()["predictions"][0]["text"]
            assert (await client.get("/v2/health/ready")).status_code == 200
        assert waited > 1.0, "the request arrived during the load and waited for it"
        samples = scrape(server.url)
        assert (value(samples, "kzero_cold_start_seconds", phase="convert") or 0) > 0
        assert value(samples, "kzero_cold_start_seconds", phase="cache_lookup") is None
        assert value(samples, "kzero_model_ready", model="smol") == 1
    finally:
        assert server.stop() == 0
    [converted] = (cache / "gguf").iterdir()
    assert (converted / "model.safetensors").is_file() and (converted / ".kzero-complete").is_file()

    # Second start: from the cache, and a request with a short wait deadline gets 503 + Retry-After.
    args = [*GENERATE, "--cache_dir", str(cache), "--load_wait_s", "0.2"]
    server = start_predictor(tmp_path_factory, "smol", args, ready=False)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            early = await client.post("/v1/models/smol:predict", json=BODY)
            assert early.status_code == 503
            assert early.headers["retry-after"] == "5" and "still loading" in early.json()["error"]
            server.wait_ready()
            assert (await client.post("/v1/models/smol:predict", json=BODY)).status_code == 200
        samples = scrape(server.url)
        assert value(samples, "kzero_cold_start_seconds", phase="convert") is None
        assert (value(samples, "kzero_cold_start_seconds", phase="cache_lookup") or 1) < 1.0
        assert (value(samples, "kzero_cold_start_seconds", phase="import") or 0) > 0
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "embed", "--model_id", "all-minilm-l6-v2", "--workers", "2"], "kserve#3662"),
        (["--task", "embed", "--model_id", "no-such-model"], "not a packaged model"),
        (["--task", "generate", "--model_id", "all-minilm-l6-v2"], "is a embed model, not generate"),
        (["--task", "embed", "--model_id", "all-minilm-l6-v2", "--max_batch_size", "0"], "max_batch_size"),
        (["--task", "embed", "--model_id", "all-minilm-l6-v2", "--device", "tpu"], "device"),
    ],
)
def test_bad_settings_exit_2_with_a_message(args: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, "-m", "predictors", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr


def test_a_model_that_fails_to_load_stops_the_process(tmp_path: Path) -> None:
    server = PredictorProcess(["--task", "embed", "--model_dir", str(tmp_path)], log_path=tmp_path / "log").start()
    assert server.process is not None
    assert server.process.wait(timeout=120) == 1
    assert "predictor stopped" in (tmp_path / "log").read_text()
