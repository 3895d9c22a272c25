"""Async jobs on Kafka: submit a JSONL file as request events, collect results, replay failures."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from opentelemetry import trace
from tqdm import tqdm

from eventing import tracing
from eventing.config import KafkaSecurity
from events.errors import MalformedEvent
from events.event import ERROR_TYPE, RESULT_TYPE, TRACE_CONTEXT, Event, from_structured_dict, request_event
from events.kafka_binding import KafkaRecord, Mode, from_client_record, from_record

log = logging.getLogger(__name__)

SOURCE = "/kzero/jobs"
METADATA_REFRESH_S = 1.0


def read_instances(lines: Iterable[str]) -> Iterator[tuple[int, Any]]:
    """(line number, instance) for each non-blank JSONL line; a bad line is an error naming it."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise MalformedEvent(f"line {number}", f"not valid JSON: {err.msg}") from err


def job_events(
    lines: Iterable[str], job_id: str, *, parameters: dict[str, Any] | None = None, key_field: str | None = None
) -> Iterator[Event]:
    for number, instance in read_instances(lines):
        key = None
        if key_field is not None:
            if not isinstance(instance, dict) or key_field not in instance:
                raise MalformedEvent(f"line {number}", f"has no field {key_field!r} for the partition key")
            key = str(instance.pop(key_field))
        yield request_event([instance], source=SOURCE, parameters=parameters, jobid=job_id, partitionkey=key,
                            id=f"{job_id}-{number}")


def _client_kwargs(security: KafkaSecurity | None) -> dict[str, Any]:
    """Every function here that talks to Kafka takes ``security``: None is plaintext without auth."""
    return (security or KafkaSecurity()).client_kwargs()


def _producer(bootstrap: str, security: KafkaSecurity | None) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=10,
                         **_client_kwargs(security))


def send_events(bootstrap: str, topic: str, events: Iterable[Event], mode: Mode, *, progress: bool = True,
                tracer: trace.Tracer | None = None, security: KafkaSecurity | None = None) -> int:
    """Send each event under a PRODUCER span whose context it carries on (see ``eventing.tracing``).

    The span's parent is the current context, except for an event that already carries trace
    context (a replayed request): it continues its own trace.
    """
    events = list(events)
    if not events:
        # kafka-python 2.3's idempotent producer never returns from close() if it has sent nothing.
        return 0
    tracer = tracer or trace.get_tracer(__name__)
    producer = _producer(bootstrap, security)
    count = 0
    try:
        for event in tqdm(events, desc="submitting", unit="event", disable=not progress):
            parent = tracing.event_context(event) if any(event.get(n) for n in TRACE_CONTEXT) else None
            span = tracing.start_send_span(tracer, topic, event, parent)
            try:
                record = tracing.traced_record(event, topic, mode, span)
                future = producer.send(topic, value=record.value, key=record.key, headers=list(record.headers))
            except BaseException as err:
                tracing.failed(span, err)
                raise
            tracing.send_future_ends(span, future)
            count += 1
        producer.flush()
    finally:
        producer.close()
    return count


def submit(bootstrap: str, topic: str, job_id: str, source: TextIO, mode: Mode = "binary",
           parameters: dict[str, Any] | None = None, key_field: str | None = None, progress: bool = True,
           tracer: trace.Tracer | None = None, *, security: KafkaSecurity | None = None) -> int:
    # Read and check the whole file first: a bad line must not leave half a job submitted.
    events = list(job_events(source, job_id, parameters=parameters, key_field=key_field))
    return send_events(bootstrap, topic, events, mode, progress=progress, tracer=tracer, security=security)


