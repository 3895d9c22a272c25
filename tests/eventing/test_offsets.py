from __future__ import annotations

from eventing.offsets import OffsetTracker


def test_commit_never_passes_an_unanswered_record() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.add("p0", offset)
    tracker.done("p0", 0)
    tracker.done("p0", 2)
    tracker.done("p0", 3)
    assert tracker.committable() == {"p0": 1}
    tracker.committed({"p0": 1})
    assert tracker.committable() == {}
    tracker.done("p0", 1)
    assert tracker.committable() == {"p0": 4}
    tracker.done("p0", 4)
    assert tracker.committable() == {"p0": 5}
    assert tracker.in_flight() == 0


def test_partitions_are_independent_and_gaps_are_fine() -> None:
    tracker = OffsetTracker()
    tracker.add("a", 10)
    tracker.add("a", 12)  # 11 was a transaction marker
    tracker.add("b", 0)
    tracker.done("a", 10)
    assert tracker.committable() == {"a": 12}
    tracker.done("a", 12)
    assert tracker.committable() == {"a": 13}
    assert tracker.in_flight() == 1


def test_nothing_to_commit_while_the_first_record_is_pending() -> None:
    tracker = OffsetTracker()
    tracker.add("p", 0)
    assert tracker.committable() == {}


def test_forgotten_partitions_are_not_committed() -> None:
    tracker = OffsetTracker()
    tracker.add("p", 0)
    tracker.forget(["p"])
    tracker.done("p", 0)  # a late answer for a revoked partition
    assert tracker.committable() == {} and tracker.partitions() == []
