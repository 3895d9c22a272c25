"""``python -m eventing worker|submit|results|replay``.

``worker --handler inference`` (the default) answers request events through a predictor or
transformer; ``worker --handler documents`` keeps a Milvus collection in sync with document events.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from kafka.errors import KafkaError
from pydantic import SecretStr, ValidationError

from eventing.config import (
    DEFAULT_DLQ,
    DEFAULT_DOCUMENTS,
    DEFAULT_REQUESTS,
    DEFAULT_RESULTS,
    DOCUMENTS_GROUP,
    Handler,
    KafkaSecurity,
    WorkerConfig,
)
from eventing.topics import ensure_topics
from events.errors import MalformedEvent
from events.kafka_binding import Mode
from observability.logs import LogConfig, setup_logging
from observability.telemetry import Telemetry, setup_telemetry
from serving.auth import add_api_keys_argument
from serving.client import WireProtocol
from serving.defaults import default_of
from serving.errors import InvalidInput, Unavailable
from serving.kserve_import import import_kserve
from serving.retry import RetryPolicy
from transformers_pre.ingest.config import IngestConfig

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from eventing.metrics import WorkerMetrics
    from eventing.processing import EventHandler

INSTRUMENTATION = "kzero.eventing"


def _bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                        help="default: $KAFKA_BOOTSTRAP_SERVERS")


def _worker_default(field: str) -> Any:
    return default_of(WorkerConfig, field)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eventing", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="consume events: answer requests through a predictor, or apply documents")
    _bootstrap(w)
    w.add_argument("--handler", default=_worker_default("handler"), choices=get_args(Handler),
                   help="inference: request events to results (default); documents: document events to Milvus")
    # None leaves these to WorkerConfig, whose defaults depend on the handler.
    w.add_argument("--input-topic", help=f"default: {DEFAULT_REQUESTS}, or {DEFAULT_DOCUMENTS} for documents")
    w.add_argument("--output-topic", default=_worker_default("output_topic"))
    w.add_argument("--dlq-topic", default=_worker_default("dlq_topic"))
    w.add_argument("--group", help=f"default: {_worker_default('group')}, or {DOCUMENTS_GROUP} for documents")
    w.add_argument("--predictor-url", help="http://host:port for v1/v2, host:port for grpc-v2")
    w.add_argument("--model", help="model name on the predictor (required with --handler inference)")
    w.add_argument("--protocol", default=_worker_default("protocol"), choices=[*get_args(WireProtocol), "in-process"])
    w.add_argument("--task", choices=["embed", "generate"], help="with --protocol in-process")
    w.add_argument("--model-id", help="with --protocol in-process: a packaged model id")
    w.add_argument("--max-batch", type=int, default=_worker_default("max_batch"))
    w.add_argument("--max-wait-ms", type=int, default=_worker_default("max_wait_ms"))
    w.add_argument("--max-in-flight", type=int, default=_worker_default("max_in_flight"))
    w.add_argument("--max-attempts", type=int, default=default_of(RetryPolicy, "max_attempts"),
                   help="predictor (or embedder) attempts before dead-lettering")
    w.add_argument("--exactly-once", action="store_true",
                   help="results, DLQ events and offsets in one transaction per input partition")
    w.add_argument("--transactional-id-prefix", default=_worker_default("transactional_id_prefix"),
                   help="with --exactly-once: ids are PREFIX-GROUP-INPUT_TOPIC-PARTITION (default: %(default)s)")
    w.add_argument("--session-timeout-ms", type=int, default=_worker_default("session_timeout_ms"),
                   help="how long the group waits for a silent worker before moving its partitions")
    w.add_argument("--output-mode", default=_worker_default("output_mode"), choices=get_args(Mode))
    w.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")
    d = w.add_argument_group("--handler documents")
    d.add_argument("--milvus-uri", default=os.environ.get("MILVUS_URI"),
                   help="a Milvus Lite file or http://host:19530 (default: $MILVUS_URI)")
    d.add_argument("--collection", help="the collection the documents go to")
    d.add_argument("--embedder", default=default_of(IngestConfig, "embedder"),
                   help="a packaged model id (in-process) or http://host:port#model of an embedding predictor")
    d.add_argument("--embedder-protocol", default=default_of(IngestConfig, "embedder_protocol"),
                   choices=get_args(WireProtocol))
    d.add_argument("--chunk-tokens", type=int, default=default_of(IngestConfig, "chunk_tokens"),
                   help="default: the embedder's input limit (as python -m transformers_pre.ingest)")
    d.add_argument("--overlap-tokens", type=int, default=default_of(IngestConfig, "overlap_tokens"))

    s = sub.add_parser("submit", help="submit a JSONL file as a job: one request event per line")
    _bootstrap(s)
    s.add_argument("--topic", default=DEFAULT_REQUESTS)
    s.add_argument("--job-id", default=None, help="default: a new UUID")
    s.add_argument("--input", type=Path, required=True, help="JSONL, one v1 instance per line")
    s.add_argument("--mode", default="binary", choices=["binary", "structured"])
    s.add_argument("--parameters", type=json.loads, default=None, help="JSON object of request parameters")
    s.add_argument("--key-field", help="take each event's partition key from this field of the line")

    r = sub.add_parser("results", help="collect a job's results and failures")
    _bootstrap(r)
    r.add_argument("--topic", default=DEFAULT_RESULTS)
    r.add_argument("--dlq-topic", default=DEFAULT_DLQ)
    r.add_argument("--job-id", required=True)
    r.add_argument("--expect", type=int, required=True)
    r.add_argument("--output", type=Path)
    r.add_argument("--timeout", type=float, default=300.0)

    y = sub.add_parser("replay", help="re-submit a job's dead-lettered requests")
    _bootstrap(y)
    y.add_argument("--dlq-topic", default=DEFAULT_DLQ)
    y.add_argument("--topic", default=DEFAULT_REQUESTS)
    y.add_argument("--job-id", required=True)
    y.add_argument("--code", help="only dead letters with this error code")
    y.add_argument("--mode", default="binary", choices=["binary", "structured"])

    b = sub.add_parser("batch-api", help="serve OpenAI's Batch API (/v1/files, /v1/batches) over these topics")
    _bootstrap(b)
    b.add_argument("--model", action="append", required=True, metavar="NAME=TOPIC", dest="models",
                   help="a body.model of input lines and the request topic of its worker (repeat per model)")
    b.add_argument("--data-dir", type=Path, required=True, help="files, batch state and output files")
    b.add_argument("--host", default=_batch_default("host"))
    b.add_argument("--port", type=int, default=_batch_default("port"))
    b.add_argument("--results-topic", default=_batch_default("results_topic"))
    b.add_argument("--dlq-topic", default=_batch_default("dlq_topic"))
    b.add_argument("--group", default=_batch_default("group"), help="the results consumer's group")
    b.add_argument("--max-file-bytes", "--max_file_bytes", type=int, default=_batch_default("max_file_bytes"),
                   help="an upload over this is refused with 413")
    b.add_argument("--send-chunk", type=int, default=_batch_default("send_chunk"),
                   help="lines sent between two saves of a batch's progress")
    b.add_argument("--completion-check-s", type=float, default=_batch_default("tick_s"), dest="tick_s",
                   help="how often batches advance when there is nothing to send")
    add_api_keys_argument(b)
    return p


def _batch_default(field: str) -> Any:
    from eventing.batch_api.config import BatchApiConfig

    return default_of(BatchApiConfig, field)


def batch_api_config(args: argparse.Namespace, security: KafkaSecurity) -> Any:
    from eventing.batch_api.config import BatchApiConfig

    models = {}
    for item in args.models:
        name, sep, topic = item.partition("=")
        if not sep or not name or not topic:
            raise InvalidInput("--model", f"expected NAME=TOPIC, got {item!r}")
        models[name] = topic
    return BatchApiConfig(
        bootstrap_servers=args.bootstrap_servers, security=security, data_dir=args.data_dir, models=models,
        results_topic=args.results_topic, dlq_topic=args.dlq_topic, group=args.group, host=args.host, port=args.port,
        max_file_bytes=args.max_file_bytes, send_chunk=args.send_chunk, tick_s=args.tick_s,
    )


def _batch_api(args: argparse.Namespace, telemetry: Telemetry, security: KafkaSecurity) -> int:
    from prometheus_client import CollectorRegistry

    from eventing.batch_api.metrics import BatchMetrics
    from eventing.batch_api.service import serve
    from serving.auth import ApiKeys, AuthConfig

    config = batch_api_config(args, security)
    try:
        keys = ApiKeys.from_config(AuthConfig.from_sources(os.environ, args.api_keys_file))
    except ValueError as err:
        print(f"python -m eventing batch-api: {err}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    metrics = BatchMetrics(telemetry.meter(INSTRUMENTATION), registry)
    return serve(config, keys, telemetry.tracer(INSTRUMENTATION), metrics, registry)


def worker_config(args: argparse.Namespace, security: KafkaSecurity, api_key: SecretStr | None) -> WorkerConfig:
    """The worker's settings from its flags; a flag left at None leaves the setting to ``WorkerConfig``."""
    documents = None
    if args.handler == "documents":
        if not args.milvus_uri or not args.collection:
            raise InvalidInput("--milvus-uri" if not args.milvus_uri else "--collection",
                               "required with --handler documents (--milvus-uri may come from $MILVUS_URI)")
        documents = IngestConfig(milvus_uri=args.milvus_uri, collection=args.collection, embedder=args.embedder,
                                 embedder_protocol=args.embedder_protocol, chunk_tokens=args.chunk_tokens,
                                 overlap_tokens=args.overlap_tokens, progress=False)
    given = {name: value for name in ("input_topic", "group") if (value := getattr(args, name)) is not None}
    return WorkerConfig(
        bootstrap_servers=args.bootstrap_servers, security=security, handler=args.handler, **given,
        output_topic=args.output_topic, dlq_topic=args.dlq_topic, predictor_url=args.predictor_url,
        model=args.model, protocol=args.protocol, documents=documents, max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms, max_in_flight=args.max_in_flight, exactly_once=args.exactly_once,
        transactional_id_prefix=args.transactional_id_prefix, session_timeout_ms=args.session_timeout_ms,
        output_mode=args.output_mode, retry=RetryPolicy(max_attempts=args.max_attempts), predictor_api_key=api_key,
    )


