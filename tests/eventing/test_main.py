"""``python -m eventing`` settings errors: exit status 2 and a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(("variable", "value"), [
    ("OTEL_TRACES_SAMPLER", "sometimes"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
    ("KZERO_LOG_FORMAT", "xml"),
    ("KAFKA_SECURITY_PROTOCOL", "TLS"),
    ("KAFKA_SASL_MECHANISM", "GSSAPI"),
])
def test_a_bad_setting_exits_2_naming_the_variable(tmp_path: Path, variable: str, value: str) -> None:
    job = tmp_path / "job.jsonl"
    job.write_text('"hello"\n')
    env = {**os.environ, variable: value, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "eventing", "submit", "--bootstrap-servers", "127.0.0.1:1", "--input", str(job)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr and value in done.stderr


def test_an_incomplete_kafka_login_exits_2_naming_the_missing_variable(tmp_path: Path) -> None:
    job = tmp_path / "job.jsonl"
    job.write_text('"hello"\n')
    env = {**os.environ, "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN",
           "KAFKA_SASL_USERNAME": "kzero"}
    env.pop("KAFKA_SASL_PASSWORD", None)
    done = subprocess.run(
        [sys.executable, "-m", "eventing", "submit", "--bootstrap-servers", "127.0.0.1:1", "--input", str(job)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "KAFKA_SASL_PASSWORD is required with KAFKA_SECURITY_PROTOCOL=SASL_SSL" in done.stderr
