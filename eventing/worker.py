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

from eventing.config import WorkerConfig
from eventing.errors import MalformedEvent
from eventing.events import Event, error_event, result_event
from eventing.kafka_binding import KafkaRecord, from_client_record, from_record, to_record
from eventing.offsets import OffsetTracker
from eventing.processing import INVALID_EVENT, EventHandler, Failure, Outcome, Success

log = logging.getLogger(__name__)

_SEND_RETRY_S = 1.0


@dataclass
class Item:
    """One consumed record on its way through the worker."""

    partition: TopicPartition
    record: KafkaRecord
    event: Event | None
    data: dict[str, Any] | None
    failure: Failure | None = None


@dataclass
class Batch:
    items: list[Item]
    future: Future[list[Outcome]]
    formed: float = field(default_factory=time.monotonic)


def kafka_clients(config: WorkerConfig) -> tuple[KafkaConsumer, KafkaProducer]:
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
    )
    extra: dict[str, Any] = {}
    if config.exactly_once:
        extra = {"transactional_id": config.effective_transactional_id,
                 "transaction_timeout_ms": config.transaction_timeout_ms}
    producer = KafkaProducer(
        bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True, linger_ms=5, **extra
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
    ) -> None:
        self._config = config
        self._handler = handler
        self._consumer = consumer
        self._producer = producer
        self._clock = clock
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
                item = self._accept(partition, from_client_record(record))
                self._pending.append((now, item))
        self._dispatch(force=False)
        self._emit_completed()

    def _backpressure(self) -> None:
        assigned = self._consumer.assignment()
        if self._tracker.in_flight() >= self._config.max_in_flight:
            if assigned - self._consumer.paused():
                self._consumer.pause(*assigned)
        elif self._consumer.paused():
            self._consumer.resume(*self._consumer.paused())

    def _accept(self, partition: TopicPartition, record: KafkaRecord) -> Item:
        assert record.offset is not None
        self._tracker.add(partition, record.offset)
        event = None
        try:
            event = from_record(record)
            return Item(partition, record, event, self._handler.validate(event))
        except MalformedEvent as err:
            return Item(partition, record, event, None, Failure(INVALID_EVENT, str(err), 0))

    def _dispatch(self, *, force: bool) -> None:
        while self._pending:
            due = self._clock() - self._pending[0][0] >= self._config.max_wait_ms / 1000
            if not (force or due or len(self._pending) >= self._config.max_batch):
                return
            items = [item for _, item in self._pending[: self._config.max_batch]]
            del self._pending[: self._config.max_batch]
            requests = [item.data for item in items if item.failure is None]
            headers = [_trace_headers(item.event) for item in items if item.failure is None]
            future = asyncio.run_coroutine_threadsafe(self._handler.process(requests, headers), self._loop)
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

    def _records(self, batch: Batch) -> list[KafkaRecord]:
        records = []
        for item, outcome in zip(batch.items, self._outcomes(batch), strict=True):
            if isinstance(outcome, Success):
                if self._handler.emits_results:
                    assert item.event is not None
                    event = result_event(item.event, outcome.response, source=self._config.source)
                    records.append(to_record(event, self._config.output_topic, self._config.output_mode))
            else:
                records.append(to_record(self._dead_letter(item, outcome), self._config.dlq_topic,
                                         self._config.output_mode))
        return records

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
        records = [record for batch in batches for record in self._records(batch)]
        items = [item for batch in batches for item in batch.items]
        if self._config.exactly_once:
            self._emit_transaction(items, records)
        else:
            self._send_until_acked(records)
            for item in items:
                self._tracker.done(item.partition, item.record.offset)  # type: ignore[arg-type]
            self._commit()
        self.emitted += len(records)

    def _send_until_acked(self, records: list[KafkaRecord]) -> None:
        while True:
            futures = [self._send(r) for r in records]
            self._producer.flush()
            failed = [r for r, f in zip(records, futures, strict=True) if f.failed()]
            if not failed:
                return
            log.warning("%d of %d sends failed (%s); resending", len(failed), len(records),
                        futures[records.index(failed[0])].exception)
            records = failed
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

    def _emit_transaction(self, items: list[Item], records: list[KafkaRecord]) -> None:
        for item in items:
            self._tracker.done(item.partition, item.record.offset)  # type: ignore[arg-type]
        offsets = self._tracker.committable()
        try:
            self._producer.begin_transaction()
            for record in records:
                self._send(record)
            if offsets:
                self._producer.send_offsets_to_transaction(
                    {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}, self._group_metadata()
                )
            self._producer.commit_transaction()
        except KafkaError as err:
            log.warning("transaction failed (%s); aborting and rewinding to the committed offsets", err)
            self._abort_and_rewind()
            return
        self._tracker.committed(offsets)

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
        self._in_flight.clear()
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
        self._pending = [(t, i) for t, i in self._pending if i.partition not in partitions]
        self._tracker.forget(partitions)
        log.info("revoked %s", sorted(f"{tp.topic}-{tp.partition}" for tp in partitions))

    def _drain(self) -> None:
        """SIGTERM: finish the in-flight batches within the grace period, commit, leave the group."""
        self._pending.clear()  # consumed but not started: not committed, so the next owner takes them
        self._emit_completed(wait_s=self._config.shutdown_grace_s)
        if self._in_flight:
            log.warning("abandoning %d unfinished batches; their records stay uncommitted", len(self._in_flight))
        log.info("worker stopped after emitting %d events", self.emitted)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked:
            self._worker.revoke(set(revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}-{tp.partition}" for tp in assigned))


def _trace_headers(event: Event | None) -> dict[str, str]:
    if event is None:
        return {}
    return {name: value for name in ("traceparent", "tracestate") if (value := event.get(name))}
