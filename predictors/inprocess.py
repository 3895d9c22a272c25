"""A predictor client that runs a task in this process: the embedded demo needs no server.

The public in-process API of predictors: the RAG transformer and ingestion embed with a packaged
model through it, and nothing else of predictors is theirs to import (tests/test_layering.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from predictors.config import PredictorConfig, Task
from predictors.loading import load_task
from predictors.tasks import TaskAdapter
from serving import item_trace
from serving.client import PermanentCallError, TransientCallError
from serving.errors import InvalidInput


class InProcessClient:
    def __init__(self, task: TaskAdapter[Any, Any]) -> None:
        self._task = task
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kzero-inprocess")

    @classmethod
    def load(cls, config: PredictorConfig) -> InProcessClient:
        task, _ = load_task(config)
        return cls(task)

    @classmethod
    def packaged(cls, model_id: str, task: Task) -> InProcessClient:
        """A packaged model (``serving.packaged``) on this process's CPU or GPU, loaded now (blocking)."""
        return cls.load(PredictorConfig(model_name=model_id, task=task, model_id=model_id))

    async def predict(self, model: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> dict:
        try:
            # Per-item trace context is for servers; here the caller's span is already current.
            items = self._task.from_v1(item_trace.split_v1(body)[0])
        except InvalidInput as err:
            raise PermanentCallError(str(err), status=400) from err
        loop = asyncio.get_running_loop()
        try:
            outputs = await loop.run_in_executor(self._executor, self._task.engine.run_batch, items)
        except Exception as err:
            raise TransientCallError(f"in-process inference failed: {type(err).__name__}: {err}") from err
        failed = next((o for o in outputs if isinstance(o, Exception)), None)
        if failed is not None:
            raise PermanentCallError(str(failed), status=400)
        return self._task.to_v1(outputs)

    async def close(self) -> None:
        self._executor.shutdown(wait=False)
