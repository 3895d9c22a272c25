"""Model engines: plain classes around torch/transformers models, testable without KServe.

An engine turns a batch of typed items into one output per item (or an exception for an item
that failed alone). Adding a task means adding one engine module and one task adapter.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Protocol, TypeVar

I_contra = TypeVar("I_contra", contravariant=True)
O_co = TypeVar("O_co", covariant=True)


class Engine(Protocol[I_contra, O_co]):
    def batch_key(self, item: I_contra) -> Hashable:
        """Items with different keys never share a forward pass."""
        ...

    def run_batch(self, items: Sequence[I_contra]) -> Sequence[O_co | Exception]:
        """One forward pass over ``items``; blocking, called off the event loop."""
        ...

    def warmup(self) -> None:
        """Run one small batch so the first request does not pay for lazy initialisation."""
        ...


class SchedulingEngine(Protocol):
    """An engine that schedules requests itself, at token granularity (continuous batching), instead of
    taking batches from the item batcher. The model calls it per request; a vLLM engine would fit here too."""

    self_scheduling: bool  # True: the model bypasses its batcher

    @property
    def waiting(self) -> int:
        """Requests submitted that have not produced a token yet (the admission bound counts these)."""
        ...

    async def generate(self, request: Any, on_first_token: Callable[[], None] | None = None) -> tuple[Any, Any]:
        """Run one request to its end: (result, timings). Cancelling the caller's task frees its slot."""
        ...

    def stats(self) -> Any:
        """Running and waiting sequences and KV cache usage, read by the metrics gauges."""
        ...

    def warmup(self) -> None: ...

    def stop(self) -> None:
        """Blocking; end the decoding thread and free the cache."""
        ...
