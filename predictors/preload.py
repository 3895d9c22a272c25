"""Start loading the model at process start, before the server stack is imported.

A cached start is mostly imports: torch and the model code on the load side; KServe, FastAPI, gRPC
and OpenTelemetry on the server side. Loading waited for the server to be set up; on a thread of its
own from the first moment, the load overlaps it wherever either side leaves the GIL (file reads,
tensor copies, the warm-up's forward pass). Readiness is unchanged: the model turns ready only when
``BatchedModel`` holds the loaded task (``predictors.model``).

Nothing heavy is imported here: the thread imports the loader itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from predictors.config import PredictorConfig
    from predictors.loading import LoadReport
    from predictors.tasks import TaskAdapter

T = TypeVar("T")


class EarlyLoad(Generic[T]):
    """A loader whose first load starts when it is made; calling it waits for that load (and takes
    its result, or its exception). Later calls, a reload after an unload, load anew on the caller's
    thread, so an unloaded model is not kept alive here."""

    def __init__(self, load: Callable[[], T], name: str = "kzero-early-load") -> None:
        self._load = load
        self._first: Future[T] | None = Future()
        # A daemon: a start that stops early (a bad OTEL_* value) must not wait for the load to end.
        threading.Thread(target=self._run, args=(self._first,), name=name, daemon=True).start()

    def _run(self, future: Future[T]) -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(self._load())
        except BaseException as err:  # handed to the caller, as the model thread would have raised it
            future.set_exception(err)

    def __call__(self) -> T:
        first, self._first = self._first, None
        return self._load() if first is None else first.result()


def load_quietly(config: PredictorConfig) -> tuple[TaskAdapter[Any, Any], LoadReport]:
    """``load_task`` without transformers' progress bars (they would go to the log)."""
    from transformers.utils import logging as hf_logging

    from predictors.loading import load_task

    hf_logging.disable_progress_bar()
    return load_task(config)
