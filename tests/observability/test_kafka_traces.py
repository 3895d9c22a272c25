"""One trace per request across every hop: ``eventing submit`` -> Kafka -> worker -> predictor (or the
RAG transformer and its predictors) -> result or DLQ event, with real processes exporting over OTLP to
the session's receiver."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from kafka import KafkaProducer

from events.event import Event
from serving.launch import PredictorProcess, free_port
from tests.eventing.helpers import TopicReader, Topics, WorkerProcess
from tests.otlp_receiver import OtlpReceiver, Span, tree

pytestmark = pytest.mark.slow

PREDICTOR = "kzero-predictor-minilm"
TRACE_WAIT_S = 60


def trace_id_of(traceparent: str | None) -> str:
    assert traceparent and re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", traceparent), traceparent
    return traceparent.split("-")[1]


def span_id_of(traceparent: str) -> str:
    return traceparent.split("-")[2]


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    return Topics.fresh(kafka_bootstrap)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def workers(kafka_bootstrap: str, topics: Topics, otlp_receiver: OtlpReceiver, tmp_path: Path, tag: str) -> Iterator:
    started: list[WorkerProcess] = []

    def start(predictor_url: str, *extra: str, model: str = "minilm") -> WorkerProcess:
        env = {**otlp_receiver.env(), "OTEL_SERVICE_NAME": f"kzero-worker-{tag}"}
        worker = WorkerProcess(kafka_bootstrap, topics, predictor_url, tmp_path / f"worker-{len(started)}.log",
                               list(extra), model=model, env=env).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def submit(bootstrap: str, topics: Topics, receiver: OtlpReceiver, tag: str, lines: list[object], mode: str,
           tmp_path: Path) -> str:
    """Run ``python -m eventing submit`` as its own process, exporting its spans; returns the job id."""
    source = tmp_path / f"job-{tag}.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    job_id = f"job-{tag}-{mode}"
    env = {**os.environ, **receiver.env(), "OTEL_SERVICE_NAME": f"kzero-submit-{tag}"}
    done = subprocess.run(
        [sys.executable, "-m", "eventing", "submit", "--bootstrap-servers", bootstrap, "--topic", topics.requests,
         "--job-id", job_id, "--input", str(source), "--mode", mode],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["submitted"] == len(lines)
    return job_id


def wait_for_traces(receiver: OtlpReceiver, trace_ids: set[str], complete) -> dict[str, list[Span]]:
    """Spans per trace, once ``complete(spans_of_one_trace)`` holds for every trace."""
    def ready(spans: list[Span]) -> bool:
        by_trace = {t: [s for s in spans if s.trace_id == t] for t in trace_ids}
        return all(complete(found) for found in by_trace.values())

    try:
        receiver.wait_for(ready, timeout_s=TRACE_WAIT_S)
    except AssertionError:
        pytest.fail("traces incomplete:\n" + tree([s for t in trace_ids for s in receiver.trace(t)]))
    return {t: receiver.trace(t) for t in trace_ids}


def one(spans: list[Span], **where: object) -> Span:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one span with {where}, got {len(found)}:\n{tree(spans)}"
    return found[0]


def named(name: str, service: str):
    return lambda spans: any(s.name == name and s.service == service for s in spans)


def assert_request_chain(spans: list[Span], topics: Topics, tag: str, job_id: str, result: Event,
                         result_topic: str) -> tuple[Span, Span]:
    """submit PRODUCER -> worker CONSUMER -> result PRODUCER, with messaging attributes; returns
    (consumer span, result producer span)."""
    worker = f"kzero-worker-{tag}"
    sent = one(spans, name=f"send {topics.requests}", service=f"kzero-submit-{tag}")
    assert sent.kind == "PRODUCER" and sent.parent_span_id is None
    assert sent.attributes["messaging.system"] == "kafka"
    assert sent.attributes["messaging.operation.type"] == "send"
    assert sent.attributes["messaging.destination.name"] == topics.requests
    assert sent.attributes["kzero.job_id"] == job_id
    assert sent.attributes["messaging.message.id"] == result.get("requestid")
    assert "messaging.kafka.offset" in sent.attributes and "messaging.destination.partition.id" in sent.attributes
    consumed = one(spans, name=f"process {topics.requests}", service=worker)
    assert consumed.kind == "CONSUMER" and consumed.parent_span_id == sent.span_id
    assert consumed.attributes["messaging.operation.type"] == "process"
    assert consumed.attributes["messaging.consumer.group.name"] == topics.group
    assert consumed.attributes["messaging.destination.partition.id"] == sent.attributes[
        "messaging.destination.partition.id"]
    assert consumed.attributes["messaging.kafka.offset"] == sent.attributes["messaging.kafka.offset"]
    assert consumed.attributes["messaging.message.id"] == result.get("requestid")
    assert consumed.attributes["kzero.request_id"] == result.get("requestid")
    assert consumed.attributes["kzero.job_id"] == job_id
    produced = one(spans, name=f"send {result_topic}", service=worker)
    assert produced.kind == "PRODUCER" and produced.parent_span_id == consumed.span_id
    assert produced.attributes["messaging.destination.name"] == result_topic
    assert produced.attributes["messaging.message.id"] == result.id
    assert span_id_of(result.get("traceparent")) == produced.span_id, "the event carries its send span"
    return consumed, produced


def call_spans_reach_the_predictor(spans: list[Span], call: Span) -> None:
    """Under the worker's ``predict`` span: CLIENT span(s), and below one of them the predictor's spans."""
    clients = [s for s in spans if s.kind == "CLIENT" and s.parent_span_id == call.span_id]
    assert clients, f"no CLIENT span under {call.name}:\n{tree(spans)}"
    server = [s for s in spans if s.service == PREDICTOR and s.kind == "SERVER"]
    assert server, f"no predictor SERVER span:\n{tree(spans)}"
    by_id = {s.span_id: s for s in spans}

    def ancestors(span: Span) -> Iterator[str]:
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            yield span.span_id

    client_ids = {c.span_id for c in clients}
    assert any(client_ids & set(ancestors(s)) for s in server), f"predictor not under the client:\n{tree(spans)}"
    assert any(s.service == PREDICTOR and s.name.startswith("infer") for s in spans), tree(spans)


# -- (a) and (b) ---------------------------------------------------------------------------------


def test_binary_job_is_one_trace_per_request_across_submit_worker_predictor_and_result(
    kafka_bootstrap: str, topics: Topics, workers, embed_server: PredictorProcess, otlp_receiver: OtlpReceiver,
    tag: str, tmp_path: Path,
) -> None:
    # One request per micro-batch here, so every request has a predictor call of its own (merged calls
    # are test (b)'s).
    workers(embed_server.url, "--max-batch", "1")
    job_id = submit(kafka_bootstrap, topics, otlp_receiver, tag, [f"sentence {i} about kafka" for i in range(6)],
                    "binary", tmp_path)
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.events) >= 6, timeout_s=120)
    by_trace = {trace_id_of(e.get("traceparent")): e for e in results.events}
    assert len(by_trace) == 6, "one trace per request"
    for record, event in zip(results.records, results.events, strict=True):
        assert record.header("traceparent").decode() == event.get("traceparent"), "per-hop header = CE context"
    traces = wait_for_traces(otlp_receiver, set(by_trace), lambda spans: (
        named(f"send {topics.results}", f"kzero-worker-{tag}")(spans) and named(f"send {topics.requests}",
                                                                                 f"kzero-submit-{tag}")(spans)
        and any(s.service == PREDICTOR and s.kind == "SERVER" for s in spans)))
    for trace_id, result in by_trace.items():
        spans = traces[trace_id]
        consumed, _ = assert_request_chain(spans, topics, tag, job_id, result, topics.results)
        call = one(spans, name="predict minilm", service=f"kzero-worker-{tag}")
        assert call.parent_span_id == consumed.span_id and call.attributes["kzero.attempt"] == 1
        assert consumed.attributes["kzero.attempt"] == 1 and consumed.status_code != "ERROR"
        call_spans_reach_the_predictor(spans, call)
    request_spans = {(t, one(traces[t], name=f"process {topics.requests}").span_id) for t in by_trace}
    batches = [s for s in otlp_receiver.spans(service=f"kzero-worker-{tag}") if s.name.startswith("process batch")]
    assert {link for batch in batches for link in batch.links} == request_spans
    assert all(b.attributes["kzero.batch_size"] == 1 and b.parent_span_id is None for b in batches)
    results.close()


def test_a_merged_call_keeps_every_request_in_its_own_trace_down_to_the_predictor(
    kafka_bootstrap: str, topics: Topics, workers, embed_server: PredictorProcess, otlp_receiver: OtlpReceiver,
    tag: str, tmp_path: Path,
) -> None:
    # 20 structured events, one micro-batch of 20, one predictor call: each request's trace still
    # reaches the predictor through its instance's entry in parameters.traceparents.
    n = 20
    worker = f"kzero-worker-{tag}"
    workers(embed_server.url, "--output-mode", "structured", "--max-batch", str(n), "--max-wait-ms", "30000")
    job_id = submit(kafka_bootstrap, topics, otlp_receiver, tag, [f"structured {i}" for i in range(n)],
                    "structured", tmp_path)
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.events) >= n, timeout_s=120)
    for record in results.records:
        structured = json.loads(record.value)
        assert record.header("content-type").startswith(b"application/cloudevents+json")
        assert record.header("traceparent").decode() == structured["traceparent"], "traceparent in the JSON"
    by_trace = {trace_id_of(e.get("traceparent")): e for e in results.events}
    assert len(by_trace) == n
    traces = wait_for_traces(otlp_receiver, set(by_trace), lambda spans: named(f"send {topics.results}", worker)(
        spans) and named(f"send {topics.requests}", f"kzero-submit-{tag}")(spans)
        and named("item minilm", PREDICTOR)(spans))
    consumers, calls, items = {}, {}, {}
    for trace_id, result in by_trace.items():
        spans = traces[trace_id]
        consumers[trace_id], _ = assert_request_chain(spans, topics, tag, job_id, result, topics.results)
        calls[trace_id] = one(spans, name="predict minilm", service=worker)
        assert calls[trace_id].parent_span_id == consumers[trace_id].span_id
        assert calls[trace_id].attributes["kzero.batch_size"] == n and calls[trace_id].attributes["kzero.attempt"] == 1
        items[trace_id] = one(spans, name="item minilm", service=PREDICTOR)
        assert items[trace_id].parent_span_id == calls[trace_id].span_id, tree(spans)
        assert items[trace_id].attributes["kzero.batch_size"] >= 1
        assert items[trace_id].attributes["kzero.queue_wait_ms"] >= 0
        assert items[trace_id].attributes["gen_ai.operation.name"] == "embeddings"
    # One HTTP call, made under the first request's span: only that trace has the client and server
    # spans; its span links to the other requests and theirs link back to it.
    [lead] = [t for t, c in calls.items() if any(s.kind == "CLIENT" and s.parent_span_id == c.span_id
                                                 for s in traces[t])]
    served = lambda spans: named("infer minilm", PREDICTOR)(spans) and any(  # noqa: E731
        s.kind == "SERVER" and s.service == PREDICTOR for s in spans)
    otlp_receiver.wait_for(lambda _: served(otlp_receiver.trace(lead)), TRACE_WAIT_S)
    traces[lead] = otlp_receiver.trace(lead)
    call_spans_reach_the_predictor(traces[lead], calls[lead])
    assert set(calls[lead].links) == {(t, consumers[t].span_id) for t in by_trace if t != lead}
    assert all(calls[t].links == ((lead, calls[lead].span_id),) for t in by_trace if t != lead)
    infer = one(traces[lead], name="infer minilm", service=PREDICTOR)
    assert infer.attributes["kzero.items"] == n
    assert all(item.links == ((lead, infer.span_id),) for item in items.values()), "each item names its request"
    assert not [s for t in by_trace if t != lead for s in traces[t] if s.kind in ("CLIENT", "SERVER")]
    # The predictor's batch span(s) link every item; each item names its batch.
    otlp_receiver.wait_for(lambda spans: {(t, i.span_id) for t, i in items.items()} <= {
        link for s in spans if s.name == "batch minilm" for link in s.links}, TRACE_WAIT_S)
    batches = {s.span_id: s for s in otlp_receiver.spans(name="batch minilm", service=PREDICTOR)}
    for trace_id, item in items.items():
        assert (trace_id, item.span_id) in batches[item.attributes["kzero.batch_id"]].links
    worker_batches = [s for s in otlp_receiver.spans(service=worker) if s.name.startswith("process batch")]
    assert {link for batch in worker_batches for link in batch.links} == {
        (t, c.span_id) for t, c in consumers.items()}
    assert [b.attributes["kzero.batch_size"] for b in worker_batches] == [n]
    results.close()


# -- (c) retries ---------------------------------------------------------------------------------


class FlakyProxy:
    """Answers 503 (Retry-After: 0) to the first ``failures`` requests, then forwards to ``target``."""

    def __init__(self, target: str, failures: int) -> None:
        self.target = target
        self.failures = failures
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    self._reply(503, b'{"error": "warming up"}', {"Retry-After": "0"})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() in (
                    "content-type", "traceparent", "tracestate", "baggage")}
                request = urllib.request.Request(proxy.target + self.path, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=60) as response:
                    self._reply(response.status, response.read(), {})

            def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FlakyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_retried_request_stays_one_trace_with_every_attempt(
    kafka_bootstrap: str, topics: Topics, workers, embed_server: PredictorProcess, otlp_receiver: OtlpReceiver,
    tag: str, tmp_path: Path,
) -> None:
    worker = f"kzero-worker-{tag}"
    with FlakyProxy(embed_server.url, failures=2) as proxy:
        workers(proxy.url, "--max-attempts", "5")
        job_id = submit(kafka_bootstrap, topics, otlp_receiver, tag, ["retried sentence"], "binary", tmp_path)
        results = TopicReader(kafka_bootstrap, topics.results)
        results.wait_for(lambda r: len(r.events) >= 1, timeout_s=120)
    [result] = results.events
    trace_id = trace_id_of(result.get("traceparent"))
    spans = wait_for_traces(otlp_receiver, {trace_id}, lambda spans: named(f"send {topics.results}", worker)(spans)
                            and sum(s.kind == "CLIENT" and s.service == worker for s in spans) >= 3
                            and any(s.service == PREDICTOR and s.kind == "SERVER" for s in spans))[trace_id]
    consumed, _ = assert_request_chain(spans, topics, tag, job_id, result, topics.results)
    assert consumed.attributes["kzero.attempt"] == 3
    call = one(spans, name="predict minilm", service=worker)
    assert call.parent_span_id == consumed.span_id
    assert call.attributes["kzero.attempt"] == 3 and call.events.count("retry") == 2
    attempts = [s for s in spans if s.kind == "CLIENT" and s.parent_span_id == call.span_id]
    assert len(attempts) == 3, tree(spans)
    first, second, last = sorted(attempts, key=lambda s: s.start_ns)
    assert first.status_code == second.status_code == "ERROR" and last.status_code != "ERROR"
    assert first.attributes.get("error.type") == second.attributes.get("error.type") == "503"
    call_spans_reach_the_predictor(spans, call)
    otlp_receiver.wait_for(lambda _: any(p == {"reason": "503"} for p in otlp_receiver.points(
        "kzero.retries", service=worker)), TRACE_WAIT_S)
    results.close()


# -- (d) DLQ and (e) metrics ---------------------------------------------------------------------


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def test_dead_letters_keep_the_request_trace_and_worker_metrics_are_exported(
    kafka_bootstrap: str, topics: Topics, workers, embed_server: PredictorProcess, otlp_receiver: OtlpReceiver,
    tag: str, tmp_path: Path,
) -> None:
    worker = f"kzero-worker-{tag}"
    port = free_port()
    workers(embed_server.url, "--metrics-port", str(port))
    # "" is rejected by the predictor (400): dead-lettered after its merged call is split up.
    job_id = submit(kafka_bootstrap, topics, otlp_receiver, tag, ["fine", "", "also fine"], "structured", tmp_path)
    # Not a CloudEvent at all, but it carries a per-hop traceparent: its dead letter continues that trace.
    foreign = "00-5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f5f-6a6a6a6a6a6a6a6a-01"
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    producer.send(topics.requests, value=b"plain bytes", headers=[("traceparent", foreign.encode())]).get(30)
    producer.close()
    dlq, results = TopicReader(kafka_bootstrap, topics.dlq), TopicReader(kafka_bootstrap, topics.results)
    dlq.wait_for(lambda r: len(r.events) >= 2, timeout_s=120)
    results.wait_for(lambda r: len(r.events) >= 2, timeout_s=60)
    rejected = one_event(dlq.events, errorcode="rejected")
    invalid = one_event(dlq.events, errorcode="invalid-event")
    original = rejected.data["request"]
    assert original["id"] == rejected.get("requestid") and trace_id_of(original["traceparent"]) == trace_id_of(
        rejected.get("traceparent")), "the DLQ event continues the request's trace"
    assert original["traceparent"] != rejected.get("traceparent"), "the embedded request keeps its own context"
    trace_id, foreign_trace = trace_id_of(rejected.get("traceparent")), foreign.split("-")[1]
    traces = wait_for_traces(otlp_receiver, {trace_id, foreign_trace}, named(f"send {topics.dlq}", worker))
    spans = traces[trace_id]
    consumed, dead = assert_request_chain(spans, topics, tag, job_id, rejected, topics.dlq)
    assert original["traceparent"].split("-")[2] == consumed.parent_span_id, "original = the submit's context"
    assert consumed.status_code == "ERROR" and consumed.attributes["kzero.error_code"] == "rejected"
    assert dead.attributes["messaging.destination.name"] == topics.dlq
    assert "messaging.kafka.offset" in dead.attributes
    assert trace_id_of(invalid.get("traceparent")) == foreign_trace
    [foreign_consumer] = [s for s in traces[foreign_trace] if s.kind == "CONSUMER"]
    assert foreign_consumer.parent_span_id == foreign.split("-")[2] and foreign_consumer.status_code == "ERROR"

    # (e) metrics, over OTLP and on Prometheus
    wanted = {"kzero.dlq.events", "kzero.consumer.lag", "kzero.events.processed", "kzero.worker.batch.size",
              "kzero.event.latency"}
    otlp_receiver.wait_for(lambda _: wanted <= otlp_receiver.metric_names(service=worker), TRACE_WAIT_S)
    codes = {p.get("code") for p in otlp_receiver.points("kzero.dlq.events", service=worker)}
    assert codes == {"rejected", "invalid-event"}
    lag = otlp_receiver.points("kzero.consumer.lag", service=worker)
    assert {p["topic"] for p in lag} == {topics.requests} and {p["partition"] for p in lag} <= {"0", "1", "2", "3"}
    outcomes = {p.get("outcome") for p in otlp_receiver.points("kzero.events.processed", service=worker)}
    assert outcomes == {"succeeded", "dead_lettered"}
    text = scrape(port)
    assert 'kzero_dlq_events_total{code="rejected"} 1.0' in text
    assert 'kzero_dlq_events_total{code="invalid-event"} 1.0' in text
    lag_lines = [line for line in text.splitlines() if line.startswith("kzero_consumer_lag{")]
    assert lag_lines and all(f'topic="{topics.requests}"' in line and line.endswith(" 0.0") for line in lag_lines)
    assert 'kzero_events_processed_total{outcome="succeeded"} 2.0' in text
    assert "kzero_worker_batch_size_bucket" in text and "kzero_event_latency_seconds_count" in text

    # Replaying the dead letter continues the original request's trace.
    env = {**os.environ, **otlp_receiver.env(), "OTEL_SERVICE_NAME": f"kzero-replay-{tag}"}
    replayed = subprocess.run(
        [sys.executable, "-m", "eventing", "replay", "--bootstrap-servers", kafka_bootstrap, "--dlq-topic", topics.dlq,
         "--topic", topics.requests, "--job-id", job_id, "--code", "rejected"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert replayed.returncode == 0 and json.loads(replayed.stdout.strip().splitlines()[-1])["replayed"] == 1, \
        replayed.stderr
    resent = one(wait_for_traces(otlp_receiver, {trace_id}, named(f"send {topics.requests}", f"kzero-replay-{tag}"))[
        trace_id], service=f"kzero-replay-{tag}")
    assert resent.kind == "PRODUCER" and resent.parent_span_id == original["traceparent"].split("-")[2]
    dlq.close()
    results.close()


def one_event(events: list[Event], **attributes: str) -> Event:
    found = [e for e in events if all(e.get(k) == v for k, v in attributes.items())]
    assert len(found) == 1, [e.attributes for e in events]
    return found[0]


# -- (f) the full chain --------------------------------------------------------------------------


def test_a_merged_rag_call_keeps_each_question_in_its_own_trace_through_transformer_and_predictors(
    kafka_bootstrap: str, topics: Topics, workers, rag_server: PredictorProcess,
    otlp_receiver: OtlpReceiver, tag: str, tmp_path: Path,
) -> None:
    n = 3
    worker = f"kzero-worker-{tag}"
    transformer = f"kzero-transformer-{rag_server.model_name}"
    workers(rag_server.url, "--max-batch", str(n), "--max-wait-ms", "30000", model=rag_server.model_name)
    questions = [{"question": q, "top_k": 2, "parameters": {"max_new_tokens": 8}} for q in (
        "Where do messages that can never be handled go?", "Which protocol uses protobuf over HTTP/2?",
        "What scales a worker on consumer lag?")]
    job_id = submit(kafka_bootstrap, topics, otlp_receiver, tag, questions, "binary", tmp_path)
    results = TopicReader(kafka_bootstrap, topics.results)
    results.wait_for(lambda r: len(r.events) >= n, timeout_s=300)
    assert all(e.data["predictions"][0]["answer"] for e in results.events)
    by_trace = {trace_id_of(e.get("traceparent")): e for e in results.events}
    assert len(by_trace) == n

    def complete(spans: list[Span]) -> bool:
        return (named(f"send {topics.results}", worker)(spans) and named("rag.usage", transformer)(spans)
                and named("infer minilm", PREDICTOR)(spans) and named("infer smol", "kzero-predictor-smol")(spans)
                and {PREDICTOR, "kzero-predictor-smol"} <= {s.service for s in spans if s.kind == "SERVER"}
                and any(s.attributes.get("db.system") == "milvus" for s in spans))

    wait_for_traces(otlp_receiver, set(by_trace), complete)
    otlp_receiver.wait_for(lambda spans: any(
        s.service == transformer and s.kind == "SERVER" and s.trace_id in by_trace for s in spans), TRACE_WAIT_S)
    traces = {t: otlp_receiver.trace(t) for t in by_trace}
    servers, items = [], []
    for trace_id, result in by_trace.items():
        spans = traces[trace_id]
        shown = tree(spans)
        assert_request_chain(spans, topics, tag, job_id, result, topics.results)
        call = one(spans, name=f"predict {rag_server.model_name}", service=worker)
        assert call.attributes["kzero.batch_size"] == n
        item = one(spans, name=f"item {rag_server.model_name}", service=transformer)
        assert item.parent_span_id == call.span_id, shown
        items.append(item)
        steps = {s.name: s for s in spans if s.service == transformer and s.name.startswith("rag.")}
        assert {"rag.embed_query", "rag.retrieve", "rag.generate"} <= set(steps), shown
        assert all(s.parent_span_id == item.span_id for s in steps.values()), "the chain runs in its item span"
        search = [s for s in spans if s.attributes.get("db.system") == "milvus"]
        assert [s.parent_span_id for s in search] == [steps["rag.retrieve"].span_id]
        by_id = {s.span_id: s for s in spans}
        for step, predictor, model in (("rag.embed_query", PREDICTOR, "minilm"),
                                       ("rag.generate", "kzero-predictor-smol", "smol")):
            [client] = [s for s in spans if s.kind == "CLIENT" and s.parent_span_id == steps[step].span_id]
            server = one(spans, service=predictor, kind="SERVER")
            assert server.parent_span_id == client.span_id, shown
            assert one(spans, name=f"infer {model}", service=predictor).parent_span_id == server.span_id
        servers += [s for s in spans if s.service == transformer and s.kind == "SERVER"]
        assert all(by_id.get(s.parent_span_id) is not None for s in spans if s.kind == "SERVER"), shown
    # One call to the transformer: its SERVER span is in the first request's trace only.
    [server] = servers
    assert all(item.links == ((server.trace_id, server.span_id),) for item in items), "each item names its request"
    results.close()
