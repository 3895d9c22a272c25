"""The eventing worker: Kafka request events in, micro-batched predictor calls, result or DLQ events out.

Delivery:
- at-least-once (default): a partition's offset is committed only once the result or DLQ event
  of every earlier record of that partition is acknowledged by the broker;
- exactly-once (``exactly_once``): results, DLQ events and the consumed offsets of each input
  partition go in one Kafka transaction of that partition's own producer (``eventing.transactions``),
  so ``read_committed`` readers see one result per request with any number of workers, rebalances,
  stalled workers coming back (zombies) and crashes. A partition is consumed only once its producer
  has fenced the previous owner's, from the committed offset read after that; a failed or fenced
  transaction drops the partition's in-flight work and re-opens it.

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
from eventing.metrics import DEAD_LETTERED, SUCCEEDED, WorkerMetrics
from eventing.offsets import OffsetTracker
from eventing.processing import EventHandler, Failure, Outcome, Success
from eventing.transactions import PartitionTransactions
from events.errors import INVALID_EVENT, WORKER_ERROR, MalformedEvent
from events.event import Event, error_event, result_event
from events.kafka_binding import KafkaRecord, from_client_record, from_record
from observability import propagation
from observability import semconv as sc

log = logging.getLogger(__name__)

_SEND_RETRY_S = 1.0
_LAG_INTERVAL_S = 1.0
_OFFSET_FETCH_TIMEOUT_MS = 30_000


@dataclass
class Item:
    """One consumed record on its way through the worker."""

    partition: TopicPartition
    record: KafkaRecord
    event: Event | None
    data: dict[str, Any] | None
    span: Span
    received: float
    lease: int | None = None  # exactly-once: the opening of the partition it was consumed under
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


def kafka_clients(config: WorkerConfig) -> tuple[KafkaConsumer, KafkaProducer | PartitionTransactions]:
    """The consumer, and the producer (at-least-once) or the per-partition transactional producers."""
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

    def producer(**extra: Any) -> KafkaProducer:
        # A result of 384 floats is ~8 KB, so kafka-python's default 16 KB batches held two: a partition's
        # share of a micro-batch now goes in one batch (fewer produce requests for the sender thread and
        # the broker).
        return KafkaProducer(bootstrap_servers=config.bootstrap_servers, acks="all", enable_idempotence=True,
                             linger_ms=5, batch_size=PRODUCER_BATCH_BYTES, **extra, **security)

    if config.exactly_once:
        # A transactional call blocks at most max_block_ms (eventing.kafka_fixes); one that cannot finish
        # sooner has lost its partition, and a shorter bound keeps a stuck zombie answering SIGTERM.
        return consumer, PartitionTransactions(config, lambda transactional_id: producer(
            transactional_id=transactional_id, transaction_timeout_ms=config.transaction_timeout_ms,
            max_block_ms=TRANSACTION_BLOCK_MS))
    return consumer, producer()


TRANSACTION_BLOCK_MS = 15_000
PRODUCER_BATCH_BYTES = 512 * 1024  # under the 1 MiB max_request_size


class Worker:
    def __init__(
        self,
        config: WorkerConfig,
        handler: EventHandler,
        consumer: KafkaConsumer,
        producer: KafkaProducer | PartitionTransactions,
        *,
        clock: Callable[[], float] = time.monotonic,
        tracer: trace.Tracer | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self._config = config
        self._handler = handler
        self._consumer = consumer
        self._producer = producer if isinstance(producer, KafkaProducer) else None
        self._transactions = producer if isinstance(producer, PartitionTransactions) else None
        if (self._transactions is not None) != config.exactly_once:
            raise ValueError("exactly-once takes PartitionTransactions, at-least-once a KafkaProducer")
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
        self._consumer.subscribe([self._config.input_topic], listener=_Listener(self))
        log.info("worker consuming %s as group %s (%s)", self._config.input_topic, self._config.group,
                 "exactly-once" if self._config.exactly_once else "at-least-once")
        try:
            while not stop.is_set():
                self._tick()
            self._drain()
        finally:
            self._consumer.close()
            if self._producer is not None:
                self._producer.close()
            if self._transactions is not None:
                self._transactions.close()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(5)

    # -- the loop ---------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._transactions is not None:
            self._open_partitions(self._transactions)
        self._backpressure()
        timeout_ms = 5 if self._in_flight else min(100, self._config.max_wait_ms or 100)
        room = max(1, self._config.max_in_flight - self._tracker.in_flight())
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=room)
        now = self._clock()
        for partition, records in polled.items():
            if self._transactions is not None and self._transactions.lease(partition) is None:
                continue  # fetched before it was paused: consumed again once opened
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
        elif resumable := self._consumer.paused() - self._waiting():
            self._consumer.resume(*resumable)

    def _waiting(self) -> set[TopicPartition]:
        return self._transactions.waiting() if self._transactions is not None else set()

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
        lease = self._transactions.lease(partition) if self._transactions is not None else None
        return Item(partition, record, event, data, span, now, lease, failure)

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
            failure = Failure(WORKER_ERROR, f"{type(err).__name__}: {err}", 0)
            return [item.failure or failure for item in batch.items]
        return [item.failure or next(computed) for item in batch.items]

    def _settle(self, batch: Batch) -> None:
        for item, outcome in zip(batch.items, self._outcomes(batch), strict=True):
            item.outcome = outcome
            item.span.set_attribute(sc.KZERO_ATTEMPT, outcome.attempts)
            if isinstance(outcome, Failure):
                item.span.set_attribute(sc.KZERO_ERROR_CODE, outcome.code)

    def _answer(self, item: Item) -> Outgoing | None:
        """The result or DLQ record for a settled item (none for a success of a handler without results)."""
        outcome = item.outcome
        if isinstance(outcome, Success):
            if not self._handler.emits_results:
                return None
            assert item.event is not None
            event = result_event(item.event, outcome.response, source=self._config.source)
            return self._outgoing(item, event, self._config.output_topic)
        assert isinstance(outcome, Failure)
        return self._outgoing(item, self._dead_letter(item, outcome), self._config.dlq_topic)

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
        for batch in batches:
            self._settle(batch)
        items = [item for batch in batches for item in batch.items]
        if self._transactions is not None:
            self._emit_transactions(items)
            return
        outgoing = [out for item in items if (out := self._answer(item)) is not None]
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
        assert self._producer is not None
        while True:
            futures = [self._producer.send(o.record.topic, value=o.record.value, key=o.record.key,
                                           headers=list(o.record.headers)) for o in outgoing]
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

    # -- exactly-once: one transaction per input partition ------------------------------------

    def _emit_transactions(self, items: list[Item]) -> None:
        """Commit each partition's answers with its offset in that partition's transaction, in order."""
        transactions = self._transactions
        assert transactions is not None
        by_partition: dict[TopicPartition, list[Item]] = {}
        for item in items:
            if item.lease is not None and transactions.lease(item.partition) == item.lease:
                by_partition.setdefault(item.partition, []).append(item)
            else:  # consumed before the partition was revoked or lost: its next opening redoes it
                _abandon([item], "partition revoked")
        for partition, owned in by_partition.items():
            outgoing = [out for item in owned if (out := self._answer(item)) is not None]
            for item in owned:
                self._tracker.done(partition, item.record.offset)  # type: ignore[arg-type]
            offset = self._tracker.committable().get(partition)
            if not outgoing and offset is None:
                continue
            try:
                futures = transactions.commit(partition, [out.record for out in outgoing], offset)
            except KafkaError as err:
                for out in outgoing:
                    tracing.failed(out.span, err, event="transaction aborted")
                _abandon(owned, "transaction aborted")
                self._lose(partition, err, len(owned))
                continue
            for out, future in zip(outgoing, futures, strict=True):
                tracing.sent(out.span, future.value if future.succeeded() else None)
            self._answered(owned)
            if offset is not None:
                self._tracker.committed({partition: offset})
            self.emitted += len(outgoing)

    def _lose(self, partition: TopicPartition, err: KafkaError, aborted: int) -> None:
        """A partition's transaction did not commit, mostly because a newer owner fenced this worker's
        producer (this worker had been out of the group: a zombie). Its work since the committed offset is
        dropped; unless the next polls revoke the partition, it is opened again (``PartitionTransactions.lost``)."""
        assert self._transactions is not None
        dropped = aborted + self._release({partition}, "transaction aborted")
        self._transactions.lost(partition)
        if partition in self._consumer.assignment():  # pausing an unassigned partition is a KeyError
            self._consumer.pause(partition)
        log.warning("partition %s: transaction failed (%s: %s); dropped %d unanswered records, opening it again "
                    "from its committed offset unless the group has moved it", _name(partition),
                    type(err).__name__, err, dropped)

    def _open_partitions(self, transactions: PartitionTransactions) -> None:
        """Open assigned partitions (fencing their previous owners) and seek to the offsets read after that."""
        opened = transactions.open_due(lambda p: self._consumer.committed(p, timeout_ms=_OFFSET_FETCH_TIMEOUT_MS))
        for partition, offset in opened.items():
            self._tracker.forget([partition])  # a new lease starts from the committed offset, afresh
            # The consumer fetched a position on assignment, before the fencing: it may be stale.
            if offset is None:
                self._consumer.seek_to_beginning(partition)
            else:
                self._consumer.seek(partition, offset)

    # -- rebalances and shutdown ----------------------------------------------------------------

    def assign(self, partitions: set[TopicPartition]) -> None:
        """Partitions were given to this worker. Exactly-once: each stays paused until opened.

        Called inside ``poll`` (which then fetches their positions from the committed offsets).
        """
        log.info("assigned %s", sorted(map(_name, partitions)))
        if self._transactions is not None and partitions:
            self._consumer.pause(*partitions)
            self._transactions.assigned(partitions)

    def revoke(self, partitions: set[TopicPartition]) -> None:
        """Partitions are being taken away: forget their unanswered records.

        Called inside ``poll``. Nothing of these partitions is committed any more. At-least-once emits the
        answers still in flight (the next owner redoes those records too); exactly-once drops them and
        closes the partitions' producers.
        """
        self._release(partitions, "partition revoked")
        if self._transactions is not None:
            self._transactions.revoked(partitions)
        log.info("revoked %s", sorted(map(_name, partitions)))

    def _release(self, partitions: set[TopicPartition], reason: str) -> int:
        """Stop committing ``partitions``: drop their records not yet dispatched. Returns how many were unanswered."""
        unanswered = sum(self._tracker.pending(partition) for partition in partitions)
        _abandon([item for _, item in self._pending if item.partition in partitions], reason)
        self._pending = [(t, i) for t, i in self._pending if i.partition not in partitions]
        self._tracker.forget(partitions)
        return unanswered

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
        self._worker.assign(set(assigned))


def _name(partition: TopicPartition) -> str:
    return f"{partition.topic}-{partition.partition}"


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
