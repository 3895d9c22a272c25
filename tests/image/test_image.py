"""Every entrypoint of the built image, run as the cluster runs it (tests/image/containers.py) and
called from the host with the clients users have: the embedding predictor over v1, v2 (tritonclient)
and OpenAI; the generation predictor converting its GGUF into /cache, then starting from it; a RAG
corpus ingested into a Milvus Lite file on a volume and the transformer answering from it; the
Kafka worker answering a job submitted to a local broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as triton_http
from kafka.admin import KafkaAdminClient, NewTopic

from tests.image.conftest import BUILD_TIMEOUT_S
from tests.image.containers import REPO_ROOT, Container, Engine, free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(BUILD_TIMEOUT_S + 900)]

UID = "10001"  # the image's user, which the pods' securityContext runs as
TEXTS = ["Kafka keeps the events.", "The predictor scales to zero."]
DOCS = {
    "otters.md": "Sea otters hold hands while they sleep so that they do not drift apart.",
    "volcanoes.md": "A volcano erupts when magma rises through the crust and escapes at the surface.",
}


def server(engine: Engine, module: str, args: list[str], mounts: list[str]) -> Container:
    """A server entrypoint on free loopback ports (the host network is the machine's)."""
    port = free_port()
    return Container(engine, module, [*args, "--http_port", str(port), "--grpc_port", str(free_port())],
                     mounts=mounts, http_port=port)


def v1(url: str, model: str, body: dict[str, object]) -> list[object]:
    response = httpx.post(f"{url}/v1/models/{model}:predict", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return list(response.json()["predictions"])


@pytest.fixture(scope="module")
def embed(engine: Engine) -> Iterator[Container]:
    container = server(engine, "predictors", ["--task", "embed", "--model_id", "all-minilm-l6-v2",
                                              "--model_name", "minilm"], mounts=[f"{engine.volume()}:/cache"])
    yield container.start().wait_ready()
    assert container.stop() == 0, container.failure("did not exit cleanly on SIGTERM")


@dataclass
class Generation:
    first_log: str
    second: Container


@pytest.fixture(scope="module")
def generation(engine: Engine) -> Iterator[Generation]:
    """The generation predictor started twice on one /cache volume; the second start stays up."""
    cache = f"{engine.volume()}:/cache"

    def start() -> Container:
        args = ["--task", "generate", "--model_id", "smollm2-135m-instruct", "--model_name", "smol",
                "--max_new_tokens", "24"]
        return server(engine, "predictors", args, mounts=[cache]).start().wait_ready()

    first = start()
    assert first.stop() == 0, first.failure("did not exit cleanly on SIGTERM")
    first_log = first.logs(lines=400)
    second = start()
    yield Generation(first_log, second)
    assert second.stop() == 0, second.failure("did not exit cleanly on SIGTERM")


def loaded_line(log: str) -> str:
    lines = [line for line in log.splitlines() if "loaded from" in line]
    assert lines, f"no 'loaded from' line in the log:\n{log}"
    return lines[-1]


def test_the_servers_run_as_the_images_non_root_user(engine: Engine, embed: Container) -> None:
    done = engine.docker("exec", embed.name, "id", "-u")
    assert done.stdout.strip() == UID, done.stderr


def test_embeddings_over_v1_v2_and_openai_agree(embed: Container) -> None:
    by_v1 = np.array(v1(embed.url, "minilm", {"instances": TEXTS}), dtype=np.float32)
    assert by_v1.shape == (2, 384)

    client = triton_http.InferenceServerClient(f"127.0.0.1:{embed.http_port}")
    try:
        tensor = triton_http.InferInput("text", [len(TEXTS)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object))
        by_v2 = client.infer("minilm", [tensor]).as_numpy("embedding")
    finally:
        client.close()
    np.testing.assert_allclose(by_v2, by_v1, atol=1e-5)

    with openai.OpenAI(base_url=f"{embed.url}/openai/v1", api_key="unused", max_retries=0) as oa:
        by_openai = np.array([d.embedding for d in oa.embeddings.create(model="minilm", input=TEXTS).data])
    np.testing.assert_allclose(by_openai, by_v1, atol=1e-5)


def test_generation_converts_the_gguf_into_cache_once_and_then_starts_from_it(generation: Generation) -> None:
    first = loaded_line(generation.first_log)
    assert "from /cache/gguf/" in first and "convert" in first and "cache_lookup" not in first, first
    second = loaded_line(generation.second.logs(lines=400))
    assert "from /cache/gguf/" in second and "cache_lookup" in second and "convert" not in second, second
    [prediction] = v1(generation.second.url, "smol", {"instances": [{"prompt": "The sky is"}]})
    assert isinstance(prediction, dict) and prediction["text"].strip(), prediction
    assert prediction["usage"]["completion_tokens"] > 0, prediction


def test_rag_transformer_answers_from_a_corpus_ingested_into_a_milvus_lite_volume(
    engine: Engine, generation: Generation, tmp_path_factory: pytest.TempPathFactory
) -> None:
    docs = tmp_path_factory.mktemp("docs")
    docs.chmod(0o755)  # pytest makes it private to root; the container's user reads it
    for name, text in DOCS.items():
        (docs / name).write_text(text + "\n")
    data = tmp_path_factory.mktemp("milvus")
    os.chown(data, int(UID), int(UID))  # a volume the non-root user can write, as fsGroup makes it
    mounts = [f"{docs}:/docs:ro", f"{data}:/data", f"{engine.volume()}:/cache"]
    ingested = engine.one_shot("transformers_pre.ingest", "--milvus_uri", "/data/rag.db", "--collection", "kzero",
                               "--no_progress", "/docs", mounts=mounts)
    summary = json.loads(ingested.splitlines()[-1])
    assert (summary["added"], summary["chunks"]) == (len(DOCS), len(DOCS)), summary

    transformer = server(engine, "transformers_pre", [
        "--model_name", "rag", "--predictor_host", f"127.0.0.1:{generation.second.http_port}",
        "--predictor_model", "smol", "--milvus_uri", "/data/rag.db", "--collection", "kzero", "--top_k", "1",
        "--max_new_tokens", "16"], mounts=mounts)
    transformer.start().wait_ready()
    try:
        [answer] = v1(transformer.url, "rag", {"instances": [{"question": "Why do sea otters hold hands?"}]})
        assert isinstance(answer, dict) and answer["answer"].strip(), answer
        assert [s["doc_id"] for s in answer["sources"]] == ["otters.md"], answer["sources"]
    finally:
        assert transformer.stop() == 0, transformer.failure("did not exit cleanly on SIGTERM")


def test_kafka_worker_answers_a_job_from_a_local_broker(
    engine: Engine, embed: Container, kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = {name: f"image-{name}-{uuid.uuid4().hex[:6]}" for name in ("requests", "results", "dlq")}
    # Made beforehand, as a cluster's KafkaTopic resources make them: a worker that creates its input
    # topic itself can join the group before the topic's partitions are known, and stay assigned none.
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(t, num_partitions=2, replication_factor=1) for t in topics.values()])
    finally:
        admin.close()
    metrics_port = free_port()
    worker = Container(engine, "eventing", ["worker", "--bootstrap-servers", kafka_bootstrap,
                                            "--predictor-url", embed.url, "--model", "minilm",
                                            "--input-topic", topics["requests"], "--output-topic", topics["results"],
                                            "--dlq-topic", topics["dlq"], "--group", topics["requests"],
                                            "--metrics-port", str(metrics_port)], http_port=metrics_port)
    worker.start().wait_ready("/metrics")
    try:
        job = tmp_path / "job.jsonl"
        job.write_text("".join(json.dumps(t) + "\n" for t in TEXTS))
        host_cli = [sys.executable, "-m", "eventing"]  # a user's own machine submits and collects
        submitted = subprocess.run(
            [*host_cli, "submit", "--bootstrap-servers", kafka_bootstrap, "--topic", topics["requests"],
             "--input", str(job), "--job-id", "image-job"],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, check=False)
        assert submitted.returncode == 0, submitted.stderr
        out = tmp_path / "results.jsonl"
        collected = subprocess.run(
            [*host_cli, "results", "--bootstrap-servers", kafka_bootstrap, "--topic", topics["results"],
             "--dlq-topic", topics["dlq"], "--job-id", "image-job", "--expect", str(len(TEXTS)),
             "--timeout", "300", "--output", str(out)],
            capture_output=True, text=True, timeout=360, cwd=REPO_ROOT, check=False)
        assert collected.returncode == 0, worker.failure(f"gave no results: {collected.stdout}{collected.stderr}")
        results = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(results) == len(TEXTS) and all("result" in r for r in results), results
        assert all(len(r["result"]["predictions"][0]) == 384 for r in results), results
    finally:
        assert worker.stop() == 0, worker.failure("did not exit cleanly on SIGTERM")
