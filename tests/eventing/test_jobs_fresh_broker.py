"""A job on a broker that has never seen the job topics, in the order `make demo` runs it: the collector
starts first, then the worker creates the topics one by one, then the job is submitted. Also: a scan
follows partitions added to a topic while it runs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewPartitions

from eventing.config import DEFAULT_DLQ, DEFAULT_REQUESTS, DEFAULT_RESULTS
from eventing.jobs import JobResults, collect, scan, submit
from eventing.topics import DEFAULT_PARTITIONS, ensure_topics
from events.event import RESULT_TYPE, new_event
from events.kafka_binding import from_record, to_record
from serving.launch import PredictorProcess
from tests.eventing.helpers import Topics, WorkerProcess
from tests.kafka_fixture import _free_ports, script_broker

pytestmark = pytest.mark.slow

JOB = 40


@pytest.fixture(scope="module")
def empty_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A broker of its own, started on an empty data dir: no topic exists until a client creates it."""
    port, controller_port = _free_ports(2)
    env = {"KZERO_KAFKA_PORT": str(port), "KZERO_KAFKA_CONTROLLER_PORT": str(controller_port),
           "KZERO_KAFKA_DATA": str(tmp_path_factory.mktemp("kafka-empty"))}
    with script_broker(env) as address:
        yield address


def test_a_collector_started_before_the_topics_exist_gets_every_result(
    empty_broker: str, embed_server: PredictorProcess, tmp_path: Path
) -> None:
    admin = KafkaAdminClient(bootstrap_servers=empty_broker)
    try:
        assert not {DEFAULT_REQUESTS, DEFAULT_RESULTS, DEFAULT_DLQ} & set(admin.list_topics())
    finally:
        admin.close()
    job_id = f"fresh-{uuid.uuid4().hex[:6]}"
    collected: list[JobResults] = []
    collector = threading.Thread(target=lambda: collected.append(
        collect(empty_broker, [DEFAULT_RESULTS, DEFAULT_DLQ], job_id, JOB, timeout_s=240, progress=False)))
    collector.start()
    topics = Topics(DEFAULT_REQUESTS, DEFAULT_RESULTS, DEFAULT_DLQ, f"group-{job_id}")
    worker = WorkerProcess(empty_broker, topics, embed_server.url, tmp_path / "worker.log").start()
    try:
        lines = [json.dumps(f"sentence {i} on an empty broker") + "\n" for i in range(JOB)]
        assert submit(empty_broker, DEFAULT_REQUESTS, job_id, lines, progress=False) == JOB
        collector.join(300)
        assert not collector.is_alive()
        (job,) = collected
        assert job.complete and not job.errors, (job.summary(), (tmp_path / "worker.log").read_text()[-3000:])
        assert sorted(job.results) == sorted(f"{job_id}-{n}" for n in range(1, JOB + 1))
        assert all(len(e.data["predictions"][0]) == 384 for e in job.results.values())
        assert worker.terminate() == 0
    finally:
        worker.stop()


@pytest.mark.parametrize(("command", "expected_rc", "expected_out"), [
    (["results", "--expect", "1", "--timeout", "3"], 1, "0 results, 0 failed, 1 missing"),
    (["replay"], 0, '"replayed": 0'),
])
def test_results_and_replay_create_their_topics_as_the_worker_does(
    empty_broker: str, command: list[str], expected_rc: int, expected_out: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    topic, dlq = f"{command[0]}-{tag}", f"dlq-{tag}"
    done = subprocess.run([sys.executable, "-m", "eventing", *command, "--bootstrap-servers", empty_broker,
                           "--job-id", "none", "--topic", topic, "--dlq-topic", dlq],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == expected_rc, done.stderr
    assert expected_out in done.stdout
    admin = KafkaAdminClient(bootstrap_servers=empty_broker)
    try:
        described = {t["topic"]: t for t in admin.describe_topics([topic, dlq])}
    finally:
        admin.close()
    assert {name: len(t["partitions"]) for name, t in described.items()} == {topic: DEFAULT_PARTITIONS,
                                                                            dlq: DEFAULT_PARTITIONS}


def test_a_scan_reads_partitions_added_while_it_runs(kafka_bootstrap: str) -> None:
    topic = f"grow-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1)
    # A short metadata age, so the producer learns of the new partitions soon after they exist.
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", metadata_max_age_ms=200)
    added = threading.Event()
    seen: list[str] = []

    def send(partition: int, requestid: str) -> None:
        record = to_record(new_event(RESULT_TYPE, "/test", {"predictions": []}, requestid=requestid), topic)
        producer.send(topic, value=record.value, key=record.key, headers=list(record.headers),
                      partition=partition).get(30)

    def grow() -> None:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_partitions({topic: NewPartitions(total_count=3)})
        finally:
            admin.close()
        deadline = time.monotonic() + 30
        while len(producer.partitions_for(topic)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        for partition in (1, 2):
            send(partition, f"late-{partition}")
        added.set()

    try:
        send(0, "early")
        for record in scan(kafka_bootstrap, [topic], idle_timeout_s=60, done=lambda: len(seen) == 3):
            seen.append(from_record(record).get("requestid") or "")
            if len(seen) == 1:
                threading.Thread(target=grow).start()
        assert added.wait(30)
        assert sorted(seen) == ["early", "late-1", "late-2"]
    finally:
        producer.close()
