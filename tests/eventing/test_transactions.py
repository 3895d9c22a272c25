"""``PartitionTransactions`` against fake producers (the broker side is tests/eventing/test_exactly_once.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from eventing.config import WorkerConfig
from eventing.transactions import REOPEN_DELAY_S, PartitionTransactions
from events.kafka_binding import KafkaRecord

CONFIG = WorkerConfig(bootstrap_servers="b:9092", model="m", predictor_url="http://p", group="g", input_topic="in",
                      exactly_once=True, transactional_id_prefix="pre")
P0, P1 = TopicPartition("in", 0), TopicPartition("in", 1)


class FakeProducer:
    def __init__(self, transactional_id: str, calls: list[tuple[Any, ...]], fail_init: bool) -> None:
        self.transactional_id, self._calls, self._fail_init = transactional_id, calls, fail_init
        self.closed = False

    def init_transactions(self) -> None:
        self._calls.append(("init", self.transactional_id))
        if self._fail_init:
            raise KafkaTimeoutError("no transaction coordinator")

    def begin_transaction(self) -> None:
        self._calls.append(("begin",))

    def send(self, topic: str, *, value: bytes | None, key: bytes | None, headers: list[Any]) -> str:
        self._calls.append(("send", topic, value))
        return f"future-{value!r}"

    def send_offsets_to_transaction(self, offsets: dict[TopicPartition, OffsetAndMetadata], group: str) -> None:
        self._calls.append(("offsets", {tp.partition: o.offset for tp, o in offsets.items()}, group))

    def commit_transaction(self) -> None:
        self._calls.append(("commit",))

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def calls() -> list[tuple[Any, ...]]:
    return []


def pool(calls: list[tuple[Any, ...]], clock: Clock, failing: set[str] = frozenset()) -> tuple[
        PartitionTransactions, list[FakeProducer]]:
    made: list[FakeProducer] = []

    def new_producer(transactional_id: str) -> Any:
        made.append(FakeProducer(transactional_id, calls, transactional_id in failing))
        return made[-1]

    return PartitionTransactions(CONFIG, new_producer, clock), made


def reader(calls: list[tuple[Any, ...]], offsets: dict[TopicPartition, int | None]) -> Callable:
    def committed(partition: TopicPartition) -> int | None:
        calls.append(("committed", partition.partition))
        return offsets[partition]

    return committed


def test_the_committed_offset_is_read_only_after_fencing(calls: list[tuple[Any, ...]]) -> None:
    transactions, made = pool(calls, Clock())
    transactions.assigned([P0, P1])
    assert transactions.waiting() == {P0, P1} and transactions.lease(P0) is None
    opened = transactions.open_due(reader(calls, {P0: 42, P1: None}))
    assert opened == {P0: 42, P1: None}
    assert calls == [("init", "pre-g-in-0"), ("committed", 0), ("init", "pre-g-in-1"), ("committed", 1)]
    assert transactions.waiting() == set() and [p.transactional_id for p in made] == ["pre-g-in-0", "pre-g-in-1"]


def test_each_opening_is_a_new_lease(calls: list[tuple[Any, ...]]) -> None:
    transactions, made = pool(calls, Clock())
    transactions.assigned([P0])
    transactions.open_due(reader(calls, {P0: 0}))
    first = transactions.lease(P0)
    transactions.revoked([P0])
    assert transactions.lease(P0) is None and made[0].closed
    transactions.assigned([P0])
    transactions.open_due(reader(calls, {P0: 0}))
    assert transactions.lease(P0) not in (None, first)
    assert len(made) == 2 and not made[1].closed, "a new producer: a kafka-python producer inits once"


def test_a_partition_that_cannot_be_opened_waits_and_is_retried(calls: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    transactions, made = pool(calls, clock, failing={"pre-g-in-1"})
    transactions.assigned([P0, P1])
    assert transactions.open_due(reader(calls, {P0: 5, P1: 7})) == {P0: 5}
    assert ("committed", 1) not in calls, "no offset read without fencing"
    assert made[1].closed and transactions.waiting() == {P1} and transactions.lease(P1) is None
    clock.now += REOPEN_DELAY_S / 2
    assert transactions.open_due(reader(calls, {P1: 7})) == {} and len(made) == 2
    clock.now += REOPEN_DELAY_S
    transactions.open_due(reader(calls, {P1: 7}))
    assert len(made) == 3, "tried again after the delay"


def test_a_lost_partition_is_closed_and_reopened_after_the_delay(calls: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    transactions, made = pool(calls, clock)
    transactions.assigned([P0])
    transactions.open_due(reader(calls, {P0: 3}))
    transactions.lost(P0)
    assert made[0].closed and transactions.lease(P0) is None and transactions.waiting() == {P0}
    assert transactions.open_due(reader(calls, {P0: 3})) == {}
    clock.now += REOPEN_DELAY_S
    assert transactions.open_due(reader(calls, {P0: 3})) == {P0: 3}


def test_a_revoked_partition_is_not_reopened(calls: list[tuple[Any, ...]]) -> None:
    clock = Clock()
    transactions, _ = pool(calls, clock)
    transactions.assigned([P0])
    transactions.open_due(reader(calls, {P0: 3}))
    transactions.lost(P0)
    transactions.revoked([P0])
    clock.now += REOPEN_DELAY_S
    assert transactions.open_due(reader(calls, {P0: 3})) == {} and transactions.waiting() == set()


@pytest.mark.parametrize("error", [AttributeError("'NoneType' object has no attribute 'sendall'"),
                                   KafkaTimeoutError("sender thread still busy"), RuntimeError("anything")])
def test_a_producer_failing_to_close_still_leaves_every_revoked_partition_closed(
        calls: list[tuple[Any, ...]], error: Exception) -> None:
    transactions, made = pool(calls, Clock())
    transactions.assigned([P0, P1])
    transactions.open_due(reader(calls, {P0: 0, P1: 0}))

    def fail(timeout: float | None = None) -> None:
        raise error

    made[0].close = fail  # type: ignore[method-assign]
    transactions.revoked([P0, P1])  # does not raise: a revoke that stopped half-way would leave P1 leased
    assert transactions.lease(P0) is None and transactions.lease(P1) is None and made[1].closed
    assert transactions.waiting() == set()


def test_a_commit_sends_records_and_the_partitions_offset_in_one_transaction(calls: list[tuple[Any, ...]]) -> None:
    transactions, _ = pool(calls, Clock())
    transactions.assigned([P1])
    transactions.open_due(reader(calls, {P1: 0}))
    calls.clear()
    records = [KafkaRecord("out", b"a", b"k"), KafkaRecord("dlq", b"b")]
    assert transactions.commit(P1, records, 12) == ["future-b'a'", "future-b'b'"]
    assert calls == [("begin",), ("send", "out", b"a"), ("send", "dlq", b"b"), ("offsets", {1: 12}, "g"),
                     ("commit",)]
    calls.clear()
    transactions.commit(P1, records[:1], None)
    assert ("offsets", {1: 12}, "g") not in calls and calls[-1] == ("commit",)