def _inference_handler(
    config: WorkerConfig, args: argparse.Namespace, tracer: Tracer, metrics: WorkerMetrics
) -> EventHandler:
    from eventing.processing import Processor
    from serving.client import PredictorClient, make_client

    client: PredictorClient
    if config.protocol == "in-process":
        from predictors.config import PredictorConfig
        from predictors.inprocess import InProcessClient

        client = InProcessClient.load(PredictorConfig(model_name=args.model, task=args.task, model_id=args.model_id))
    else:
        assert config.predictor_url is not None
        client = make_client(config.protocol, config.predictor_url, config.request_timeout_s,
                             api_key=config.predictor_api_key)
    assert config.model is not None
    return Processor(client, config.model, config.retry, config.max_instances, tracer=tracer,
                     on_retry=metrics.retried, max_openai_calls=config.max_openai_calls)


def _document_handler(config: WorkerConfig, tracer: Tracer, metrics: WorkerMetrics) -> tuple[EventHandler, Any]:
    """The document handler and its store (to close at the end). The embedder is started by the handler,
    on the worker's event loop."""
    from eventing.documents import DocumentHandler
    from transformers_pre.embedder import ClientEmbedder, embedder_client
    from transformers_pre.ingest.chunking import Chunker
    from transformers_pre.store import VectorStore

    documents = config.documents
    assert documents is not None
    chunker = Chunker.load(documents.chunking_model, documents.chunk_tokens, documents.overlap_tokens)
    client, model = embedder_client(documents.embedder, documents.embedder_protocol, config.request_timeout_s,
                                    tracer, config.predictor_api_key)
    embedder = ClientEmbedder(client, model, config.retry, on_retry=metrics.retried)
    if "://" not in documents.milvus_uri:
        Path(documents.milvus_uri).parent.mkdir(parents=True, exist_ok=True)
    store = VectorStore.connect(documents.milvus_uri, documents.collection)
    return DocumentHandler(store, embedder, chunker, batch_size=documents.batch_size), store


