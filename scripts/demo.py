"""`make demo`: the main job on the embedded default, end to end on this machine.

1. Starts the embedding and the generation predictor on free loopback ports and sends one request
   of each protocol (v1, v2, gRPC, OpenAI) to each, printing answers and timings.
2. Starts a single-node Kafka broker (scripts/kafka.sh, so KZERO_KAFKA_PORT, KZERO_KAFKA_DATA and
   the other KZERO_KAFKA_* settings apply; or $KAFKA_BOOTSTRAP_SERVERS with the
   KAFKA_SECURITY_PROTOCOL/KAFKA_SASL_*/KAFKA_SSL_CAFILE login of `python -m eventing`).
3. Ingests the corpus in docs/corpus into Milvus Lite, publishes one more document as a
   dev.kzero.document.upsert event that the document worker (`python -m eventing worker --handler
   documents`) writes into the same collection, starts the RAG transformer in front of the
   generation predictor, and asks a few questions (one answered from that document), printing
   answers with their mode (generative, or extractive when the chain quoted its top passage) and sources.
4. Creates the job topics, runs the eventing worker against the embedding predictor, submits a
   batch job of CloudEvents, collects every result and prints the job's throughput.
5. Starts the OpenAI Batch API (`python -m eventing batch-api`) over the same topics and runs a small
   embeddings batch through it with the `openai` client: upload, create, poll, download the output.
Everything is shut down at the end. A part that fails or times out ends the demo with one line
naming it and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import openai
from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig
from kserve.protocol.infer_type import InferInput, InferRequest

# The checkout this script is in, ahead of whatever checkout the virtualenv's editable install names.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eventing.config import DEFAULT_DLQ, DEFAULT_DOCUMENTS, DEFAULT_REQUESTS, DEFAULT_RESULTS, KafkaSecurity
from eventing.documents import document_event
from eventing.jobs import collect, send_events, submit
from eventing.topics import ensure_topics, group_lag
from observability.telemetry import setup_telemetry
from serving.launch import PredictorProcess, free_port, http_status
from transformers_pre.ingest.readers import Document

LOGS = Path("data/demo-logs")
JOB_TIMEOUT_S = 600


class DemoFailed(Exception):
    """A part of the demo did not work; the message says which and where to look."""


def v2_request(model: str, texts: list[str], **parameters: object) -> InferRequest:
    tensor = InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array(texts, dtype=object), binary_data=False)
    return InferRequest(model_name=model, infer_inputs=[tensor], parameters=parameters or None)


async def timed(label: str, call) -> object:
    started = time.perf_counter()
    result = await call
    print(f"  {label:<28} {1000 * (time.perf_counter() - started):7.1f} ms")
    return result


async def embed_demo(server: PredictorProcess) -> None:
    texts = ["Kafka carries CloudEvents to the worker.", "KServe scales predictors to zero."]
    v1, v2 = InferenceRESTClient(RESTConfig(protocol="v1")), InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc = InferenceGRPCClient(server.grpc_target)
    oa = openai.AsyncOpenAI(base_url=server.url + "/openai/v1", api_key="unused")
    try:
        r1 = await timed("v1 :predict", v1.infer(server.url, {"instances": texts}, model_name="minilm"))
        r2 = await timed("v2 /infer", v2.infer(server.url, v2_request("minilm", texts), model_name="minilm"))
        r3 = await timed("gRPC ModelInfer", grpc.infer(v2_request("minilm", texts)))
        r4 = await timed("OpenAI /embeddings", oa.embeddings.create(model="minilm", input=texts))
    finally:
        await v1.close(), await v2.close(), await grpc.close(), await oa.close()
    vectors = np.array(r1["predictions"])
    print(f"  v1 shape {vectors.shape}, v2 {r2.outputs[0].shape}, gRPC {r3.outputs[0].shape}, "
          f"OpenAI {len(r4.data)}x{len(r4.data[0].embedding)}; cosine(text0, text1) = {vectors[0] @ vectors[1]:.3f}")


async def generate_demo(server: PredictorProcess) -> None:
    prompt = "The capital of France is"
    v1, v2 = InferenceRESTClient(RESTConfig(protocol="v1")), InferenceRESTClient(RESTConfig(protocol="v2"))
    grpc = InferenceGRPCClient(server.grpc_target)
    oa = openai.AsyncOpenAI(base_url=server.url + "/openai/v1", api_key="unused")
    body = {"instances": [{"messages": [{"role": "user", "content": "What is the capital of France?"}]}],
            "parameters": {"max_new_tokens": 24}}
    try:
        r1 = await timed("v1 :predict (chat)", v1.infer(server.url, body, model_name="smol"))
        r2 = await timed("v2 /infer", v2.infer(server.url, v2_request("smol", [prompt], max_new_tokens=12),
                                               model_name="smol"))
        r3 = await timed("gRPC ModelInfer", grpc.infer(v2_request("smol", [prompt], max_new_tokens=12)))
        started = time.perf_counter()
        stream = await oa.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": "Name three colors."}], max_tokens=32, stream=True,
            temperature=0,
        )
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        print(f"  {'OpenAI chat (stream)':<28} {1000 * (time.perf_counter() - started):7.1f} ms")
    finally:
        await v1.close(), await v2.close(), await grpc.close(), await oa.close()
    prediction = r1["predictions"][0]
    print(f"  v1 chat   -> {prediction['text']!r} ({prediction['finish_reason']}, {prediction['usage']})")
    print(f"  v2        -> {prompt + r2.outputs[0].data[0]!r}")
    grpc_text = r3.outputs[0].as_numpy()[0]
    print(f"  gRPC      -> {prompt + (grpc_text.decode() if isinstance(grpc_text, bytes) else grpc_text)!r}")
    print(f"  streamed  -> {''.join(pieces)!r} in {len([p for p in pieces if p])} pieces")


def _kafka_script(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "scripts/kafka.sh", command], capture_output=True, text=True, check=False)


def start_broker() -> tuple[str, bool]:
    """(bootstrap address, whether this demo started the broker and so stops it)."""
    if bootstrap := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return bootstrap, False
    already_running = _kafka_script("status").returncode == 0
    if not already_running:
        print("starting Kafka (first run downloads the jars from Maven Central) ...")
    out = _kafka_script("start")
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoFailed(f"scripts/kafka.sh start failed (exit {out.returncode}): {reason}")
    return lines[-1], not already_running


def kafka_demo(embed: PredictorProcess, bootstrap: str, security: KafkaSecurity, jobs: int = 2000) -> None:
    # Before the worker and the collector start: on an empty broker they would otherwise race
    # the worker's own topic creation.
    ensure_topics(bootstrap, [DEFAULT_REQUESTS, DEFAULT_RESULTS, DEFAULT_DLQ], security=security)
    run_job(embed, bootstrap, security, jobs)


def run_job(embed: PredictorProcess, bootstrap: str, security: KafkaSecurity, jobs: int) -> None:
    job_id = f"demo-{uuid.uuid4().hex[:6]}"
    source = LOGS / "job.jsonl"
    source.write_text("".join(json.dumps(f"document {i}: scale to zero, wake on events") + "\n" for i in range(jobs)))
    worker = subprocess.Popen(
        [sys.executable, "-m", "eventing", "worker", "--bootstrap-servers", bootstrap, "--predictor-url", embed.url,
         "--model", "minilm", "--group", f"demo-{job_id}", "--max-batch", "64"],
        stdout=(LOGS / "worker.log").open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        started = time.perf_counter()
        # Submitting under a real tracer starts each request's trace at its producer span.
        telemetry = setup_telemetry("kzero-submit", dict(os.environ), set_global=False)
        with source.open() as lines:
            count = submit(bootstrap, DEFAULT_REQUESTS, job_id, lines, progress=False,
                           tracer=telemetry.tracer("kzero.demo"), security=security)
        telemetry.shutdown()
        print(f"  submitted job {job_id}: {count} request events to {DEFAULT_REQUESTS}")
        job = collect(bootstrap, [DEFAULT_RESULTS, DEFAULT_DLQ], job_id, count, timeout_s=JOB_TIMEOUT_S,
                      progress=False, security=security, give_up=lambda: worker.poll() is not None)
        seconds = time.perf_counter() - started
        print(f"  {job.summary()}")
        if not job.complete and worker.poll() is not None:
            raise DemoFailed(f"the worker exited with {worker.returncode}: {job.summary()}; see {LOGS}/worker.log")
        if not job.complete:
            raise DemoFailed(f"the job did not finish within {JOB_TIMEOUT_S}s: {job.summary()}; "
                             f"see {LOGS}/worker.log")
        if job.errors:
            raise DemoFailed(f"requests were dead-lettered: {job.summary()}; see {LOGS}/worker.log")
        print(f"  {count} events in {seconds:.1f}s = {count / seconds:.0f} events/s (Kafka, worker, predictor)")
        sample = next(iter(job.results.values()))
        print(f"  a result event: type {sample.type}, requestid {sample.get('requestid')}, "
              f"{len(sample.data['predictions'][0])}-d embedding")
        traceparent = sample.get("traceparent") or ""
        trace_id = traceparent.split("-")[1] if traceparent.count("-") == 3 else "none"
        print(f"  its trace id {trace_id}: one trace from its submit span through the worker to this "
              "result (set OTEL_EXPORTER_OTLP_ENDPOINT to export the spans)")
    finally:
        stop_worker(worker)


BATCH_LINES = 200


def batch_api_demo(embed: PredictorProcess, bootstrap: str) -> None:
    """A small embeddings batch through the OpenAI Batch API, with the official client (its processes log into
    a secured Kafka from the KAFKA_* variables themselves)."""
    run_id = uuid.uuid4().hex[:6]
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "eventing", "worker", "--bootstrap-servers", bootstrap, "--predictor-url", embed.url,
         "--model", "minilm", "--group", f"demo-batch-{run_id}"],
        stdout=(LOGS / "batch-worker.log").open("ab"), stderr=subprocess.STDOUT,
    )
    api = subprocess.Popen(
        [sys.executable, "-m", "eventing", "batch-api", "--bootstrap-servers", bootstrap, "--port", str(port),
         "--data-dir", str(LOGS / f"batch-api-{run_id}"), "--model", f"minilm={DEFAULT_REQUESTS}",
         "--group", f"demo-batch-api-{run_id}"],
        stdout=(LOGS / "batch-api.log").open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while http_status(f"http://127.0.0.1:{port}/v2/health/live") != 200:
            if api.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(f"the batch API did not start; see {LOGS}/batch-api.log")
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo", max_retries=2)
        lines = "".join(json.dumps({"custom_id": f"doc-{i}", "method": "POST", "url": "/v1/embeddings",
                                    "body": {"model": "minilm", "input": f"document {i}: wake on events"}}) + "\n"
                        for i in range(BATCH_LINES))
        started = time.perf_counter()
        upload = client.files.create(file=("demo.jsonl", lines.encode()), purpose="batch")
        batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")
        print(f"  client.batches.create -> {batch.id} ({batch.status})")
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            if worker.poll() is not None or api.poll() is not None or time.monotonic() > deadline:
                raise DemoFailed(f"batch {batch.id} stuck {batch.status}; see {LOGS}/batch-api.log and "
                                 f"{LOGS}/batch-worker.log")
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
        seconds = time.perf_counter() - started
        counts = batch.request_counts
        print(f"  {batch.status}: {counts.completed if counts else 0} completed, {counts.failed if counts else 0} "
              f"failed of {counts.total if counts else 0} in {seconds:.1f}s")
        if batch.status != "completed" or batch.output_file_id is None or (counts and counts.failed):
            raise DemoFailed(f"batch {batch.id} ended {batch.status} ({counts}); see {LOGS}/batch-api.log")
        first = json.loads(client.files.content(batch.output_file_id).text.splitlines()[0])
        body = first["response"]["body"]
        print(f"  output line: custom_id {first['custom_id']}, status {first['response']['status_code']}, "
              f"{len(body['data'][0]['embedding'])}-d embedding, usage {body.get('usage')}")
    finally:
        stop_worker(api, "batch API")
        stop_worker(worker)


def stop_worker(worker: subprocess.Popen[bytes], name: str = "worker") -> None:
    if worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        print(f"  {name} exited with {worker.wait(60)} after SIGTERM")
    except subprocess.TimeoutExpired:
        worker.kill()
        print(f"  {name} killed: still running 60s after SIGTERM (exit {worker.wait()})")


# Not in docs/corpus: it reaches the collection as a document event, through the document worker.
NEWS = Document("demo-news", "The kzero demo has a mascot: a red fox called Ember, who wakes up whenever a request "
                              "arrives and goes back to sleep when the cluster scales to zero.", {"title": "Mascot"})
QUESTIONS = [
    "How does kzero avoid paying for idle GPUs?",
    "What happens to a request that keeps failing?",
    "What is the name of the kzero mascot?",
]
DOCUMENTS_TIMEOUT_S = 120


def sync_documents(embed: PredictorProcess, db: Path, bootstrap: str, security: KafkaSecurity) -> None:
    """Publish ``NEWS`` to the documents topic and run the document worker until it has applied it.

    The worker stops before the transformer starts: a Milvus Lite file serves one process at a time.
    """
    group = f"demo-documents-{uuid.uuid4().hex[:6]}"
    ensure_topics(bootstrap, [DEFAULT_DOCUMENTS, DEFAULT_DLQ], security=security)
    started = time.perf_counter()
    send_events(bootstrap, DEFAULT_DOCUMENTS, [document_event(NEWS)], "binary", progress=False, security=security)
    worker = subprocess.Popen(
        [sys.executable, "-m", "eventing", "worker", "--handler", "documents", "--bootstrap-servers", bootstrap,
         "--group", group, "--milvus-uri", str(db), "--collection", "kzero",
         "--embedder", f"{embed.url}#{embed.model_name}"],
        stdout=(LOGS / "documents.log").open("ab"), stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + DOCUMENTS_TIMEOUT_S
        while group_lag(bootstrap, group, DEFAULT_DOCUMENTS, security=security) > 0:
            if worker.poll() is not None:
                raise DemoFailed(f"the document worker exited with {worker.returncode}; see {LOGS}/documents.log")
            if time.monotonic() > deadline:
                raise DemoFailed(f"the document worker did not catch up within {DOCUMENTS_TIMEOUT_S}s; "
                                 f"see {LOGS}/documents.log")
            time.sleep(0.2)
        print(f"  document event {NEWS.doc_id!r} on {DEFAULT_DOCUMENTS} applied by the document worker in "
              f"{time.perf_counter() - started:.1f}s")
    finally:
        stop_worker(worker)


def rag_demo(generate: PredictorProcess, embed: PredictorProcess, bootstrap: str, security: KafkaSecurity) -> None:
    db = Path("data/kzero.db")
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "transformers_pre.ingest", "--milvus_uri", str(db), "--collection", "kzero",
         "--no_progress", "docs/corpus"], capture_output=True, text=True, check=True,
    )
    print(f"  ingested docs/corpus in {time.perf_counter() - started:.1f}s: {out.stdout.strip().splitlines()[-1]}")
    sync_documents(embed, db, bootstrap, security)
    # The chain for a small generator: trimmed passages, a short cited answer, no loops, and a quoted
    # sentence of the top passage (mode: extractive) when the answer strays from its sources.
    args = ["--predictor_host", f"127.0.0.1:{generate.http_port}", "--predictor_model", "smol",
            "--milvus_uri", str(db), "--collection", "kzero",
            "--chain_config", "transformers_pre/chains/small_generator.yaml"]
    with PredictorProcess(args, model_name="rag", module="transformers_pre", log_path=LOGS / "rag.log") as rag:
        print(f"  transformer ready in {rag.wait_ready():.1f}s at {rag.url}")
        for question in QUESTIONS:
            started = time.perf_counter()
            reply = httpx.post(f"{rag.url}/v1/models/rag:predict", json={"instances": [{"question": question}]},
                               timeout=300).json()["predictions"][0]
            print(f"\n  Q: {question}   ({1000 * (time.perf_counter() - started):.0f} ms)")
            # extractive: the generated answer did not match its sources, so the chain quoted the top passage
            print(f"  A ({reply['mode']}): {reply['answer']!r}")
            for n, source in enumerate(reply["sources"], start=1):
                cited = "*" if n in reply["citations"] else " "
                print(f"   {cited}[{n}] {source['doc_id']:<16} score {source['score']:.3f}")


class Progress:
    """The part running now, for the one-line failure message."""

    part = "starting"


def main() -> int:
    progress = Progress()
    try:
        run(progress)
    except DemoFailed as err:
        print(f"make demo: {progress.part} failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"make demo: interrupted during {progress.part}", file=sys.stderr)
        return 130
    except Exception as err:  # the script's edge: one line, never a traceback
        print(f"make demo: {progress.part} failed: {type(err).__name__}: {err} (logs in {LOGS}/)", file=sys.stderr)
        return 1
    return 0


def run(progress: Progress) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    embed = PredictorProcess(["--task", "embed", "--model_id", "all-minilm-l6-v2"], model_name="minilm",
                             log_path=LOGS / "minilm.log")
    generate = PredictorProcess(["--task", "generate", "--model_id", "smollm2-135m-instruct"], model_name="smol",
                                log_path=LOGS / "smol.log")
    with embed, generate:
        progress.part = "starting the predictors"
        print(f"starting predictors (logs in {LOGS}/) ...")
        print(f"  minilm ready in {embed.wait_ready():.1f}s at {embed.url} (gRPC {embed.grpc_target})")
        print(f"  smol   ready in {generate.wait_ready():.1f}s at {generate.url} (gRPC {generate.grpc_target})"
              " — the first start converts the GGUF file once")
        progress.part = "the embedding part"
        print("\nembeddings: all-MiniLM-L6-v2")
        asyncio.run(embed_demo(embed))
        progress.part = "the generation part"
        print("\ngeneration: SmolLM2-135M-Instruct")
        asyncio.run(generate_demo(generate))
        progress.part = "starting Kafka"
        security = KafkaSecurity.from_env(os.environ)  # the workers read the same variables
        bootstrap, started_broker = start_broker()
        print(f"\nKafka broker at {bootstrap}")
        try:
            progress.part = "the RAG part"
            print("\nretrieval-augmented generation: docs/corpus and a document event -> Milvus Lite -> "
                  "transformer -> SmolLM2")
            rag_demo(generate, embed, bootstrap, security)
            progress.part = "the Kafka part"
            print("\nbatch job: CloudEvents over Kafka")
            kafka_demo(embed, bootstrap, security)
            progress.part = "the batch API part"
            print("\nOpenAI Batch API over Kafka: python -m eventing batch-api, the openai client")
            batch_api_demo(embed, bootstrap)
        finally:
            if started_broker:
                _kafka_script("stop")
                print("  broker stopped")
        progress.part = "stopping the predictors"
    print("\npredictors stopped cleanly")


if __name__ == "__main__":
    sys.exit(main())
