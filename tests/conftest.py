from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from predictors.launch import PredictorProcess
from tests.kafka_fixture import kafka_bootstrap  # noqa: F401
from tests.otlp_receiver import OtlpReceiver

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; runs on the GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GGUF->safetensors cache for the session's generate servers."""
    return tmp_path_factory.mktemp("model-cache")


def start_predictor(
    tmp_path_factory: pytest.TempPathFactory, name: str, args: list[str], *, ready: bool = True
) -> PredictorProcess:
    log = tmp_path_factory.mktemp("logs") / f"{name}.log"
    server = PredictorProcess(args, model_name=name, log_path=log).start()
    try:
        server.wait_ready() if ready else server.wait_live()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictorProcess]:
    args = ["--task", "embed", "--model_id", "all-minilm-l6-v2", "--max_batch_size", "64",
            "--max_batch_latency_ms", "20"]
    server = start_predictor(tmp_path_factory, "minilm", args)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def generate_server(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[PredictorProcess]:
    args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--cache_dir", str(model_cache),
            "--max_batch_size", "16", "--max_batch_latency_ms", "20", "--max_new_tokens", "128"]
    server = start_predictor(tmp_path_factory, "smol", args)
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """One real OTLP receiver (gRPC + HTTP) for the session; tests filter by service or trace id."""
    with OtlpReceiver() as receiver:
        yield receiver
