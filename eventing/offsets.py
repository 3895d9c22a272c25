"""Which offsets may be committed: never past a record whose result (or DLQ event) is not acknowledged."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

Partition = Hashable  # a kafka TopicPartition, or anything hashable in tests


@dataclass
class _PartitionState:
    pending: set[int] = field(default_factory=set)
    high: int = -1  # highest offset seen
    committed: int | None = None  # next offset already committed


class OffsetTracker:
    """Tracks, per partition, the records in flight and the next offset safe to commit."""

    def __init__(self) -> None:
        self._parts: dict[Partition, _PartitionState] = {}

    def add(self, partition: Partition, offset: int) -> None:
        state = self._parts.setdefault(partition, _PartitionState())
        state.pending.add(offset)
        state.high = max(state.high, offset)

    def done(self, partition: Partition, offset: int) -> None:
        state = self._parts.get(partition)
        if state is not None:  # the partition may have been revoked meanwhile
            state.pending.discard(offset)

    def in_flight(self) -> int:
        return sum(len(s.pending) for s in self._parts.values())

    def pending(self, partition: Partition) -> int:
        """How many of the partition's records are unanswered."""
        state = self._parts.get(partition)
        return len(state.pending) if state is not None else 0

    def committable(self) -> dict[Partition, int]:
        """Next offset to commit for each partition whose safe point moved since the last commit."""
        out = {}
        for partition, state in self._parts.items():
            safe = min(state.pending) if state.pending else state.high + 1
            if safe > 0 and safe != state.committed:
                out[partition] = safe
        return out

    def committed(self, offsets: dict[Partition, int]) -> None:
        for partition, offset in offsets.items():
            if partition in self._parts:
                self._parts[partition].committed = offset

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop revoked partitions: their in-flight records are the next owner's to redo."""
        for partition in partitions:
            self._parts.pop(partition, None)

    def partitions(self) -> list[Partition]:
        return list(self._parts)
