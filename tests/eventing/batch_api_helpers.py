"""A real ``python -m eventing batch-api`` process and the ``openai`` client on it, for the batch API tests."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai

from serving.launch import free_port, http_status

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchApiProcess:
    bootstrap: str
    data_dir: Path
    models: dict[str, str]
    results: str
    dlq: str
    group: str
    log_path: Path
    extra: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> BatchApiProcess:
        command = [sys.executable, "-m", "eventing", "batch-api", "--bootstrap-servers", self.bootstrap,
                   "--data-dir", str(self.data_dir), "--port", str(self.port), "--results-topic", self.results,
                   "--dlq-topic", self.dlq, "--group", self.group, "--completion-check-s", "0.05", *self.extra]
        for name, topic in self.models.items():
            command += ["--model", f"{name}={topic}"]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        deadline = time.monotonic() + 60
        while http_status(self.url + "/v2/health/live", timeout=1.0) != 200:
            if self.process.poll() is not None:
                raise RuntimeError(f"batch API exited with {self.process.returncode}: {self.log_path.read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch API not live in 60s: {self.log_path.read_text()}")
            time.sleep(0.1)
        return self

    def client(self, api_key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=30)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.terminate()
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def jsonl(lines: Sequence[dict[str, Any] | str]) -> io.BytesIO:
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return io.BytesIO(text.encode())


def embedding_lines(n: int, model: str, prefix: str = "req") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "method": "POST", "url": "/v1/embeddings",
             "body": {"model": model, "input": f"line {i}: events flow through kafka"}} for i in range(n)]


def wait_batch(client: openai.OpenAI, batch_id: str, until: Callable[[Any], bool] = lambda b: b.status in TERMINAL,
               timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        if time.monotonic() > deadline:
            raise TimeoutError(f"batch {batch_id} still {batch.status} ({batch.request_counts}) after {timeout_s}s")
        time.sleep(0.2)


def lines_of(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line.strip()]