def _worker(args: argparse.Namespace, telemetry: Telemetry, security: KafkaSecurity) -> int:
    import_kserve()
    from prometheus_client import CollectorRegistry, start_http_server

    from eventing.metrics import WorkerMetrics
    from eventing.worker import Worker, kafka_clients
    from serving.auth import predictor_api_key

    try:
        api_key = predictor_api_key(os.environ)  # the key the predictor wants, if it wants one
    except ValueError as err:
        print(f"python -m eventing worker: {err}", file=sys.stderr)
        return 2
    config = worker_config(args, security, api_key)
    registry = None
    if args.metrics_port:
        registry = CollectorRegistry()
        start_http_server(args.metrics_port, registry=registry)
    metrics = WorkerMetrics(telemetry.meter(INSTRUMENTATION), registry)
    tracer = telemetry.tracer(INSTRUMENTATION)
    store = None
    if config.handler == "documents":
        handler, store = _document_handler(config, tracer, metrics)
        topics = [config.input_topic, config.dlq_topic]  # a document applied answers nothing
    else:
        handler = _inference_handler(config, args, tracer, metrics)
        topics = [config.input_topic, config.output_topic, config.dlq_topic]
    try:
        ensure_topics(config.bootstrap_servers, topics, security=config.security)
        consumer, producer = kafka_clients(config)
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        Worker(config, handler, consumer, producer, tracer=tracer, metrics=metrics).run(stop)
    finally:
        if store is not None:
            store.close()
    return 0


