"""``python -m eventing worker|submit|results|replay``."""

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
from typing import Any

from kafka.errors import KafkaError
from pydantic import ValidationError

from eventing.config import DEFAULT_DLQ, DEFAULT_REQUESTS, DEFAULT_RESULTS, KafkaSecurity, WorkerConfig
from eventing.topics import ensure_topics
from events.errors import MalformedEvent
from observability.logs import LogConfig, setup_logging
from observability.telemetry import Telemetry, setup_telemetry
from serving.kserve_import import import_kserve

INSTRUMENTATION = "kzero.eventing"


def _bootstrap(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                        help="default: $KAFKA_BOOTSTRAP_SERVERS")


def _worker_default(field: str) -> Any:
    return WorkerConfig.model_fields[field].default


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eventing", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    w = sub.add_parser("worker", help="consume request events, call the predictor, produce results")
    _bootstrap(w)
    w.add_argument("--input-topic", default=DEFAULT_REQUESTS)
    w.add_argument("--output-topic", default=DEFAULT_RESULTS)
    w.add_argument("--dlq-topic", default=DEFAULT_DLQ)
    w.add_argument("--group", default="kzero-worker")
    w.add_argument("--predictor-url", help="http://host:port for v1/v2, host:port for grpc-v2")
    w.add_argument("--model", required=True, help="model name on the predictor")
    w.add_argument("--protocol", default="v1", choices=["v1", "v2", "grpc-v2", "in-process"])
    w.add_argument("--task", choices=["embed", "generate"], help="with --protocol in-process")
    w.add_argument("--model-id", help="with --protocol in-process: a packaged model id")
    w.add_argument("--max-batch", type=int, default=64)
    w.add_argument("--max-wait-ms", type=int, default=20)
    w.add_argument("--max-in-flight", type=int, default=512)
    w.add_argument("--max-attempts", type=int, default=5, help="predictor attempts before dead-lettering")
    w.add_argument("--exactly-once", action="store_true",
                   help="results, DLQ events and offsets in one transaction per input partition")
    w.add_argument("--transactional-id-prefix", default=_worker_default("transactional_id_prefix"),
                   help="with --exactly-once: ids are PREFIX-GROUP-INPUT_TOPIC-PARTITION (default: %(default)s)")
    w.add_argument("--session-timeout-ms", type=int, default=_worker_default("session_timeout_ms"),
                   help="how long the group waits for a silent worker before moving its partitions")
    w.add_argument("--output-mode", default="binary", choices=["binary", "structured"])
    w.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here (0: off)")

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
    return p


def _worker(args: argparse.Namespace, telemetry: Telemetry, security: KafkaSecurity) -> int:
    import_kserve()
    from prometheus_client import CollectorRegistry, start_http_server

    from eventing.metrics import WorkerMetrics
    from eventing.processing import Processor
    from eventing.worker import Worker, kafka_clients
    from serving.auth import predictor_api_key
    from serving.client import PredictorClient, make_client
    from serving.retry import RetryPolicy

    try:
        api_key = predictor_api_key(os.environ)  # the key the predictor wants, if it wants one
    except ValueError as err:
        print(f"python -m eventing worker: {err}", file=sys.stderr)
        return 2
    config = WorkerConfig(
        bootstrap_servers=args.bootstrap_servers, security=security, input_topic=args.input_topic,
        output_topic=args.output_topic, dlq_topic=args.dlq_topic, group=args.group, predictor_url=args.predictor_url,
        model=args.model, protocol=args.protocol, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        max_in_flight=args.max_in_flight, exactly_once=args.exactly_once,
        transactional_id_prefix=args.transactional_id_prefix, session_timeout_ms=args.session_timeout_ms,
        output_mode=args.output_mode, retry=RetryPolicy(max_attempts=args.max_attempts), predictor_api_key=api_key,
    )
    client: PredictorClient
    if config.protocol == "in-process":
        from predictors.config import PredictorConfig
        from predictors.inprocess import InProcessClient

        client = InProcessClient.load(PredictorConfig(model_name=args.model, task=args.task, model_id=args.model_id))
    else:
        assert config.predictor_url is not None
        client = make_client(config.protocol, config.predictor_url, config.request_timeout_s,
                             api_key=config.predictor_api_key)
    registry = None
    if args.metrics_port:
        registry = CollectorRegistry()
        start_http_server(args.metrics_port, registry=registry)
    metrics = WorkerMetrics(telemetry.meter(INSTRUMENTATION), registry)
    tracer = telemetry.tracer(INSTRUMENTATION)
    processor = Processor(client, config.model, config.retry, config.max_instances, tracer=tracer,
                          on_retry=metrics.retried)
    ensure_topics(config.bootstrap_servers, [config.input_topic, config.output_topic, config.dlq_topic],
                  security=config.security)
    consumer, producer = kafka_clients(config)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    Worker(config, processor, consumer, producer, tracer=tracer, metrics=metrics).run(stop)
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


COMMANDS: dict[str, Any] = {"worker": _worker, "submit": _submit, "results": _results, "replay": _replay}


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
        print(f"python -m eventing {args.command}: invalid {'.'.join(map(str, first['loc']))}: {first['msg']}",
              file=sys.stderr)
        return 2
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
