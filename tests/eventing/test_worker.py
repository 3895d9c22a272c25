"""The worker against a real Kafka broker and a real predictor process."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaProducer, TopicPartition

from eventing.jobs import send_events
from events.event import ERROR_TYPE, RESULT_TYPE, new_event, request_event
from serving.launch import PredictorProcess
from tests.eventing.helpers import TopicReader, Topics, WorkerProcess, job

pytestmark = pytest.mark.slow


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    return Topics.fresh(kafka_bootstrap)


@pytest.fixture
def workers(kafka_bootstrap: str, topics: Topics, embed_server: PredictorProcess, tmp_path: Path) -> Iterator:
    started: list[WorkerProcess] = []

    def start(*extra: str, predictor_url: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(kafka_bootstrap, topics, predictor_url or embed_server.url,
                               tmp_path / f"worker-{len(started)}.log", list(extra)).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_round_trip_keeps_per_partition_order(kafka_bootstrap: str, topics: Topics, workers, mode: str) -> None:
    events = job("rt", 1000)
    workers("--max-batch", "64", "--output-mode", mode)
    send_events(kafka_bootstrap, topics.requests, events, mode, progress=False)  # type: ignore[arg-type]
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.request_ids()) >= 1000, timeout_s=240)
    ids = results.request_ids()
    assert set(ids) == {e.id for e in events} and max(ids.values()) == 1
    by_id = {e.id: e for e in events}
    per_key: dict[str, list[str]] = defaultdict(list)
    for record, event in zip(results.records, results.events, strict=True):
        assert event.type == RESULT_TYPE and event.get("jobid") == "rt"
        request = by_id[event.get("requestid")]
        assert event.get("partitionkey") == request.get("partitionkey") == record.key.decode()
        assert len(event.data["predictions"]) == 1 and len(event.data["predictions"][0]) == 384
        per_key[event.get("partitionkey")].append(event.get("requestid"))
    for key, requestids in per_key.items():
        assert requestids == sorted(requestids), f"results for {key} out of order"
    if mode == "structured":
        assert all(dict(r.headers)["content-type"].startswith(b"application/cloudevents+json") for r in results.records)
    results.close()


def test_in_process_predictor_for_the_embedded_demo(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    extra = ["--protocol", "in-process", "--task", "embed", "--model-id", "all-minilm-l6-v2"]
    worker = WorkerProcess(kafka_bootstrap, topics, None, tmp_path / "worker.log", extra).start()
    try:
        events = [*job("inproc", 50), request_event([""], source="/tests", jobid="inproc", id="inproc-empty")]
        send_events(kafka_bootstrap, topics.requests, events, "structured", progress=False)
        results, dlq = TopicReader(kafka_bootstrap, topics.results), TopicReader(kafka_bootstrap, topics.dlq)
        results.wait_for(lambda r: len(r.request_ids()) >= 50, timeout_s=180)
        dlq.wait_for(lambda r: len(r.events) >= 1, timeout_s=30)
        assert len(results.events[0].data["predictions"][0]) == 384
        assert dlq.events[0].get("errorcode") == "rejected" and "instances[0]" in dlq.events[0].get("errormessage")
        results.close()
        dlq.close()
        assert worker.terminate() == 0
    finally:
        worker.stop()


def test_grpc_v2_to_a_real_predictor(
    kafka_bootstrap: str, topics: Topics, embed_server: PredictorProcess, tmp_path: Path
) -> None:
    # The gRPC channel must live on the worker's own event loop, not the one of the thread that built it.
    worker = WorkerProcess(kafka_bootstrap, topics, embed_server.grpc_target, tmp_path / "worker.log",
                           ["--protocol", "grpc-v2"]).start()
    try:
        events = [*job("grpc", 30), request_event([""], source="/tests", jobid="grpc", id="grpc-empty")]
        send_events(kafka_bootstrap, topics.requests, events, "binary", progress=False)
        results, dlq = TopicReader(kafka_bootstrap, topics.results), TopicReader(kafka_bootstrap, topics.dlq)
        results.wait_for(lambda r: len(r.request_ids()) >= 30, timeout_s=180)
        dlq.wait_for(lambda r: len(r.events) >= 1, timeout_s=60)
        assert set(results.request_ids()) == {e.id for e in events[:30]}
        assert all(len(e.data["predictions"][0]) == 384 for e in results.events)
        [rejected] = dlq.events
        assert rejected.get("requestid") == "grpc-empty" and rejected.get("errorcode") == "rejected"
        results.close()
        dlq.close()
        assert worker.terminate() == 0
    finally:
        worker.stop()


def test_poison_events_are_dead_lettered_with_reasons(kafka_bootstrap: str, topics: Topics, workers) -> None:
    good = job("poison", 20)
    wrong_type = new_event("com.example.other", "/tests", {"instances": ["x"]}, id="wrong-type", jobid="poison")
    no_instances = new_event("dev.kzero.inference.request", "/tests", {"inputs": ["x"]}, id="no-inst", jobid="poison")
    rejected = request_event([""], source="/tests", jobid="poison", id="empty-text")
    send_events(kafka_bootstrap, topics.requests, [*good[:10], wrong_type, no_instances, rejected, *good[10:]],
                "binary", progress=False)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topics.requests, value=b"{not json", headers=[
        ("ce_specversion", b"1.0"), ("ce_id", b"bad-json"), ("ce_source", b"/tests"),
        ("ce_type", b"dev.kzero.inference.request"), ("content-type", b"application/json")])
    producer.send(topics.requests, value=b"plain bytes, not an event", key=b"k1")
    producer.flush()
    producer.close()
    workers()
    results, dlq = TopicReader(kafka_bootstrap, topics.results), TopicReader(kafka_bootstrap, topics.dlq)
    results.wait_for(lambda r: len(r.events) >= 20, timeout_s=120)
    dlq.wait_for(lambda r: len(r.events) >= 5, timeout_s=60)
    assert set(results.request_ids()) == {e.id for e in good}
    errors = {e.get("requestid"): e for e in dlq.events}
    assert all(e.type == ERROR_TYPE and e.get("sourcetopic") == topics.requests for e in errors.values())
    assert errors["wrong-type"].get("errorcode") == "invalid-event" and "type" in errors["wrong-type"].get(
        "errormessage")
    assert "data.instances" in errors["no-inst"].get("errormessage")
    assert errors["empty-text"].get("errorcode") == "rejected"
    assert "instances[0]: must not be empty" in errors["empty-text"].get("errormessage")
    assert errors["empty-text"].data["request"]["id"] == "empty-text"
    assert errors["bad-json"].get("errorcode") == "invalid-event" and "data" in errors["bad-json"].get("errormessage")
    [wrapped] = [e for e in dlq.events if e.get("requestid", "").startswith("partition:")]
    assert wrapped.data["request"]["type"] == "dev.knative.kafka.event"
    assert int(wrapped.get("sourceoffset")) >= 0
    results.close()
    dlq.close()


def _committed(bootstrap: str, topics: Topics) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        offsets = admin.list_consumer_group_offsets(topics.group)
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topics.requests}


def _ends(bootstrap: str, topic: str) -> dict[int, int]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_sigkill_mid_job_loses_nothing(kafka_bootstrap: str, topics: Topics, workers, exactly_once: bool) -> None:
    events = job("kill", 1000)
    extra = ["--max-batch", "32", "--exactly-once"] if exactly_once else ["--max-batch", "32"]
    send_events(kafka_bootstrap, topics.requests, events, "binary", progress=False)
    results = TopicReader(kafka_bootstrap, topics.results)
    for threshold in (150, 400, 650):
        worker = workers(*extra)
        results.wait_for(lambda r, t=threshold: len(r.events) >= t, timeout_s=180)
        worker.kill()
    last = workers(*extra)
    results.wait_for(lambda r: len(r.request_ids()) >= 1000, timeout_s=240)
    results.read(3.0)  # anything still arriving
    counts = results.request_ids()
    assert set(counts) == {e.id for e in events}, "nothing is lost"
    duplicates = sum(counts.values()) - len(counts)
    if exactly_once:
        assert duplicates == 0, f"{duplicates} duplicates visible to a read_committed reader"
    print(json.dumps({"exactly_once": exactly_once, "duplicates": duplicates}))
    assert last.terminate() == 0
    assert _committed(kafka_bootstrap, topics) == _ends(kafka_bootstrap, topics.requests)
    results.close()


def test_predictor_outage_is_retried_then_recovers(
    kafka_bootstrap: str, topics: Topics, workers, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from tests.conftest import start_predictor

    args = ["--task", "embed", "--model_id", "all-minilm-l6-v2"]
    predictor = start_predictor(tmp_path_factory, "minilm", args)
    port = predictor.http_port
    workers("--max-attempts", "30", predictor_url=predictor.url)
    events = job("outage", 300)
    send_events(kafka_bootstrap, topics.requests, events[:100], "binary", progress=False)
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.events) >= 100, timeout_s=120)
    predictor.stop()
    send_events(kafka_bootstrap, topics.requests, events[100:], "binary", progress=False)
    results.read(3.0)
    assert len(results.request_ids()) == 100, "no results while the predictor is down"
    restarted = PredictorProcess(args, model_name="minilm", http_port=port, log_path=predictor.log_path).start()
    try:
        restarted.wait_ready()
        results.wait_for(lambda r: len(r.request_ids()) >= 300, timeout_s=240)
    finally:
        restarted.stop()
    dlq = TopicReader(kafka_bootstrap, topics.dlq)
    assert dlq.read(1.0) == 0
    results.close()
    dlq.close()


def test_sigterm_finishes_commits_and_exits_cleanly(kafka_bootstrap: str, topics: Topics, workers) -> None:
    events = job("term", 200)
    worker = workers()
    send_events(kafka_bootstrap, topics.requests, events, "binary", progress=False)
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.request_ids()) >= 200, timeout_s=120)
    assert worker.terminate(timeout=60) == 0
    assert _committed(kafka_bootstrap, topics) == _ends(kafka_bootstrap, topics.requests)
    assert "worker stopped after emitting" in worker.log_path.read_text()
    results.close()


def test_broker_restart_mid_job_loses_nothing(embed_server: PredictorProcess, tmp_path: Path) -> None:
    from tests.kafka_fixture import _free_ports, run_kafka_script

    port, controller = _free_ports(2)
    env = {"KZERO_KAFKA_PORT": str(port), "KZERO_KAFKA_CONTROLLER_PORT": str(controller),
           "KZERO_KAFKA_DATA": str(tmp_path / "kafka")}
    started = run_kafka_script("start", env)
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip().splitlines()[-1]
    topics = Topics.fresh(bootstrap)
    worker = WorkerProcess(bootstrap, topics, embed_server.url, tmp_path / "worker.log").start()
    try:
        events = job("restart", 600)
        send_events(bootstrap, topics.requests, events, "binary", progress=False)
        results = TopicReader(bootstrap, topics.results)
        results.wait_for(lambda r: len(r.events) >= 150, timeout_s=120)
        results.close()
        assert run_kafka_script("stop", env).returncode == 0
        assert run_kafka_script("start", env).returncode == 0
        results = TopicReader(bootstrap, topics.results)
        results.wait_for(lambda r: len(r.request_ids()) >= 600, timeout_s=300)
        assert set(results.request_ids()) == {e.id for e in events}
        results.close()
        assert worker.terminate() == 0
    finally:
        worker.stop()
        run_kafka_script("stop", env)


def test_scaling_out_mid_job_rebalances_without_loss(kafka_bootstrap: str, topics: Topics, workers) -> None:
    # Enough events that the second worker (seconds to start) joins while the first still has work on a
    # quiet machine: with 800 the first once finished them all before the rebalance.
    events = job("scale", 4000)
    send_events(kafka_bootstrap, topics.requests, events, "binary", progress=False)
    first = workers("--max-batch", "16", "--max-in-flight", "64")
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.events) >= 150, timeout_s=120)
    second = workers("--max-batch", "16", "--max-in-flight", "64")
    deadline = time.monotonic() + 120  # a bound against hangs: the join's rebalance revokes the first's partitions
    while "revoked" not in first.log_path.read_text():
        assert time.monotonic() < deadline, "the second worker never took partitions over"
        time.sleep(0.2)
    results.wait_for(lambda r: len(r.request_ids()) >= len(events), timeout_s=300)
    assert set(results.request_ids()) == {e.id for e in events}
    assert first.terminate() == 0 and second.terminate() == 0
    assert _committed(kafka_bootstrap, topics) == _ends(kafka_bootstrap, topics.requests)
    results.close()
