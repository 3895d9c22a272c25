"""The batch API process: the HTTP routes on uvicorn, the runner thread and the results consumer thread."""

from __future__ import annotations

import logging
import signal
import threading

import uvicorn
from kafka import KafkaProducer
from opentelemetry import trace
from prometheus_client import CollectorRegistry

from eventing.batch_api.app import create_app
from eventing.batch_api.batches import Batches
from eventing.batch_api.collector import collect, results_consumer
from eventing.batch_api.config import BatchApiConfig
from eventing.batch_api.metrics import BatchMetrics
from eventing.batch_api.store import Store
from eventing.topics import ensure_topics
from serving.auth import ApiKeys

log = logging.getLogger(__name__)


def _runner(batches: Batches, stop: threading.Event, tick_s: float) -> None:
    while not stop.is_set():
        if not batches.tick():
            stop.wait(tick_s)


def serve(config: BatchApiConfig, keys: ApiKeys | None, tracer: trace.Tracer, metrics: BatchMetrics,
          registry: CollectorRegistry) -> int:
    """Serve until SIGTERM or SIGINT (uvicorn's handlers); 1 if a background thread died."""
    ensure_topics(config.bootstrap_servers, [*sorted(set(config.models.values())), config.results_topic,
                                             config.dlq_topic], security=config.security)
    store = Store(config.data_dir)
    producer = KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True,
                             linger_ms=10, **config.security.client_kwargs())
    batches = Batches(config, store, producer, tracer=tracer, metrics=metrics)
    batches.recover()
    stop = threading.Event()
    failed = threading.Event()

    def guarded(target: str, work: object) -> threading.Thread:
        def run() -> None:
            try:
                work()  # type: ignore[operator]
            except Exception:
                log.exception("batch API %s stopped", target)
                failed.set()
                server.should_exit = True

        return threading.Thread(target=run, name=f"kzero-batch-{target}", daemon=True)

    app = create_app(config, store, batches, keys=keys, registry=registry)
    server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                           access_log=False, lifespan="off"))
    consumer = results_consumer(config)
    threads = [guarded("runner", lambda: _runner(batches, stop, config.tick_s)),
               guarded("results", lambda: collect(config, consumer, batches, stop))]
    for thread in threads:
        thread.start()
    log.info("batch API on http://%s:%d/v1 (models %s; results from %s and %s; data in %s)", config.host,
             config.port, ", ".join(f"{m}={t}" for m, t in sorted(config.models.items())), config.results_topic,
             config.dlq_topic, config.data_dir)
    # uvicorn restores the handlers it found and re-raises the signal after its shutdown: with these found,
    # that re-raise is harmless and the threads below are stopped and the producer flushed.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: setattr(server, "should_exit", True))
    try:
        server.run()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        batches.close()
        producer.close()
    return 1 if failed.is_set() else 0
