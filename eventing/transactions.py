"""One transactional producer per input partition: exactly-once across workers, rebalances and zombies.

The scheme Kafka Streams used as ``exactly_once`` before KIP-447, which kafka-python 2.3 can do (it has
neither the consumer's group metadata for ``send_offsets_to_transaction`` nor ``require_stable`` offset
fetches). Each input partition has its own transactional id (``WorkerConfig.transactional_id``), the
same whichever worker owns it, and its results, DLQ events and offsets are committed in transactions of
that id only. When a worker is given the partition, ``open_due`` starts a producer with that id:
``init_transactions`` bumps the id's epoch, so every earlier owner's producer is fenced (its next send
or commit fails), and the transaction an earlier owner left open is aborted, or finished if it was
already committing, before it returns. The partition's committed offset read after that is stable, and
no earlier owner can commit past it: whoever owns the partition continues exactly where the last
committed transaction stopped.

Each opening of a partition is a lease; records consumed under an older lease must not be answered.

The cost is a producer (a sender thread, connections) per assigned partition, and a new one each time
a partition is assigned, which with kafka-python's eager rebalances is every rebalance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

from kafka import KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from eventing import kafka_fixes
from eventing.config import WorkerConfig
from events.kafka_binding import KafkaRecord

log = logging.getLogger(__name__)

# After a failed opening or transaction, before opening the partition again: time for the consumer to
# hear that the group gave the partition to another worker (when a stopped process resumes, its
# heartbeat thread learns so at once), so that a zombie does not fence the new owner in turn.
REOPEN_DELAY_S = 1.0
# Closing waits for the sender thread; an idle or fenced producer has nothing to wait for.
_CLOSE_TIMEOUT_S = 5.0

ProducerFactory = Callable[[str], KafkaProducer]
"""A new, uninitialised producer with the given transactional id."""


class PartitionTransactions:
    """The partitions this worker may commit in: their producers and leases, and those waiting to open."""

    def __init__(self, config: WorkerConfig, new_producer: ProducerFactory,
                 clock: Callable[[], float] = time.monotonic) -> None:
        kafka_fixes.install()  # a fenced producer must fail, not hang
        self._config = config
        self._new_producer = new_producer
        self._clock = clock
        self._producers: dict[TopicPartition, KafkaProducer] = {}
        self._leases: dict[TopicPartition, int] = {}
        self._last_lease = 0
        self._waiting: dict[TopicPartition, float] = {}  # to open, with the earliest time to try

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group gave these partitions to this worker: they are to be opened before being consumed."""
        for partition in partitions:
            self._waiting[partition] = 0.0

    def waiting(self) -> set[TopicPartition]:
        """Assigned but not open: not to be consumed."""
        return set(self._waiting)

    def open_due(self, committed: Callable[[TopicPartition], int | None]) -> dict[TopicPartition, int | None]:
        """Open each waiting partition whose time has come: start its producer, fencing every earlier one,
        then read its committed offset through ``committed``. Returns the offsets of those opened (None:
        nothing committed yet); the consumer must continue from exactly there. A partition that cannot be
        opened (a ``KafkaError``) waits and is tried again."""
        now = self._clock()
        opened = {}
        for partition, not_before in list(self._waiting.items()):
            if now < not_before:
                continue
            try:
                self._start(partition)
                offset = committed(partition)
            except KafkaError as err:
                log.warning("partition %s: cannot open it yet (%s: %s)", _name(partition), type(err).__name__, err)
                self._close(partition)
                self._waiting[partition] = now + REOPEN_DELAY_S
                continue
            del self._waiting[partition]
            self._last_lease += 1
            self._leases[partition] = self._last_lease
            opened[partition] = offset
        return opened

    def _start(self, partition: TopicPartition) -> None:
        self._close(partition)
        producer = self._new_producer(self._config.transactional_id(partition.partition))
        try:
            producer.init_transactions()
        except BaseException:
            producer.close(timeout=0)
            raise
        self._producers[partition] = producer

    def lease(self, partition: TopicPartition) -> int | None:
        """The current opening of an open partition, None for any other."""
        return self._leases.get(partition)

    def commit(self, partition: TopicPartition, records: Sequence[KafkaRecord],
               offset: int | None) -> list[FutureRecordMetadata]:
        """Send ``records`` and move the open partition's committed offset to ``offset``, all or nothing.

        Returns the sends' futures, all done. Raises ``KafkaError`` when the transaction did not commit
        (fenced by a newer owner, or failed): the caller must then call ``lost``.
        """
        producer = self._producers[partition]
        producer.begin_transaction()
        futures = [producer.send(r.topic, value=r.value, key=r.key, headers=list(r.headers)) for r in records]
        if offset is not None:
            # kafka-python 2.3 takes the group id only (no generation, KIP-447): the id's epoch is the fence.
            producer.send_offsets_to_transaction({partition: OffsetAndMetadata(offset, "", -1)}, self._config.group)
        producer.commit_transaction()
        return futures

    def lost(self, partition: TopicPartition) -> None:
        """Its transaction failed: close it and open it again after ``REOPEN_DELAY_S``, unless revoked meanwhile.

        The open transaction is left to the next opening of the id (here or at the new owner) to abort.
        """
        self.revoked([partition])
        self._waiting[partition] = self._clock() + REOPEN_DELAY_S

    def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = list(partitions)
        for partition in partitions:  # first, so that no failure below leaves a revoked partition open
            self._leases.pop(partition, None)
            self._waiting.pop(partition, None)
        for partition in partitions:
            self._close(partition)

    def close(self) -> None:
        self.revoked(list(self._producers))

    def _close(self, partition: TopicPartition) -> None:
        producer = self._producers.pop(partition, None)
        if producer is None:
            return
        try:
            producer.close(timeout=_CLOSE_TIMEOUT_S)
        except KafkaError as err:  # batches still being retried: they fail by delivery.timeout.ms
            log.warning("partition %s: producer not closed (%s: %s)", _name(partition), type(err).__name__, err)
        except Exception:  # the producer is dropped either way; its id's next opening fences it
            # Seen: kafka-python 2.3's fenced producer whose client already closed its wake-up socket fails
            # waking it (AttributeError: 'NoneType' has no 'sendall').
            log.warning("partition %s: producer not closed cleanly", _name(partition), exc_info=True)


def _name(partition: TopicPartition) -> str:
    return f"{partition.topic}-{partition.partition}"
