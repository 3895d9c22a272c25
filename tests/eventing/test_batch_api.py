"""OpenAI's Batch API over Kafka, with the ``openai`` client: a real broker, a real worker process in front
of the session's embedding predictor (or the RAG transformer), and a real batch API process."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import openai
import pytest

from eventing.topics import ensure_topics
from serving.launch import PredictorProcess
from tests.conftest import start_predictor
from tests.eventing.batch_api_helpers import BatchApiProcess, embedding_lines, jsonl, lines_of, wait_batch
from tests.eventing.helpers import WorkerProcess, read_committed
from tests.predictors.metrics import scrape, value

pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class BatchTopics:
    """What ``WorkerProcess`` takes (its requests topic is the minilm model's)."""

    requests: str
    results: str
    dlq: str
    group: str


@dataclass
class Stack:
    bootstrap: str
    topics: BatchTopics
    api: BatchApiProcess
    worker: WorkerProcess

    @property
    def client(self) -> openai.OpenAI:
        return self.api.client()


def _topics(bootstrap: str) -> BatchTopics:
    tag = uuid.uuid4().hex[:8]
    topics = BatchTopics(f"batch-req-{tag}", f"batch-res-{tag}", f"batch-dlq-{tag}", f"batch-workers-{tag}")
    ensure_topics(bootstrap, [topics.requests, topics.results, topics.dlq], 2)
    return topics


@contextmanager
def running_stack(bootstrap: str, predictor: PredictorProcess, tmp_path_factory: pytest.TempPathFactory
                  ) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("batch-logs")
    topics = _topics(bootstrap)
    # "unserved" has a topic but no worker: its lines are sent and never answered.
    unserved = f"{topics.requests}-unserved"
    ensure_topics(bootstrap, [unserved], 1)
    worker = WorkerProcess(bootstrap, topics, predictor.url, logs / "worker.log").start()  # type: ignore[arg-type]
    api = BatchApiProcess(bootstrap, tmp_path_factory.mktemp("batch-data"),
                          {"minilm": topics.requests, "unserved": unserved}, topics.results, topics.dlq,
                          f"batch-api-{uuid.uuid4().hex[:8]}", logs / "batch-api.log",
                          extra=["--max-file-bytes", "200000"]).start()
    try:
        yield Stack(bootstrap, topics, api, worker)
    finally:
        api.stop()
        worker.stop()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, embed_server: PredictorProcess, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[Stack]:
    with running_stack(kafka_bootstrap, embed_server, tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def one_text_per_pass(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
                      ) -> Iterator[tuple[Stack, PredictorProcess]]:
    """A stack whose predictor embeds one text per forward pass: a text's vector then does not depend
    on its batch-mates (float sums differ in the last bits with the batch's shape), so a merged call's
    vectors can be compared exactly with single calls'."""
    predictor = start_predictor(tmp_path_factory, "minilm", ["--task", "embed", "--model_id", "all-minilm-l6-v2",
                                                             "--max_batch_size", "1"])
    try:
        with running_stack(kafka_bootstrap, predictor, tmp_path_factory) as running:
            yield running, predictor
    finally:
        assert predictor.stop() == 0


def test_an_embeddings_batch_completes_with_one_output_line_per_input_line(stack: Stack) -> None:
    client = stack.client
    upload = client.files.create(file=("in.jsonl", jsonl(embedding_lines(25, "minilm"))), purpose="batch")
    assert upload.purpose == "batch" and upload.bytes > 0
    assert client.files.retrieve(upload.id).filename == "in.jsonl"
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h",
                                  metadata={"job": "embeddings"})
    assert batch.status == "validating" and batch.metadata == {"job": "embeddings"}
    done = wait_batch(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (25, 25, 0)
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at  # type: ignore[operator]
    assert done.expires_at == done.created_at + 24 * 3600
    assert done.error_file_id is None
    lines = lines_of(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(25))
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        body = line["response"]["body"]
        assert body["object"] == "list" and len(body["data"][0]["embedding"]) == 384
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)  # a completed batch cannot be cancelled
    output = client.files.retrieve(done.output_file_id)  # type: ignore[arg-type]
    assert output.purpose == "batch_output"
    assert output.bytes == len(client.files.content(done.output_file_id).content)  # type: ignore[arg-type]


def _embeddings_calls(server: PredictorProcess) -> float:
    return value(scrape(server.url), "kzero_requests_total", route="/openai/v1/embeddings", code="200") or 0.0


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_merged_lines_get_the_bodies_they_would_have_had_sent_alone(
    one_text_per_pass: tuple[Stack, PredictorProcess], encoding: str
) -> None:
    """The worker merges embeddings lines into shared calls; each output line still has exactly the body
    of its own call: its own data indexed from 0, its own usage, no kzero field."""
    stack, embed_server = one_text_per_pass
    text = "line {}: events flow through kafka".format
    inputs: list[str | list[str]] = [text(i) if i % 3 else [text(i), text(i + 50)] for i in range(12)]
    lines = [{"custom_id": f"merged-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "minilm", "input": text, "encoding_format": encoding}} for i, text in enumerate(inputs)]
    before = _embeddings_calls(embed_server)
    client = stack.client
    upload = client.files.create(file=("merged.jsonl", jsonl(lines)), purpose="batch")
    done = wait_batch(client, client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                                                    completion_window="24h").id)
    assert done.status == "completed" and done.error_file_id is None, done
    calls = _embeddings_calls(embed_server) - before
    assert calls < len(lines), f"{calls:.0f} calls for {len(lines)} lines: nothing was merged"
    by_id = {line["custom_id"]: line["response"]["body"] for line in lines_of(client, done.output_file_id)}
    assert len(by_id) == len(lines)
    with httpx.Client(base_url=embed_server.url + "/openai", timeout=60) as http:
        for line in lines:
            alone = http.post(line["url"], json=line["body"])
            assert alone.status_code == 200, alone.text
            assert by_id[line["custom_id"]] == alone.json(), line["custom_id"]


def test_batches_list_newest_first_with_pagination(stack: Stack) -> None:
    client = stack.client
    upload = client.files.create(file=("p.jsonl", jsonl(embedding_lines(2, "minilm", "page"))), purpose="batch")
    made = [client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h").id
            for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    for batch_id in made:
        assert wait_batch(client, batch_id).status == "completed"
    assert upload.id in {f.id for f in client.files.list(purpose="batch")}
    metrics = httpx.get(f"{stack.api.url}/metrics").text
    completed = next(line for line in metrics.splitlines() if line.startswith('kzero_batches{status="completed"}'))
    assert float(completed.split()[-1]) >= 3
    sent = next(line for line in metrics.splitlines() if line.startswith("kzero_batch_lines_sent_total "))
    assert float(sent.split()[-1]) >= 6


def test_a_file_with_bad_lines_fails_the_batch_naming_each_line(stack: Stack) -> None:
    client = stack.client
    good = embedding_lines(1, "minilm", "ok")[0]
    lines = [
        good,
        "{not json",
        {"method": "POST", "url": "/v1/embeddings", "body": {"model": "minilm", "input": "x"}},
        {**good, "body": {"model": "minilm", "input": "again"}},
        {**good, "custom_id": "chat", "url": "/v1/chat/completions"},
        {**good, "custom_id": "nomodel", "body": {"model": "gpt-9", "input": "x"}},
    ]
    upload = client.files.create(file=("bad.jsonl", jsonl(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    failed = wait_batch(client, batch.id)
    assert failed.status == "failed" and failed.failed_at is not None and failed.output_file_id is None
    assert failed.errors is not None and failed.errors.data is not None
    found = {(e.line, e.code, e.param) for e in failed.errors.data}
    assert found == {(2, "invalid_json_line", None), (3, "missing_required_parameter", "custom_id"),
                     (4, "duplicate_custom_id", "custom_id"), (5, "mismatched_endpoint", "url"),
                     (6, "model_not_found", "body.model")}
    assert all(f"line {e.line}" in (e.message or "") for e in failed.errors.data)


def test_bad_requests_are_4xx_naming_the_field(stack: Stack) -> None:
    client = stack.client
    with pytest.raises(openai.APIStatusError) as too_large:
        client.files.create(file=("big.jsonl", b"x" * 300_000), purpose="batch")
    assert too_large.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="purpose"):
        client.files.create(file=("f.jsonl", b"{}\n"), purpose="fine-tune")
    upload = client.files.create(file=("f.jsonl", jsonl(embedding_lines(1, "minilm", "f"))), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/moderations",  # type: ignore[arg-type]
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                              completion_window="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError, match="input_file_id"):
        client.batches.create(input_file_id="file-nothere", endpoint="/v1/embeddings", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nothere")
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(upload.id)


def test_cancel_finishes_the_sent_lines_and_cancels_the_rest(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The model's topic has no worker until the batch is cancelled: its lines are sent but unanswered,
    and cancelling waits for them. Whatever was not sent by then is cancelled."""
    n = 1000
    logs = tmp_path_factory.mktemp("cancel")
    topics = BatchTopics(f"{stack.topics.requests}-quiet", stack.topics.results, stack.topics.dlq,
                         f"quiet-{uuid.uuid4().hex[:8]}")
    ensure_topics(stack.bootstrap, [topics.requests], 1)
    api = BatchApiProcess(stack.bootstrap, tmp_path_factory.mktemp("cancel-data"), {"minilm": topics.requests},
                          topics.results, topics.dlq, f"batch-api-{uuid.uuid4().hex[:8]}", logs / "api.log",
                          extra=["--send-chunk", "10"]).start()
    worker = WorkerProcess(stack.bootstrap, topics, stack.worker.predictor_url,  # type: ignore[arg-type]
                           logs / "worker.log")
    try:
        client = api.client()
        upload = client.files.create(file=("q.jsonl", jsonl(embedding_lines(n, "minilm", "q"))), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
        wait_batch(client, batch.id, lambda b: b.status != "validating", timeout_s=60)
        assert client.batches.cancel(batch.id).status in ("cancelling", "cancelled")
        # Lines on the topic now were sent before the cancel took effect; nobody has answered them yet.
        sent = {f"q-{int(e.id.rpartition('-')[2]) - 1}" for e in read_committed(stack.bootstrap, topics.requests)}
        if sent:
            assert client.batches.retrieve(batch.id).status == "cancelling"
        worker.start()
        done = wait_batch(client, batch.id)
        output, errors = lines_of(client, done.output_file_id), lines_of(client, done.error_file_id)
    finally:
        api.stop()
        worker.stop()
    assert done.status == "cancelled" and done.cancelled_at is not None and done.completed_at is None
    assert Counter(line["custom_id"] for line in output + errors) == Counter(f"q-{i}" for i in range(n))
    assert sent <= {line["custom_id"] for line in output}  # every line sent was answered
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert all(line["error"]["code"] == "batch_cancelled" for line in errors)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (
        n, len(output), len(errors))


def test_the_input_of_an_unfinished_batch_cannot_be_deleted(stack: Stack) -> None:
    client = stack.client
    upload = client.files.create(file=("u.jsonl", jsonl(embedding_lines(3, "unserved", "u"))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
    wait_batch(client, batch.id, lambda b: b.status == "in_progress", timeout_s=60)  # and never answered
    with pytest.raises(openai.ConflictError, match="input of batch"):
        client.files.delete(upload.id)
    assert client.files.retrieve(upload.id).id == upload.id


def test_a_batch_past_its_window_expires_with_an_error_line_per_unanswered_line(stack: Stack) -> None:
    client = stack.client
    upload = client.files.create(file=("x.jsonl", jsonl(embedding_lines(5, "unserved", "x"))), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings",
                                  completion_window="2s")  # type: ignore[arg-type]
    done = wait_batch(client, batch.id, timeout_s=60)
    assert done.status == "expired" and done.expired_at is not None and done.expired_at >= done.expires_at
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (5, 0, 5)
    errors = lines_of(client, done.error_file_id)
    assert sorted(line["custom_id"] for line in errors) == [f"x-{i}" for i in range(5)]
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert done.output_file_id is None


def test_a_sigkill_of_the_batch_api_mid_batch_loses_and_doubles_nothing(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Killed twice, once while sending and once while collecting: every line still has exactly one answer."""
    n = 1500
    logs = tmp_path_factory.mktemp("sigkill")
    api = BatchApiProcess(stack.bootstrap, tmp_path_factory.mktemp("sigkill-data"), {"minilm": stack.topics.requests},
                          stack.topics.results, stack.topics.dlq, f"batch-api-{uuid.uuid4().hex[:8]}",
                          logs / "batch-api.log", extra=["--send-chunk", "100"]).start()
    try:
        client = api.client()
        upload = client.files.create(file=("k.jsonl", jsonl(embedding_lines(n, "minilm", "k"))), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
        wait_batch(client, batch.id, lambda b: b.status == "in_progress", timeout_s=60)
        api.kill()  # while sending: some chunks saved, maybe one sent but not saved
        api.start()
        wait_batch(client, batch.id, lambda b: b.request_counts is not None and b.request_counts.completed > n // 3)
        api.kill()  # while results are being written
        api.start()
        done = wait_batch(client, batch.id, timeout_s=600)
        output = lines_of(client, done.output_file_id)
    finally:
        api.stop()
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (n, 0)
    ids = Counter(line["custom_id"] for line in output)
    assert ids == Counter(f"k-{i}" for i in range(n))


def test_chat_completions_batch_through_the_rag_transformer(
    kafka_bootstrap: str, rag_server: PredictorProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    logs = tmp_path_factory.mktemp("rag-batch")
    topics = _topics(kafka_bootstrap)
    worker = WorkerProcess(kafka_bootstrap, topics, rag_server.url, logs / "worker.log",  # type: ignore[arg-type]
                           model=rag_server.model_name).start()
    api = BatchApiProcess(kafka_bootstrap, tmp_path_factory.mktemp("rag-data"), {"rag": topics.requests},
                          topics.results, topics.dlq, f"batch-api-{uuid.uuid4().hex[:8]}", logs / "api.log").start()
    try:
        client = api.client()
        questions = ["What is Kafka?", "What does KServe do?"]
        lines = [{"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
                  "body": {"model": "rag", "messages": [{"role": "user", "content": q}], "max_tokens": 16,
                           "temperature": 0}} for i, q in enumerate(questions)]
        upload = client.files.create(file=("chat.jsonl", jsonl(lines)), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        done = wait_batch(client, batch.id)
        output = lines_of(client, done.output_file_id)
    finally:
        api.stop()
        worker.stop()
    assert done.status == "completed", done
    by_id = {line["custom_id"]: line for line in output}
    assert sorted(by_id) == ["chat-0", "chat-1"]
    for line in by_id.values():
        body = line["response"]["body"]
        assert body["object"] == "chat.completion"
        assert isinstance(body["choices"][0]["message"]["content"], str) and body["choices"][0]["message"]["content"]


def test_api_keys_are_honoured(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    topics = _topics(kafka_bootstrap)
    api = BatchApiProcess(kafka_bootstrap, tmp_path_factory.mktemp("keyed-data"), {"m": topics.requests},
                          topics.results, topics.dlq, f"batch-api-{uuid.uuid4().hex[:8]}",
                          tmp_path_factory.mktemp("keyed") / "api.log", env={"KZERO_API_KEYS": "k-one,k-two"}).start()
    try:
        with pytest.raises(openai.AuthenticationError):
            api.client("wrong").files.list()
        with pytest.raises(openai.AuthenticationError):
            api.client("wrong").batches.list()
        assert api.client("k-two").files.list().data == []
        assert api.client("k-one").batches.list().data == []
        assert api.stop() == 0  # SIGTERM: a clean shutdown
    finally:
        api.stop()