def scan(bootstrap: str, topics: list[str], *, idle_timeout_s: float, deadline: float | None = None,
         done: Callable[[], bool] = lambda: False, security: KafkaSecurity | None = None) -> Iterator[KafkaRecord]:
    """Committed records of ``topics`` from the beginning, following new ones until ``done()``,
    ``deadline`` (monotonic) or ``idle_timeout_s`` without a record.

    A topic that does not exist yet is waited for: the metadata is read again every
    ``METADATA_REFRESH_S``, and partitions that appear (a topic a worker creates after the scan
    started, partitions added later) are read from their beginning too.
    """
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False,
                             group_id=None, **_client_kwargs(security))
    try:
        assigned: set[TopicPartition] = set()
        last_seen, refreshed = time.monotonic(), float("-inf")
        while not done() and time.monotonic() - last_seen < idle_timeout_s:
            now = time.monotonic()
            if deadline is not None and now > deadline:
                return
            if now - refreshed >= METADATA_REFRESH_S:
                refreshed = now
                if new := _partitions(consumer, topics) - assigned:
                    assigned |= new
                    consumer.assign(sorted(assigned))  # keeps the positions of those already assigned
                    consumer.seek_to_beginning(*new)
            if not assigned:
                time.sleep(0.2)
                continue
            for records in consumer.poll(timeout_ms=200).values():
                last_seen = time.monotonic()
                for record in records:
                    yield from_client_record(record)
    finally:
        consumer.close()


def _partitions(consumer: KafkaConsumer, topics: list[str]) -> set[TopicPartition]:
    known = consumer.topics()  # a fresh metadata request, so new topics and partitions show
    return {TopicPartition(t, p) for t in topics if t in known for p in consumer.partitions_for_topic(t)}


@dataclass
class JobResults:
    expected: int
    results: dict[str, Event] = field(default_factory=dict)
    errors: dict[str, Event] = field(default_factory=dict)
    duplicates: int = 0

    @property
    def complete(self) -> bool:
        return len(self.results) + len(self.errors) >= self.expected

    def add(self, event: Event) -> bool:
        """Record one result or error of the job; False if it was a duplicate."""
        requestid = event.get("requestid")
        if requestid is None:
            return False
        if requestid in self.results or (event.type == ERROR_TYPE and requestid in self.errors):
            self.duplicates += 1
            return False
        if event.type == RESULT_TYPE:
            self.errors.pop(requestid, None)  # a replayed request that succeeded
            self.results[requestid] = event
        else:
            self.errors[requestid] = event
        return True

    def summary(self) -> str:
        missing = self.expected - len(self.results) - len(self.errors)
        return (f"{len(self.results)} results, {len(self.errors)} failed, {max(missing, 0)} missing, "
                f"{self.duplicates} duplicates ignored (of {self.expected})")


def collect(bootstrap: str, topics: list[str], job_id: str, expected: int, timeout_s: float,
            progress: bool = True, *, security: KafkaSecurity | None = None,
            give_up: Callable[[], bool] = lambda: False) -> JobResults:
    """The job's results and dead letters, until all ``expected`` are in, ``timeout_s`` passes or
    ``give_up()`` (say, the worker that would answer has exited)."""
    job = JobResults(expected)
    deadline = time.monotonic() + timeout_s
    with tqdm(total=expected, desc="collecting", unit="result", disable=not progress) as bar:
        for record in scan(bootstrap, topics, idle_timeout_s=timeout_s, deadline=deadline,
                           done=lambda: job.complete or give_up(), security=security):
            try:
                event = from_record(record)
            except MalformedEvent:
                continue
            if event.get("jobid") == job_id and event.type in (RESULT_TYPE, ERROR_TYPE) and job.add(event):
                bar.update(1)
    return job


def write_results(job: JobResults, path: Path) -> None:
    with path.open("w") as out:
        for requestid, event in sorted(job.results.items()):
            out.write(json.dumps({"requestid": requestid, "result": event.data}) + "\n")
        for requestid, event in sorted(job.errors.items()):
            out.write(json.dumps({"requestid": requestid, "error": event.data.get("error")}) + "\n")


def failed_requests(bootstrap: str, dlq_topic: str, job_id: str, code: str | None = None, *,
                    security: KafkaSecurity | None = None) -> list[Event]:
    """The original request events of a job's dead letters (one per request id)."""
    originals: dict[str, Event] = {}
    for record in scan(bootstrap, [dlq_topic], idle_timeout_s=2.0, security=security):
        try:
            error = from_record(record)
        except MalformedEvent:
            continue
        if error.type != ERROR_TYPE or error.get("jobid") != job_id:
            continue
        if code is not None and error.get("errorcode") != code:
            continue
        original = error.data.get("request") if isinstance(error.data, dict) else None
        try:
            event = from_structured_dict(original)
        except MalformedEvent:
            log.warning("dead letter %s has no replayable request", error.id)
            continue
        originals[event.id] = event
    return list(originals.values())
