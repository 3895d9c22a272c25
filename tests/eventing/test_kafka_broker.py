"""Real-broker tests: a Kafka 4.x KRaft broker from scripts/kafka.sh (or KAFKA_BOOTSTRAP_SERVERS)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from tests.kafka_fixture import KAFKA_SCRIPT, managed_kafka_env, run_kafka_script

PARTITIONS = 3
RECORDS = 100
KEYS = 10


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    name = f"kzero-test-{uuid.uuid4().hex[:12]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="kzero-test-admin")
    try:
        admin.create_topics(
            [NewTopic(name=name, num_partitions=PARTITIONS, replication_factor=1)],
            timeout_ms=30_000,
        )
        yield name
        admin.delete_topics([name], timeout_ms=30_000)
    finally:
        admin.close()


def test_produce_consume_keyed_records_in_partition_order(kafka_bootstrap: str, topic: str) -> None:
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        key_serializer=str.encode,
        value_serializer=str.encode,
        acks="all",
        linger_ms=5,
    )
    try:
        futures = [producer.send(topic, key=f"key-{i % KEYS}", value=str(i)) for i in range(RECORDS)]
        producer.flush(timeout=30)
        sent = [f.get(timeout=30) for f in futures]
    finally:
        producer.close(timeout=10)

    # Producer side: what landed where, in send order.
    sent_partition_of_key: dict[str, int] = {}
    expected: dict[int, list[int]] = defaultdict(list)
    for i, meta in enumerate(sent):
        assert meta.topic == topic
        sent_partition_of_key.setdefault(f"key-{i % KEYS}", meta.partition)
        assert sent_partition_of_key[f"key-{i % KEYS}"] == meta.partition, "a key moved partitions"
        expected[meta.partition].append(i)
    assert len(expected) > 1, "10 keys over 3 partitions should use more than one partition"

    group = f"kzero-test-group-{uuid.uuid4().hex[:8]}"
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        key_deserializer=bytes.decode,
        value_deserializer=bytes.decode,
    )
    received: list[tuple[int, int, str, int]] = []  # (partition, offset, key, value)
    try:
        assert consumer.partitions_for_topic(topic) == set(range(PARTITIONS))
        deadline = time.monotonic() + 60
        while len(received) < RECORDS and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=1000).items():
                received.extend((tp.partition, r.offset, r.key, int(r.value)) for r in records)
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(PARTITIONS)}
        consumer.commit()
        committed = {p: consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        consumer.close()

    assert len(received) == RECORDS
    assert sorted(v for _, _, _, v in received) == list(range(RECORDS))
    for partition, _, key, value in received:
        assert key == f"key-{value % KEYS}"
        assert partition == sent_partition_of_key[key], f"{key} read from partition {partition}"

    by_partition: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for partition, offset, _, value in received:
        by_partition[partition].append((offset, value))
    for partition, items in by_partition.items():
        offsets = [o for o, _ in items]
        assert offsets == list(range(len(items))), f"partition {partition}: offsets not contiguous from 0"
        assert [v for _, v in items] == expected[partition], f"partition {partition}: order differs from send order"
    # The group committed everything it read.
    assert committed == {p: len(expected.get(p, [])) for p in range(PARTITIONS)}


def test_start_is_idempotent_and_status_reports_running(kafka_bootstrap: str) -> None:
    env = managed_kafka_env()
    if env is None:
        # External broker (KAFKA_BOOTSTRAP_SERVERS): start must start nothing and print it.
        out = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), "start"], capture_output=True, text=True, timeout=30, check=True
        )
        assert out.stdout.strip().splitlines()[-1] == os.environ["KAFKA_BOOTSTRAP_SERVERS"] == kafka_bootstrap
        return

    t0 = time.monotonic()
    again = run_kafka_script("start", env, timeout=60)
    elapsed = time.monotonic() - t0
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == kafka_bootstrap
    assert elapsed < 10, f"second start took {elapsed:.1f}s; it should only re-check the running broker"
    assert "starting Kafka" not in again.stderr

    status = run_kafka_script("status", env, timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.startswith("running"), status.stdout
    assert kafka_bootstrap in status.stdout
