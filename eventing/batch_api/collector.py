"""The results consumer: result and DLQ events of the batches in, their output lines written, offsets
committed after that.

The consumer group's committed offsets only move past records whose lines are already durable (see
``Batches.deliver``), so a crash at any moment re-reads some answers and loses none; the output files
drop the ones already written.
"""

from __future__ import annotations

import logging
import threading

from kafka import KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError

from eventing.batch_api.batches import Batches
from eventing.batch_api.config import BatchApiConfig
from events.errors import MalformedEvent
from events.event import Event
from events.kafka_binding import from_client_record, from_record

log = logging.getLogger(__name__)


def results_consumer(config: BatchApiConfig) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=config.bootstrap_servers, group_id=config.group, enable_auto_commit=False,
        auto_offset_reset="earliest", isolation_level="read_committed",
        # kafka-python 2.3 refuses frames over 1 MB yet asks for 50 MB per fetch: embeddings fill that.
        fetch_max_bytes=900_000, **config.security.client_kwargs(),
    )


def collect(config: BatchApiConfig, consumer: KafkaConsumer, batches: Batches, stop: threading.Event) -> None:
    consumer.subscribe([config.results_topic, config.dlq_topic])
    try:
        while not stop.is_set():
            polled = consumer.poll(timeout_ms=200, max_records=2000)
            if not polled:
                continue
            events: list[Event] = []
            for records in polled.values():
                for record in records:
                    try:
                        events.append(from_record(from_client_record(record)))
                    except MalformedEvent:
                        continue  # not ours to judge: other jobs share these topics
            batches.deliver(events)
            try:
                consumer.commit()
            except (CommitFailedError, KafkaError) as err:  # a rebalance: the records come again, written once
                log.warning("results offset commit failed: %s", err)
    finally:
        consumer.close()
