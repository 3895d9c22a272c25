"""The worker against a keyed predictor: with ``KZERO_PREDICTOR_API_KEY`` it gets results; without,
every event is dead-lettered at once as ``unauthorized`` (retrying cannot fix a key)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from eventing.jobs import send_events
from eventing.processing import Failure, Processor
from events.errors import UNAUTHORIZED
from events.event import ERROR_TYPE, RESULT_TYPE, Event, request_event
from serving.client import Unauthorized
from serving.launch import PredictorProcess
from serving.retry import RetryPolicy
from tests.eventing.helpers import TopicReader, Topics, WorkerProcess
from tests.keyed import KEY

EVENTS = 6


def events(job: str) -> list[Event]:
    return [request_event([f"event {i} of {job}"], source="/tests/auth", jobid=job, id=f"{job}-{i}")
            for i in range(EVENTS)]


def run_job(kafka_bootstrap: str, worker: WorkerProcess, job: list[Event]) -> tuple[TopicReader, TopicReader]:
    """Every event's outcome: (results, dead letters)."""
    worker.start()
    try:
        send_events(kafka_bootstrap, worker.topics.requests, job, "binary", progress=False)
        results = TopicReader(kafka_bootstrap, worker.topics.results)
        dlq = TopicReader(kafka_bootstrap, worker.topics.dlq)
        deadline = time.monotonic() + 180
        while len(results.events) + len(dlq.events) < len(job):
            assert time.monotonic() < deadline, f"{len(results.events)} results, {len(dlq.events)} dead letters"
            results.read(0.5)
            dlq.read(0.5)
        return results, dlq
    finally:
        worker.stop()


@pytest.mark.slow
def test_with_the_key_every_event_gets_a_result(
    kafka_bootstrap: str, keyed_embed_server: PredictorProcess, tmp_path: Path,
) -> None:
    topics = Topics.fresh(kafka_bootstrap, partitions=2)
    worker = WorkerProcess(kafka_bootstrap, topics, keyed_embed_server.url, tmp_path / "worker.log",
                           env={"KZERO_PREDICTOR_API_KEY": KEY})
    results, dlq = run_job(kafka_bootstrap, worker, events("keyed"))
    assert not dlq.events
    assert sorted(e.get("requestid") for e in results.events) == [f"keyed-{i}" for i in range(EVENTS)]
    assert all(e.type == RESULT_TYPE and len(e.data["predictions"][0]) == 384 for e in results.events)
    assert KEY not in (tmp_path / "worker.log").read_text()
    results.close()
    dlq.close()


@pytest.mark.slow
def test_without_the_key_every_event_is_dead_lettered_as_unauthorized(
    kafka_bootstrap: str, keyed_embed_server: PredictorProcess, tmp_path: Path,
) -> None:
    topics = Topics.fresh(kafka_bootstrap, partitions=2)
    worker = WorkerProcess(kafka_bootstrap, topics, keyed_embed_server.url, tmp_path / "worker.log",
                           ["--protocol", "v2", "--max-attempts", "5"])
    results, dlq = run_job(kafka_bootstrap, worker, events("keyless"))
    assert not results.events
    assert sorted(e.get("requestid") for e in dlq.events) == [f"keyless-{i}" for i in range(EVENTS)]
    for event in dlq.events:
        assert event.type == ERROR_TYPE and event.get("errorcode") == UNAUTHORIZED
        assert event.data["attempts"] == 1  # not retried
        assert (f"predictor at {keyed_embed_server.url} refused a request without an API key (401)"
                in event.data["error"]["message"])
    results.close()
    dlq.close()


def test_the_worker_config_never_shows_the_key() -> None:
    from pydantic import SecretStr

    from eventing.config import WorkerConfig

    config = WorkerConfig(bootstrap_servers="b:9092", predictor_url="http://p", model="m",
                          predictor_api_key=SecretStr("very-secret-4"))
    assert "very-secret-4" not in repr(config) and "very-secret-4" not in str(config.model_dump())


def test_an_empty_key_exits_2_naming_the_variable() -> None:
    env = {**os.environ, "KZERO_PREDICTOR_API_KEY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "eventing", "worker", "--bootstrap-servers", "127.0.0.1:1", "--model", "m",
         "--predictor-url", "http://127.0.0.1:1"], env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "KZERO_PREDICTOR_API_KEY is set but holds no key" in done.stderr


class RefusingClient:
    def __init__(self) -> None:
        self.calls = 0

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        self.calls += 1
        raise Unauthorized("predictor at http://p refused the API key (401)", status=401)

    async def close(self) -> None:
        pass


async def test_a_refused_key_fails_a_whole_batch_at_once() -> None:
    client = RefusingClient()
    processor = Processor(client, "m", RetryPolicy(max_attempts=5, base_delay_s=0.0), max_instances=64)
    outcomes = await processor.process([{"instances": [f"text {i}"]} for i in range(3)])
    assert client.calls == 1  # neither retried nor split to find a bad member: no member can pass
    assert outcomes == [Failure(UNAUTHORIZED, "predictor at http://p refused the API key (401)", 1)] * 3
