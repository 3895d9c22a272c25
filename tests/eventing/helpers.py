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

import confluent_kafka
from kafka import KafkaConsumer, TopicPartition

from eventing.topics import ensure_topics
from events.event import Event, request_event
from events.kafka_binding import KafkaRecord, from_client_record, from_record


def job(job_id: str, n: int, keys: int = 10) -> list[Event]:
    """``n`` request events, keyed round-robin over ``keys`` keys, with ids in submission order."""
    return [
        request_event([f"request {i} of {job_id}: events flow through kafka"], source="/tests", jobid=job_id,
                      partitionkey=f"key-{i % keys}", id=f"{job_id}-{i:05d}")
        for i in range(n)
    ]


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

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but neither heartbeats nor commits (a zombie to be)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 60) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        if code != 0:  # pytest shows this with the failure: the worker's own account of why
            print(f"worker exited {code}; the end of {self.log_path}:\n{self.log_tail()}")
        return code

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

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
            # kafka-python 2.3 refuses frames over receive_message_max_bytes (1 MB), yet asks for up to
            # 50 MB per fetch: results of 384 floats fill that from a few partitions.
            fetch_max_bytes=900_000,
        )
        deadline = time.monotonic() + 30
        while not (known := self._consumer.partitions_for_topic(topic)):  # a new topic's metadata may lag
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions of {topic} after 30s")
            self._consumer.topics()  # refreshes the metadata
            time.sleep(0.2)
        partitions = [TopicPartition(topic, p) for p in sorted(known)]
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


def read_committed(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[Event]:
    """Every CloudEvent on ``topic`` as librdkafka's ``read_committed`` consumer sees it, read to the end.

    A second client (not kafka-python, which the worker uses) so the check does not share its bugs. The end
    is each partition's high watermark: a ``read_committed`` reader gets there only once no transaction is
    open on the partition, so call this after the producers have stopped or been fenced.
    """
    consumer = confluent_kafka.Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
        "isolation.level": "read_committed", "enable.auto.commit": False, "enable.partition.eof": True,
    })
    try:
        count = len(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        partitions = [confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in range(count)]
        consumer.assign(partitions)
        events: list[Event] = []
        at_end: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while len(at_end) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: partitions {sorted(set(range(count)) - at_end)} not read to the end "
                                   f"after {timeout_s}s (a transaction still open?)")
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error() is not None:
                if message.error().code() != confluent_kafka.KafkaError._PARTITION_EOF:
                    raise RuntimeError(f"{topic}: {message.error()}")
                _, high = consumer.get_watermark_offsets(
                    confluent_kafka.TopicPartition(topic, message.partition()), timeout=10, cached=False)
                if message.offset() >= high:
                    at_end.add(message.partition())
                continue
            at_end.discard(message.partition())
            events.append(from_record(KafkaRecord(
                topic=topic, value=message.value(), key=message.key(),
                headers=tuple((k, v or b"") for k, v in message.headers() or ()),
                partition=message.partition(), offset=message.offset())))
        return events
    finally:
        consumer.close()
