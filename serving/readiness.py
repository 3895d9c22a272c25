"""Honest readiness for a model that loads in the background: requests wait for it, up to a deadline."""

from __future__ import annotations

import asyncio
from typing import Protocol

from kserve.protocol.infer_type import InferRequest

from serving.errors import ModelUnloaded, NotReady, Unavailable


class LoadGate:
    """Set when loading ends (well or not); ``wait`` holds callers until then or the deadline.

    After ``unload`` callers fail at once (404) instead of waiting, until ``reset`` starts a reload.
    """

    def __init__(self, name: str, wait_s: float, retry_after_s: int) -> None:
        self._name = name
        self._wait_s = wait_s
        self.retry_after_s = retry_after_s
        self._done = asyncio.Event()
        self._error: BaseException | None = None
        self._unloaded = False

    def open(self) -> None:
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def unload(self) -> None:
        self._unloaded = True
        self._done = asyncio.Event()

    def reset(self) -> None:
        """Loading starts (again); callers already waiting for a first load keep waiting."""
        if self._done.is_set():
            self._done = asyncio.Event()
        self._error = None
        self._unloaded = False

    async def wait(self) -> None:
        if self._unloaded:
            raise ModelUnloaded(self._name)
        if not self._done.is_set():
            try:
                await asyncio.wait_for(self._done.wait(), self._wait_s)
            except TimeoutError:
                raise NotReady(
                    f"model {self._name} is still loading (waited {self._wait_s:g}s); retry later", self.retry_after_s
                ) from None
        if self._error is not None:
            raise Unavailable(f"model {self._name} failed to load: {self._error}", self.retry_after_s)


class ServedModel(Protocol):
    """What the kzero server needs of a KServe model it serves."""

    name: str
    ready: bool

    async def load_in_background(self) -> object: ...

    async def wait_ready(self) -> None: ...

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None) -> object: ...
