from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from pydantic import ValidationError

from predictors.batcher import (
    Batcher,
    BatcherClosed,
    BatcherConfig,
    BatchSizeMismatch,
    QueueFull,
)


class FakeClock:
    """Virtual time: waits end only when the test advances the clock."""

    def __init__(self) -> None:
        self.t = 0.0
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.t + seconds, timer)
        self._timers.append(entry)
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({waiter, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            self._timers.remove(entry)
        return event.is_set()

    def advance(self, seconds: float) -> None:
        self.t += seconds
        for deadline, timer in self._timers:
            if deadline <= self.t and not timer.done():
                timer.set_result(None)


class RecordingHandler:
    """Doubles numbers; fails items equal to ``bad``; can be held at a gate."""

    def __init__(self, bad: int | None = None, fail_whole_batch: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.bad = bad
        self.fail_whole_batch = fail_whole_batch

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.bad in items and self.fail_whole_batch:
            raise RuntimeError("forward pass failed")
        return [ValueError(f"bad item {i}") if i == self.bad else i * 2 for i in items]


async def settle() -> None:
    """Let every ready task run (no wall-clock time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


def make(handler, clock: FakeClock, **config) -> Batcher[int, int]:
    defaults = {"max_batch_size": 4, "max_batch_latency_ms": 10.0, "max_queue": 100}
    return Batcher(handler, BatcherConfig(**(defaults | config)), clock=clock)


async def test_full_batch_flushes_without_waiting_for_deadline() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert results == [0, 2, 4, 6]
    assert handler.batches == [[0, 1, 2, 3]]
    assert clock.t == 0.0


async def test_partial_batch_waits_for_deadline() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2)]
    await settle()
    assert handler.batches == []
    clock.advance(0.009)
    await settle()
    assert handler.batches == []
    clock.advance(0.002)
    assert await asyncio.gather(*calls) == [2, 4]
    assert handler.batches == [[1, 2]]


async def test_items_beyond_max_size_go_to_next_batch_in_order() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock, max_batch_size=3)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(5)]
    await settle()
    clock.advance(1.0)
    assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8]
    assert handler.batches == [[0, 1, 2], [3, 4]]


async def test_incompatible_keys_are_never_mixed() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    config = BatcherConfig(max_batch_size=8, max_batch_latency_ms=5)
    batcher = Batcher(handler, config, key=lambda i: i % 2, clock=clock)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(6)]
    await settle()
    clock.advance(1.0)
    await settle()
    clock.advance(1.0)
    assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8, 10]
    assert handler.batches == [[0, 2, 4], [1, 3, 5]]


async def test_new_arrivals_fill_next_batch_while_one_runs() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock, max_batch_size=8)
    handler.gate.clear()
    first = asyncio.ensure_future(batcher.submit(0))
    await settle()
    clock.advance(1.0)
    await settle()
    assert handler.batches == [[0]]
    later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
    await settle()
    assert batcher.queue_depth == 5
    handler.gate.set()
    await settle()
    clock.advance(1.0)
    assert await asyncio.gather(first, *later) == [0, 2, 4, 6, 8, 10]
    assert handler.batches == [[0], [1, 2, 3, 4, 5]]


async def test_failed_item_fails_alone() -> None:
    clock, handler = FakeClock(), RecordingHandler(bad=2)
    batcher = make(handler, clock)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert results[:2] == [0, 2] and results[3] == 6
    assert isinstance(results[2], ValueError) and "bad item 2" in str(results[2])
    assert handler.batches == [[0, 1, 2, 3]]


async def test_whole_batch_failure_is_isolated_by_rerunning_items_alone() -> None:
    clock, handler = FakeClock(), RecordingHandler(bad=1, fail_whole_batch=True)
    batcher = make(handler, clock, max_batch_size=3)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert results[0] == 0 and results[2] == 4
    assert isinstance(results[1], RuntimeError)
    assert handler.batches == [[0, 1, 2], [0], [1], [2]]


async def test_output_count_mismatch_is_an_error_not_a_misassignment() -> None:
    async def short(items: Sequence[int]) -> list[int]:
        return [i for i in items][:-1]

    batcher = make(short, FakeClock(), max_batch_size=2)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert all(isinstance(r, BatchSizeMismatch) for r in results)
    assert "0 outputs for 1 inputs" in str(results[0])


async def test_cancelled_callers_are_skipped() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await settle()
    calls[1].cancel()
    await settle()
    clock.advance(1.0)
    assert await calls[0] == 0 and await calls[2] == 4
    assert handler.batches == [[0, 2]]


async def test_cancelled_first_item_does_not_stall_the_rest() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock)
    first = asyncio.ensure_future(batcher.submit(7))
    await settle()
    first.cancel()
    second = asyncio.ensure_future(batcher.submit(8))
    await settle()
    clock.advance(1.0)
    assert await second == 16
    assert handler.batches == [[8]]


async def test_queue_full_is_rejected_immediately() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock, max_queue=2, max_batch_size=8)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
    await settle()
    with pytest.raises(QueueFull, match="2 requests waiting"):
        await batcher.submit(99)
    clock.advance(1.0)
    assert await asyncio.gather(*calls) == [0, 2]


async def test_observer_sees_batch_size_and_queue_waits() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    seen: list[tuple[int, list[float]]] = []
    batcher = Batcher(
        handler,
        BatcherConfig(max_batch_size=4, max_batch_latency_ms=10),
        clock=clock,
        observer=lambda size, waits: seen.append((size, list(waits))),
    )
    first = asyncio.ensure_future(batcher.submit(1))
    await settle()
    clock.advance(0.004)
    second = asyncio.ensure_future(batcher.submit(2))
    await settle()
    clock.advance(0.006)
    await asyncio.gather(first, second)
    assert seen[0][0] == 2
    assert seen[0][1] == pytest.approx([0.010, 0.006])


async def held_at_the_gate(clock: FakeClock, handler: RecordingHandler, items: int, **config):
    """A batcher given ``items`` submits while the handler holds every batch it started."""
    batcher = make(handler, clock, **config)
    handler.gate.clear()
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(items)]
    await settle()
    return batcher, calls


async def test_concurrent_batches_run_side_by_side_up_to_the_limit() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher, calls = await held_at_the_gate(clock, handler, 6, max_batch_size=2, max_concurrent_batches=2)
    # Two full batches are computing at once; the third waits for one of them, not for the deadline.
    assert handler.batches == [[0, 1], [2, 3]]
    assert batcher.queue_depth == 2
    handler.gate.set()
    assert await asyncio.gather(*calls) == [0, 2, 4, 6, 8, 10]
    assert handler.batches == [[0, 1], [2, 3], [4, 5]]
    assert clock.t == 0.0


async def test_close_fails_items_of_every_batch_computing() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher, calls = await held_at_the_gate(clock, handler, 4, max_batch_size=1, max_concurrent_batches=3)
    assert handler.batches == [[0], [1], [2]] and batcher.queue_depth == 1
    await batcher.close()
    for call in calls:
        with pytest.raises(BatcherClosed):
            await call


async def test_close_fails_waiting_and_new_items() -> None:
    clock, handler = FakeClock(), RecordingHandler()
    batcher = make(handler, clock)
    waiting = asyncio.ensure_future(batcher.submit(1))
    await settle()
    await batcher.close()
    with pytest.raises(BatcherClosed):
        await waiting
    with pytest.raises(BatcherClosed):
        await batcher.submit(2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_batch_size", 0), ("max_batch_latency_ms", -1), ("max_queue", 0), ("max_concurrent_batches", 0)],
)
def test_config_rejects_bad_values_naming_them(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as err:
        BatcherConfig(**{field: value})
    assert field in str(err.value) and str(value) in str(err.value)
