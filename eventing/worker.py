"""The eventing worker: Kafka request events in, micro-batched predictor calls, result or DLQ events out.

Delivery:
- at-least-once (default): a partition's offset is committed only once the result or DLQ event
  of every earlier record of that partition is acknowledged by the broker;
- exactly-once (``exactly_once``): results, DLQ events and the consumed offsets go in one Kafka
  transaction per micro-batch, so ``read_committed`` readers see one result per request.

The consumer is used from this thread only. Predictor calls run on an asyncio loop in a second
thread, several micro-batches at a time; results are emitted in the order their batches were
formed, which keeps per-partition order. When ``max_in_flight`` events are unanswered, the
assigned partitions are paused (polling goes on, so the group never times this worker out).

Tracing: each consumed record gets a CONSUMER span ``process {topic}``, parented to the context the
record carries (see ``eventing.tracing``), which ends once its answer is acknowledged (or with an
error status when the record is abandoned to the next owner). Each micro-batch gets a root span
linked to its records' spans; the handler gets each record's span context to call the predictor
under; the result or DLQ event is sent under a PRODUCER span, a child of the record's span, whose
context the event carries on.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata
from opentelemetry import trace
from opentelemetry.trace import Span

from eventing import tracing
from eventing.config import WorkerConfig
from eventing.errors import MalformedEvent
from eventing.events import Event, error_event, result_event
from eventing.kafka_binding import KafkaRecord, from_client_record, from_record
from eventing.metrics import DEAD_LETTERED, SUCCEEDED, WorkerMetrics
from eventing.offsets import OffsetTracker
from eventing.processing import INVALID_EVENT, EventHandler, Failure, Outcome, Success
from observability import propagation
from observability import semconv as sc

log = logging.getLogger(__name__)

_SEND_RETRY_S = 1.0
_LAG_INTERVAL_S = 1.0


@dataclass
class Item:
    """One consumed record on its way through the worker."""

    partition: TopicPartition
    record: KafkaRecord
    event: Event | None
    data: dict[str, Any] | None
    span: Span
    received: float
    failure: Failure | None = None
    outcome: Outcome | None = None


@dataclass
class Batch:
    items: list[Item]
    future: Future[list[Outcome]]
    formed: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Outgoing:
    """A result or DLQ record and its send span, ended once the broker has it."""

    record: KafkaRecord
    span: Span


def kafka_clients(config: WorkerConfig) -> tuple[KafkaConsumer, KafkaProducer]:
    security = config.security.client_kwargs()
    consumer = KafkaConsumer(
        bootstrap_servers=config.bootstrap_servers,
        group_id=config.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=config.max_batch,
        max_poll_interval_ms=config.max_poll_interval_ms,
        session_timeout_ms=config.session_timeout_ms,
        heartbeat_interval_ms=max(1000, config.session_timeout_ms // 4),
        **security,
    )
    extra: dict[str, Any] = {}
    if config.exactly_once:
        extra = {"transactional_id": config.effective_transactional_id,
                 "transaction_timeout_ms": config.transaction_timeout_ms}
    producer = KafkaProducer(
        bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5, **extra,
        **security,
    )
    return consumer, producer


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        handler: EventHandler,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        *,
        clock: Callable[[], float] = time.monotonic,
        tracer: trace.Tracer | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._config = config
        self._handler = handler
        self._consumer = consumer
        self._producer = producer
        self._clock = clock
        self._tracer = tracer or trace.get_tracer(__name__)
        self._metrics = metrics or WorkerMetrics()
        self._next_lag_sample = 0.0
        self._tracker = OffsetTracker()
        self._pending: list[tuple[float, Item]] = []
        self._in_flight: deque[Batch] = deque()
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="kzero-calls", daemon=True)
        self.emitted = 0

    def run(self, stop: threading.Event) -> None:
        self._loop_thread.start()
        if self._config.exactly_once:
            self._producer.init_transactions()
        self._consumer.subscribe([self._config.input_topic], listener=_Listener(self))
        log.info("worker consuming %s as group %s (%s)", self._config.input_topic, self._config.group,
                 "exactly-once" if self._config.exactly_once else "at-least-once")
        try:
            while not stop.is_set():
                self._tick()
            self._drain()
        finally:
            self._consumer.close()
            self._producer.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5)

    # -- the loop ---------------------------------------------------------------------------

    def _tick(self) -> None:
        self._backpressure()
        timeout_ms = 5 if self._in_flight else min(100, self._config.max_wait_ms or 100)
        room = max(1, self._config.max_in_flight - self._tracker.in_flight())
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=room)
        now = self._clock()
        for partition, records in polled.items():
            for record in records:
                item = self._accept(partition, from_client_record(record), now)
                self._pending.append((now, item))
        self._dispatch(force=False)
        self._emit_completed()
        self._sample_lag()

    def _sample_lag(self) -> None:
        """Cache each assigned partition's lag for the gauge (the consumer is this thread's alone)."""
        now = self._clock()
        if now < self._next_lag_sample:
            return
        self._next_lag_sample = now + _LAG_INTERVAL_S
        lags = {}
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            position = self._consumer.position(tp, timeout_ms=0)  # no wait: unknown is skipped
            if highwater is not None and position is not None:
                lags[(tp.topic, str(tp.partition))] = max(0, highwater - position)
        self._metrics.set_lags(lags)

    def _backpressure(self) -> None:
        assigned = self._consumer.assignment()
        if self._tracker.in_flight() >= self._config.max_in_flight:
            if assigned - self._consumer.paused():
                self._consumer.pause(*assigned)
        elif self._consumer.paused():
            self._consumer.resume(*self._consumer.paused())

    def _accept(self, partition: TopicPartition, record: KafkaRecord, now: float) -> Item:
        assert record.offset is not None
        self._tracker.add(partition, record.offset)
        event, data, failure = None, None, None
        try:
            event = from_record(record)
            data = self._handler.validate(event)
        except MalformedEvent as err:
            failure = Failure(INVALID_EVENT, str(err), 0)
        span = tracing.start_process_span(self._tracer, record, event, self._config.group)
        return Item(partition, record, event, data, span, now, failure)

    def _dispatch(self, *, force: bool) -> None:
        while self._pending:
            due = self._clock() - self._pending[0][0] >= self._config.max_wait_ms / 1000
            if not (force or due or len(self._pending) >= self._config.max_batch):
                return
            items = [item for _, item in self._pending[: self._config.max_batch]]
            del self._pending[: self._config.max_batch]
            accepted = [item for item in items if item.failure is None]
            requests = [item.data for item in accepted]
            headers = [propagation.inject(trace.set_span_in_context(item.span)) for item in accepted]
            batch_span = tracing.start_batch_span(self._tracer, self._config.input_topic, [i.span for i in items])
            self._metrics.batch_size.record(len(items))
            future = asyncio.run_coroutine_threadsafe(self._handler.process(requests, headers), self._loop)
            future.add_done_callback(lambda f, span=batch_span: _end_batch_span(span, f))
            self._in_flight.append(Batch(items, future))

    def _emit_completed(self, wait_s: float = 0.0) -> None:
        """Emit every finished batch at the head of the queue, in order, with one flush and commit."""
        deadline = self._clock() + wait_s
        finished: list[Batch] = []
        while self._in_flight:
            head = self._in_flight[0]
            if not head.future.done():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    break
                try:
                    head.future.result(remaining)
                except TimeoutError:
                    break
                except Exception:  # reported below through _outcomes
                    pass
            finished.append(self._in_flight.popleft())
        if finished:
            self._emit(finished)

    # -- emitting results and committing ----------------------------------------------------

    def _outcomes(self, batch: Batch) -> list[Outcome]:
        try:
            computed = iter(batch.future.result())
        except Exception as err:  # a bug in processing must not lose the batch: dead-letter it
            log.exception("processing a batch failed")
            failure = Failure("worker-error", f"{type(err).__name__}: {err}", 0)
            return [item.failure or failure for item in batch.items]
        return [item.failure or next(computed) for item in batch.items]

    def _records(self, batch: Batch) -> list[Outgoing]:
        records = []
        for item, outcome in zip(batch.items, self._outcomes(batch), strict=True):
            item.outcome = outcome
            item.span.set_attribute(sc.KZERO_ATTEMPT, outcome.attempts)
            if isinstance(outcome, Success):
                if self._handler.emits_results:
                    assert item.event is not None
                    event = result_event(item.event, outcome.response, source=self._config.source)
                    records.append(self._outgoing(item, event, self._config.output_topic))
            else:
                item.span.set_attribute(sc.KZERO_ERROR_CODE, outcome.code)
                records.append(self._outgoing(item, self._dead_letter(item, outcome), self._config.dlq_topic))
        return records

    def _outgoing(self, item: Item, event: Event, topic: str) -> Outgoing:
        span = tracing.start_send_span(self._tracer, topic, event, trace.set_span_in_context(item.span))
        return Outgoing(tracing.traced_record(event, topic, self._config.output_mode, span), span)

    def _dead_letter(self, item: Item, failure: Failure) -> Event:
        record = item.record
        raw, requestid = None, None
        if item.event is None:  # not even a CloudEvent: keep the record itself, and its id if it had one
            raw = {"value_base64": base64.b64encode(record.value or b"").decode(),
                   "key": record.key.decode("utf-8", "replace") if record.key else None,
                   "headers": {k: v.decode("utf-8", "replace") for k, v in record.headers}}
            ce_id = record.header("ce_id")
            requestid = ce_id.decode("utf-8", "replace") if ce_id else None
        assert record.partition is not None and record.offset is not None
        return error_event(
            code=failure.code, message=failure.message, attempts=failure.attempts, source=self._config.source,
            original=item.event, original_raw=raw, requestid=requestid,
            origin=(record.topic, record.partition, record.offset),
        )

    def _emit(self, batches: list[Batch]) -> None:
        outgoing = [out for batch in batches for out in self._records(batch)]
        items = [item for batch in batches for item in batch.items]
        if self._config.exactly_once:
            if not self._emit_transaction(items, outgoing):
                return
        else:
            self._send_until_acked(outgoing)
            self._answered(items)
            for item in items:
                self._tracker.done(item.partition, item.record.offset)  # type: ignore[arg-type]
            self._commit()
        self.emitted += len(outgoing)

    def _answered(self, items: list[Item]) -> None:
        """Every item's answer is acknowledged: end its span and count it."""
        now = self._clock()
        for item in items:
            outcome = item.outcome
            if isinstance(outcome, Failure):
                self._metrics.dlq_events.add(1, outcome.code)
                self._metrics.processed.add(1, DEAD_LETTERED)
                tracing.failed(item.span, outcome.code)
            else:
                self._metrics.processed.add(1, SUCCEEDED)
                item.span.end()
            self._metrics.latency.record(now - item.received)

    def _send_until_acked(self, outgoing: list[Outgoing]) -> None:
        while True:
            futures = [self._send(out.record) for out in outgoing]
            self._producer.flush()
            failed = []
            for out, future in zip(outgoing, futures, strict=True):
                if future.failed():
                    out.span.add_event("resend", {sc.ERROR_TYPE: type(future.exception).__name__})
                    failed.append(out)
                else:
                    tracing.sent(out.span, future.value)
            if not failed:
                return
            log.warning("%d of %d sends failed (%s); resending", len(failed), len(outgoing),
                        futures[outgoing.index(failed[0])].exception)
            outgoing = failed
            time.sleep(_SEND_RETRY_S)

    def _send(self, record: KafkaRecord) -> Any:
        return self._producer.send(record.topic, value=record.value, key=record.key, headers=list(record.headers))

    def _commit(self) -> None:
        offsets = self._tracker.committable()
        if not offsets:
            return
        try:
            self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except (CommitFailedError, KafkaError) as err:  # a rebalance: the next owner redoes the rest
            log.warning("offset commit failed: %s", err)
            return
        self._tracker.committed(offsets)

    def _emit_transaction(self, items: list[Item], outgoing: list[Outgoing]) -> bool:
        for item in items:
            self._tracker.done(item.partition, item.record.offset)  # type: ignore[arg-type]
        offsets = self._tracker.committable()
        futures = []
        try:
            self._producer.begin_transaction()
            futures = [self._send(out.record) for out in outgoing]
            if offsets:
                self._producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}, self._group_metadata()
                )
            self._producer.commit_transaction()
        except KafkaError as err:
            log.warning("transaction failed (%s); aborting and rewinding to the committed offsets", err)
            for out in outgoing:
                tracing.failed(out.span, err, event="transaction aborted")
            _abandon(items, "transaction aborted")
            self._abort_and_rewind()
            return False
        for out, future in zip(outgoing, futures, strict=True):
            tracing.sent(out.span, future.value if future.succeeded() else None)
        self._answered(items)
        self._tracker.committed(offsets)
        return True

    def _group_metadata(self) -> Any:
        # Full group metadata fences zombie members (KIP-447) where the client supports it;
        # kafka-python 2.x takes the group id.
        metadata = getattr(self._consumer, "group_metadata", None)
        return metadata() if metadata is not None else self._config.group

    def _abort_and_rewind(self) -> None:
        try:
            self._producer.abort_transaction()
        except KafkaError as err:
            raise RuntimeError(f"cannot abort the failed transaction: {err}") from err
        for batch in self._in_flight:
            batch.future.cancel()
            _abandon(batch.items, "transaction aborted")
        self._in_flight.clear()
        _abandon([item for _, item in self._pending], "transaction aborted")
        self._pending.clear()
        assigned = list(self._consumer.assignment())
        self._tracker.forget(assigned)
        for partition in assigned:
            committed = self._consumer.committed(partition)
            if committed is None:
                self._consumer.seek_to_beginning(partition)
            else:
                self._consumer.seek(partition, committed)

    # -- rebalances and shutdown ----------------------------------------------------------------

    def revoke(self, partitions: set[TopicPartition]) -> None:
        """Partitions are being taken away: forget their unanswered records.

        Called on the consumer's IO thread while this thread is blocked in ``poll``, so it may not
        call the consumer. Nothing of these partitions is committed any more; answers still in
        flight are emitted (the next owner redoes those records: at-least-once).
        """
        _abandon([item for _, item in self._pending if item.partition in partitions], "partition revoked")
        self._pending = [(t, i) for t, i in self._pending if i.partition not in partitions]
        self._tracker.forget(partitions)
        log.info("revoked %s", sorted(f"{tp.topic}-{tp.partition}" for tp in partitions))

    def _drain(self) -> None:
        """SIGTERM: finish the in-flight batches within the grace period, commit, leave the group."""
        # Consumed but not started: not committed, so the next owner takes them.
        _abandon([item for _, item in self._pending], "shutdown")
        self._pending.clear()
        self._emit_completed(wait_s=self._config.shutdown_grace_s)
        if self._in_flight:
            log.warning("abandoning %d unfinished batches; their records stay uncommitted", len(self._in_flight))
            for batch in self._in_flight:
                _abandon(batch.items, "shutdown")
        log.info("worker stopped after emitting %d events", self.emitted)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            self._worker.revoke(set(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


def _abandon(items: list[Item], reason: str) -> None:
    """End the spans of records left unanswered for the next owner to redo."""
    for item in items:
        tracing.failed(item.span, "abandoned", event=f"abandoned: {reason}")


def _end_batch_span(span: Span, future: Future[list[Outcome]]) -> None:
    if future.cancelled():
        tracing.failed(span, "cancelled")
    elif (error := future.exception()) is not None:
        tracing.failed(span, error)
    else:
        span.end()
