"""The Kafka CLIs through a SASL_PLAINTEXT listener (PLAIN) of a real broker: a job round-trips, a wrong
password fails fast with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventing.config import DEFAULT_DLQ, DEFAULT_REQUESTS, DEFAULT_RESULTS
from tests.eventing.helpers import Topics, WorkerProcess
from tests.kafka_fixture import _free_ports, script_broker

pytestmark = pytest.mark.slow

USER = "kzero-test"
PASSWORD = "sasl-secret-5d2b"
WRONG_PASSWORD = "not-the-password-93af"


def login(password: str) -> dict[str, str]:
    return {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": USER, "KAFKA_SASL_PASSWORD": password}


@pytest.fixture(scope="module")
def sasl_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of its own with a SASL_PLAINTEXT listener: its address (the PLAINTEXT one goes unused)."""
    port, controller_port, sasl_port = _free_ports(3)
    env = {
        "KZERO_KAFKA_PORT": str(port),
        "KZERO_KAFKA_CONTROLLER_PORT": str(controller_port),
        "KZERO_KAFKA_SASL_PORT": str(sasl_port),
        "KZERO_KAFKA_SASL_USER": USER,
        "KZERO_KAFKA_SASL_PASSWORD": PASSWORD,
        "KZERO_KAFKA_DATA": str(tmp_path_factory.mktemp("kafka-sasl")),
    }
    with script_broker(env):
        yield f"127.0.0.1:{sasl_port}"


def eventing(bootstrap: str, env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "eventing", *args, "--bootstrap-servers", bootstrap],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def test_a_job_round_trips_through_the_sasl_listener(sasl_bootstrap: str, tmp_path: Path) -> None:
    # The worker creates the default topics over SASL too: nothing here uses the PLAINTEXT listener.
    topics = Topics(DEFAULT_REQUESTS, DEFAULT_RESULTS, DEFAULT_DLQ, "kzero-sasl")
    extra = ["--protocol", "in-process", "--task", "embed", "--model-id", "all-minilm-l6-v2"]
    worker = WorkerProcess(sasl_bootstrap, topics, None, tmp_path / "worker.log", extra, env=login(PASSWORD)).start()
    try:
        source = tmp_path / "job.jsonl"
        source.write_text("".join(json.dumps(f"sentence {i} sent with a password") + "\n" for i in range(5)))
        submitted = eventing(sasl_bootstrap, login(PASSWORD), "submit", "--input", str(source), "--job-id", "sasl",
                             timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        assert json.loads(submitted.stdout) == {"job_id": "sasl", "submitted": 5, "topic": DEFAULT_REQUESTS}

        output = tmp_path / "results.jsonl"
        collected = eventing(sasl_bootstrap, login(PASSWORD), "results", "--job-id", "sasl", "--expect", "5",
                             "--timeout", "240", "--output", str(output), timeout=300)
        assert collected.returncode == 0, (collected.stdout, collected.stderr, (tmp_path / "worker.log").read_text())
        assert collected.stdout.startswith("5 results, 0 failed, 0 missing")
        results = [json.loads(line) for line in output.read_text().splitlines()]
        assert sorted(r["requestid"] for r in results) == [f"sasl-{n}" for n in range(1, 6)]
        assert all(len(r["result"]["predictions"][0]) == 384 for r in results)
        assert worker.terminate() == 0
    finally:
        worker.stop()
    assert PASSWORD not in (tmp_path / "worker.log").read_text()


def test_a_wrong_password_fails_fast_and_says_so(sasl_bootstrap: str, tmp_path: Path) -> None:
    source = tmp_path / "job.jsonl"
    source.write_text('"never sent"\n')
    started = time.monotonic()
    done = eventing(sasl_bootstrap, login(WRONG_PASSWORD), "submit", "--input", str(source), timeout=60)
    assert time.monotonic() - started < 30
    assert done.returncode == 1, done.stderr
    assert "SaslAuthenticationFailedError" in done.stderr  # the broker's reason, as kafka-python logs it
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"python -m eventing submit: Kafka at {sasl_bootstrap} (KAFKA_SECURITY_PROTOCOL="
                           f"SASL_PLAINTEXT, KAFKA_SASL_MECHANISM=PLAIN, KAFKA_SASL_USERNAME={USER}): "), last
    assert WRONG_PASSWORD not in done.stderr
    assert "Traceback" not in done.stderr
