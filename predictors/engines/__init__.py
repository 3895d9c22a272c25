"""Model engines: plain classes around torch/transformers models, testable without KServe.

An engine turns a batch of typed items into one output per item (or an exception for an item
that failed alone). Adding a task means adding one engine module and one task adapter.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol, TypeVar

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
