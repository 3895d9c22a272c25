"""Real worker processes and topic readers for the eventing tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from eventing.events import Event
from eventing.kafka_binding import KafkaRecord, from_client_record, from_record
from eventing.topics import ensure_topics


@dataclass(frozen=True)
class Topics:
    requests: str
    results: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, partitions: int = 4) -> Topics:
        tag = uuid.uuid4().hex[:8]
        topics = cls(f"req-{tag}", f"res-{tag}", f"dlq-{tag}", f"group-{tag}")
        ensure_topics(bootstrap, [topics.requests, topics.results, topics.dlq], partitions)
        return topics


@dataclass
class WorkerProcess:
    bootstrap: str
    topics: Topics
    predictor_url: str | None
    log_path: Path
    extra: list[str] = field(default_factory=list)
    model: str = "minilm"
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        command = [
            sys.executable, "-m", "eventing", "worker", "--bootstrap-servers", self.bootstrap,
            "--input-topic", self.topics.requests, "--output-topic", self.topics.results,
            "--dlq-topic", self.topics.dlq, "--group", self.topics.group, "--model", self.model, *self.extra,
        ]
        if self.predictor_url is not None:
            command += ["--predictor-url", self.predictor_url]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        return self

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


class TopicReader:
    """Follows a topic from the beginning and keeps every CloudEvent read, in partition order."""

    def __init__(self, bootstrap: str, topic: str, *, committed_only: bool = True) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
            isolation_level="read_committed" if committed_only else "read_uncommitted",
        )
        self._consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(self._consumer.partitions_for_topic(topic) or ())]
        self._consumer.assign(partitions)
        self._consumer.seek_to_beginning(*partitions)
        self.records: list[KafkaRecord] = []
        self.events: list[Event] = []

    def read(self, timeout_s: float = 1.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for records in self._consumer.poll(timeout_ms=100).values():
                for record in records:
                    kafka_record = from_client_record(record)
                    self.records.append(kafka_record)
                    self.events.append(from_record(kafka_record))
        return len(self.events)

    def wait_for(self, predicate, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met after {timeout_s}s with {len(self.events)} events read")
            self.read(0.5)

    def request_ids(self) -> Counter[str]:
        return Counter(e.get("requestid") for e in self.events)

    def close(self) -> None:
        self._consumer.close()
