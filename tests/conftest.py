from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from serving.launch import PredictorProcess
from tests.kafka_fixture import kafka_bootstrap  # noqa: F401
from tests.keyed import KEYS
from tests.otlp_receiver import OtlpReceiver
from tests.transformers_pre.conftest import seed, transformer_process

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
    tmp_path_factory: pytest.TempPathFactory, name: str, args: list[str], *, ready: bool = True,
    env: dict[str, str] | None = None,
) -> PredictorProcess:
    log = tmp_path_factory.mktemp("logs") / f"{name}.log"
    server = PredictorProcess(args, model_name=name, log_path=log, env=env or {}).start()
    try:
        server.wait_ready() if ready else server.wait_live()
    except Exception:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def embed_server(tmp_path_factory: pytest.TempPathFactory, otlp_receiver: OtlpReceiver) -> Iterator[PredictorProcess]:
    """Exports its traces and metrics to the session's receiver, as every session server does."""
    args = ["--task", "embed", "--model_id", "all-minilm-l6-v2", "--max_batch_size", "64",
            "--max_batch_latency_ms", "20"]
    server = start_predictor(tmp_path_factory, "minilm", args, env=otlp_receiver.env())
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def keyed_embed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PredictorProcess]:
    """The packaged embedder requiring one of ``tests.keyed.KEYS`` (from ``KZERO_API_KEYS``)."""
    args = ["--task", "embed", "--model_id", "all-minilm-l6-v2", "--max_batch_latency_ms", "5"]
    server = start_predictor(tmp_path_factory, "minilm", args, env={"KZERO_API_KEYS": ",".join(KEYS)})
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def generate_server(
    tmp_path_factory: pytest.TempPathFactory, model_cache: Path, otlp_receiver: OtlpReceiver
) -> Iterator[PredictorProcess]:
    args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--cache_dir", str(model_cache),
            "--max_batch_size", "16", "--max_batch_latency_ms", "20", "--max_new_tokens", "128"]
    server = start_predictor(tmp_path_factory, "smol", args, env=otlp_receiver.env())
    yield server
    assert server.stop() == 0


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """One real OTLP receiver (gRPC + HTTP) for the session; tests filter by service or trace id."""
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def rag_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Milvus Lite file with the test corpus (closed again: Milvus Lite allows one process per file)."""
    db = tmp_path_factory.mktemp("milvus") / "rag.db"
    asyncio.run(seed(db))
    return db


@pytest.fixture(scope="session")
def rag_server(
    tmp_path_factory: pytest.TempPathFactory, rag_db: Path, generate_server: PredictorProcess,
    embed_server: PredictorProcess, otlp_receiver: OtlpReceiver,
) -> Iterator[PredictorProcess]:
    """Between the session's embed and generate predictors, so one request crosses every hop."""
    embedder = f"{embed_server.url}#{embed_server.model_name}"
    server = transformer_process(tmp_path_factory, rag_db, f"127.0.0.1:{generate_server.http_port}",
                                 "--embedder", embedder, "--filter_fields", "doc_id,source,title,topic",
                                 env=otlp_receiver.env())
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stop() == 0