def _submit(args: argparse.Namespace, telemetry: Telemetry, security: KafkaSecurity) -> int:
    from eventing.jobs import submit

    job_id = args.job_id or str(uuid.uuid4())
    ensure_topics(args.bootstrap_servers, [args.topic], security=security)
    with args.input.open() as source:
        count = submit(args.bootstrap_servers, args.topic, job_id, source, args.mode, args.parameters,
                       args.key_field, progress=sys.stderr.isatty(), tracer=telemetry.tracer(INSTRUMENTATION),
                       security=security)
    print(json.dumps({"job_id": job_id, "submitted": count, "topic": args.topic}))
    return 0


def _results(args: argparse.Namespace, telemetry: Telemetry, security: KafkaSecurity) -> int:
    from eventing.jobs import collect, write_results

    ensure_topics(args.bootstrap_servers, [args.topic, args.dlq_topic], security=security)
    job = collect(args.bootstrap_servers, [args.topic, args.dlq_topic], args.job_id, args.expect, args.timeout,
                  progress=sys.stderr.isatty(), security=security)
    if args.output:
        write_results(job, args.output)
    print(job.summary())
    return 0 if job.complete and not job.errors else 1


def _replay(args: argparse.Namespace, telemetry: Telemetry, security: KafkaSecurity) -> int:
    from eventing.jobs import failed_requests, send_events

    ensure_topics(args.bootstrap_servers, [args.dlq_topic, args.topic], security=security)
    originals = failed_requests(args.bootstrap_servers, args.dlq_topic, args.job_id, args.code, security=security)
    count = send_events(args.bootstrap_servers, args.topic, originals, args.mode, progress=sys.stderr.isatty(),
                        tracer=telemetry.tracer(INSTRUMENTATION), security=security)
    print(json.dumps({"job_id": args.job_id, "replayed": count, "topic": args.topic}))
    return 0


COMMANDS: dict[str, Any] = {"worker": _worker, "submit": _submit, "results": _results, "replay": _replay,
                            "batch-api": _batch_api}


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(argv)
    if not args.bootstrap_servers:
        print("python -m eventing: --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS is required", file=sys.stderr)
        return 2
    try:
        security = KafkaSecurity.from_env(os.environ)
        setup_logging(LogConfig.from_env(os.environ))
        # OTEL_SERVICE_NAME, when set, wins over this default.
        telemetry = setup_telemetry(f"kzero-{args.command}", os.environ)
    except ValueError as err:  # TelemetryConfigError too: each message names the variable
        print(f"python -m eventing: {err}", file=sys.stderr)
        return 2
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per predictor call
    try:
        return int(COMMANDS[args.command](args, telemetry, security))
    except MalformedEvent as err:
        print(f"python -m eventing {args.command}: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(map(str, first["loc"]))
        problem = f"invalid {where}: {first['msg']}" if where else first["msg"].removeprefix("Value error, ")
        print(f"python -m eventing {args.command}: {problem}", file=sys.stderr)
        return 2
    except InvalidInput as err:  # a bad --handler documents setting (the chunk size, say)
        print(f"python -m eventing {args.command}: {err}", file=sys.stderr)
        return 2
    except Unavailable as err:  # the vector store at start
        print(f"python -m eventing {args.command}: {err}", file=sys.stderr)
        return 1
    except KafkaError as err:
        # kafka-python 2.3 turns a refused login into a generic error (IncompatibleBrokerVersion,
        # NoBrokersAvailable) and logs the broker's reason on kafka.conn just before: name the settings.
        print(f"python -m eventing {args.command}: Kafka at {args.bootstrap_servers} ({security.describe()}): {err}",
              file=sys.stderr)
        return 1
    finally:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
