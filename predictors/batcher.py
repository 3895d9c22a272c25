"""Adaptive in-process batching: a small asyncio primitive.

Callers ``await batcher.submit(item)``. Items that arrive within ``max_batch_latency_ms`` of
the oldest waiting item (or until ``max_batch_size`` is reached) and share a batch key run
as one call of the handler. At most ``max_concurrent_batches`` batches run at a time (one by
default), so under load the next batch fills while the current ones compute: batch size adapts
to the arrival rate.

This module imports neither KServe nor torch; the server wires it to an engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")
R = TypeVar("R")


class BatcherError(Exception):
    """Base of the batcher's own errors."""


class QueueFull(BatcherError):
    """More items are waiting than ``max_queue`` allows; the caller should shed load."""

    def __init__(self, depth: int) -> None:
        super().__init__(f"queue full: {depth} requests waiting")
        self.depth = depth


class BatcherClosed(BatcherError):
    """The batcher was closed before the item ran."""


class BatchSizeMismatch(BatcherError, RuntimeError):
    """The handler returned a different number of outputs than it was given inputs."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__(f"batch handler returned {outputs} outputs for {inputs} inputs")
        self.inputs = inputs
        self.outputs = outputs


class BatcherConfig(BaseModel):
    """Batching settings; invalid values are rejected with the value in the message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(default=32, ge=1, le=4096)
    max_batch_latency_ms: float = Field(default=5.0, ge=0.0, le=60_000.0)
    max_queue: int = Field(default=1024, ge=1)
    max_concurrent_batches: int | None = Field(
        default=None, ge=1, le=64,
        description="batches computed at once; None: what the engine prefers (one unless it says otherwise)")

    @property
    def concurrency(self) -> int:
        return self.max_concurrent_batches or 1


class Clock(Protocol):
    """Time source; tests pass a fake one so deadlines need no real sleeps."""

    def now(self) -> float: ...

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        """Wait until ``event`` is set (True) or ``seconds`` pass (False)."""
        ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def wait(self, event: asyncio.Event, seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True


@dataclass(eq=False)
class Pending(Generic[T, R]):
    """One waiting item: the caller's input, its future and when it arrived."""

    item: T
    key: Hashable
    arrived: float
    future: asyncio.Future[R] = field(repr=False)


BatchHandler = Callable[[Sequence[T]], Awaitable[Sequence["R | BaseException"]]]
BatchObserver = Callable[[int, Sequence[float]], None]
"""Called after each batch with its size and each item's queue wait in seconds."""


def _same_key(_: object) -> Hashable:
    return None


class Batcher(Generic[T, R]):
    """Groups concurrent ``submit`` calls into batched handler calls.

    The handler gets a sequence of items and returns one output per item, in order. An
    output that is an exception fails only its own caller. If the handler raises for a
    batch of several items, each item is re-run alone so that one bad item fails alone.
    """

    def __init__(
        self,
        handler: BatchHandler[T, R],
        config: BatcherConfig,
        *,
        key: Callable[[T], Hashable] = _same_key,
        clock: Clock | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self._handler = handler
        self._config = config
        self._key = key
        self._clock = clock or MonotonicClock()
        self._observer = observer
        self._pending: list[Pending[T, R]] = []
        self._running: dict[asyncio.Task[None], list[Pending[T, R]]] = {}  # batches computing now
        self._arrival = asyncio.Event()  # an item arrived or a batch finished
        self._runner: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def config(self) -> BatcherConfig:
        return self._config

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the batch now running)."""
        return len(self._pending)

    async def submit(self, item: T) -> R:
        if self._closed:
            raise BatcherClosed("batcher is closed")
        if len(self._pending) >= self._config.max_queue:
            raise QueueFull(len(self._pending))
        loop = asyncio.get_running_loop()
        pending: Pending[T, R] = Pending(item, self._key(item), self._clock.now(), loop.create_future())
        self._pending.append(pending)
        self._arrival.set()
        if self._runner is None:
            self._runner = loop.create_task(self._run(), name="kzero-batcher")
        return await pending.future

    async def close(self) -> None:
        """Stop batching; items still waiting fail with ``BatcherClosed``."""
        self._closed = True
        if self._runner is not None:
            self._runner.cancel()
            try:
                await self._runner
            except asyncio.CancelledError:
                pass
            self._runner = None
        running = list(self._running.items())
        for task, _ in running:
            task.cancel()
        for task, _ in running:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for pending in [*(p for _, batch in running for p in batch), *self._pending]:
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("batcher closed before the request finished"))
        self._pending.clear()
        self._running = {}

    async def _run(self) -> None:
        while True:
            self._drop_cancelled()
            if not self._pending or len(self._running) >= self._config.concurrency:
                self._arrival.clear()
                await self._arrival.wait()
                continue
            batch = await self._collect()
            if batch:
                task = asyncio.get_running_loop().create_task(self._execute(batch), name="kzero-batch")
                self._running[task] = batch
                task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._arrival.set()  # the runner may start another batch

    def _drop_cancelled(self) -> None:
        self._pending = [p for p in self._pending if not p.future.done()]

    async def _collect(self) -> list[Pending[T, R]]:
        """Take the oldest item and same-key items until the batch is full or its deadline."""
        first = self._pending[0]
        deadline = first.arrived + self._config.max_batch_latency_ms / 1000.0
        while True:
            self._drop_cancelled()
            same = [p for p in self._pending if p.key == first.key]
            if first.future.done() and not same:
                return []
            if len(same) >= self._config.max_batch_size:
                break
            remaining = deadline - self._clock.now()
            if remaining <= 0:
                break
            self._arrival.clear()
            await self._clock.wait(self._arrival, remaining)
        batch = same[: self._config.max_batch_size]
        taken = set(map(id, batch))
        self._pending = [p for p in self._pending if id(p) not in taken]
        return batch

    async def _execute(self, batch: list[Pending[T, R]]) -> None:
        started = self._clock.now()
        if self._observer is not None:
            self._observer(len(batch), [started - p.arrived for p in batch])
        try:
            outputs = await self._call(batch)
        except Exception as exc:  # the handler failed as a whole
            if len(batch) == 1:
                outputs = [exc]
            else:
                outputs = [await self._call_alone(p) for p in batch]
        for pending, output in zip(batch, outputs, strict=True):
            if pending.future.done():  # caller went away meanwhile
                continue
            if isinstance(output, BaseException):
                pending.future.set_exception(output)
            else:
                pending.future.set_result(output)

    async def _call(self, batch: list[Pending[T, R]]) -> Sequence[R | BaseException]:
        outputs = await self._handler([p.item for p in batch])
        if len(outputs) != len(batch):
            raise BatchSizeMismatch(len(batch), len(outputs))
        return outputs

    async def _call_alone(self, pending: Pending[T, R]) -> R | BaseException:
        try:
            return (await self._call([pending]))[0]
        except Exception as exc:
            return exc
