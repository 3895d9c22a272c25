"""The kafka-python 2.3 fixes, on the library's own objects in the states a fenced producer reaches.

The whole fenced-zombie path runs against a broker in tests/eventing/test_exactly_once.py.
"""

from __future__ import annotations

import time

import pytest
from kafka import KafkaProducer, TopicPartition
from kafka.errors import InvalidProducerEpochError, KafkaError, KafkaTimeoutError
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.producer.transaction_manager import TransactionalRequestResult, TransactionManager, TxnOffsetCommitHandler
from kafka.structs import OffsetAndMetadata

from eventing import kafka_fixes

TP0, TP1 = TopicPartition("out", 0), TopicPartition("out", 1)


@pytest.fixture(autouse=True)
def fixed() -> None:
    kafka_fixes.install()
    kafka_fixes.install()  # idempotent: a second install wraps nothing twice


class _Response:
    topics = [("in", [(0, InvalidProducerEpochError.errno)])]


def test_a_failed_txn_offset_commit_fails_the_transaction_instead_of_hanging() -> None:
    manager = TransactionManager(transactional_id="t", transaction_timeout_ms=1000, api_version=(2, 5))
    offsets = {TopicPartition("in", 0): OffsetAndMetadata(5, "", -1)}
    manager._pending_txn_offset_commits = dict(offsets)
    result = TransactionalRequestResult()
    TxnOffsetCommitHandler(manager, "g", offsets, result).handle_response(_Response())
    assert result.is_done and isinstance(result.exception, InvalidProducerEpochError)
    with pytest.raises(KafkaError):
        manager.begin_commit()  # the producer is done for: the partition gets a new one


def _accumulator_with_one_batch_in_flight() -> tuple[RecordAccumulator, list]:
    accumulator = RecordAccumulator()
    futures = [accumulator.append(tp, 0, b"k", b"v", [])[0] for tp in (TP0, TP1)]
    in_flight = accumulator._batches[TP0].popleft()  # what the sender's drain does
    in_flight.drained = time.time()
    return accumulator, futures


def test_a_fatal_error_aborts_batches_in_flight_too() -> None:
    accumulator, futures = _accumulator_with_one_batch_in_flight()
    accumulator._abort_batches(InvalidProducerEpochError())  # 2.3.3: ValueError, on every sender turn
    assert not accumulator.has_incomplete
    assert all(f.is_done and isinstance(f.exception, InvalidProducerEpochError) for f in futures)


def test_an_abortable_error_aborts_only_the_batches_not_sent() -> None:
    accumulator, futures = _accumulator_with_one_batch_in_flight()
    accumulator.abort_undrained_batches(InvalidProducerEpochError())  # 2.3.3: ValueError
    assert not futures[0].is_done, "the batch in flight is settled by its response"
    assert futures[1].is_done and isinstance(futures[1].exception, InvalidProducerEpochError)


class _StuckProducer:
    """A producer whose EndTxn never goes out: the commit's result is never completed."""

    def __init__(self) -> None:
        self.result = TransactionalRequestResult()
        self._transaction_manager = self
        self._sender = self
        self.config = {"max_block_ms": 50}

    def begin_commit(self) -> TransactionalRequestResult:
        return self.result

    def wakeup(self) -> None:
        pass


def test_a_commit_that_never_completes_times_out_instead_of_hanging() -> None:
    producer = _StuckProducer()
    with pytest.raises(KafkaTimeoutError, match="commit the transaction"):
        KafkaProducer.commit_transaction(producer)
    producer.result.done()
    KafkaProducer.commit_transaction(producer)  # completed now: returns
