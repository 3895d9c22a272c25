"""The KServe model: a thin adapter from KServe's v1/v2/gRPC calls to a task behind a batcher.

The model registers before it is loaded so the server listens at once; loading runs in the
background on the model thread, and requests that arrive meanwhile wait up to ``load_wait_s``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from predictors.batcher import Batcher, BatcherClosed, BatcherConfig, QueueFull
from predictors.errors import InvalidInput, NotReady, Overloaded, PredictorError, Unavailable
from predictors.loading import LoadReport
from predictors.metrics import PredictorMetrics
from predictors.readiness import LoadGate
from predictors.tasks import TaskAdapter

log = logging.getLogger(__name__)

Loader = Callable[[], tuple[TaskAdapter[Any, Any], LoadReport]]


@dataclass(frozen=True)
class Work:
    """One item in the batcher, with the span of the request it belongs to."""

    item: Any
    span_context: trace.SpanContext


class InferenceFailed(PredictorError, RuntimeError):
    """The model raised while computing a batch (a server fault, not the caller's)."""


class BatchedModel(Model):
    def __init__(
        self,
        name: str,
        loader: Loader,
        batcher_config: BatcherConfig,
        *,
        load_wait_s: float,
        retry_after_s: int,
        tracer: trace.Tracer,
        metrics: PredictorMetrics,
    ) -> None:
        super().__init__(name)
        self._loader = loader
        self._batcher_config = batcher_config
        self._retry_after_s = retry_after_s
        self._tracer = tracer
        self._metrics = metrics
        # One model thread: loading and forward passes never run concurrently on the model.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kzero-{name}")
        self._gate = LoadGate(name, load_wait_s, retry_after_s)
        self._task: TaskAdapter[Any, Any] | None = None
        self._batcher: Batcher[Work, Any] | None = None
        self.report: LoadReport | None = None
        metrics.model_ready.labels(name).set(0)
        metrics.queue_depth.labels(name).set_function(lambda: self.queue_depth)

    @property
    def task(self) -> TaskAdapter[Any, Any]:
        if self._task is None:
            raise NotReady(f"model {self.name} is not loaded", self._retry_after_s)
        return self._task

    @property
    def queue_depth(self) -> int:
        return self._batcher.queue_depth if self._batcher else 0

    def load(self) -> bool:
        # KServe calls this synchronously when a request finds the model not ready; loading
        # already runs in the background (``load_in_background``), so never block here.
        return self.ready

    async def load_in_background(self) -> LoadReport:
        loop = asyncio.get_running_loop()
        try:
            self._task, self.report = await loop.run_in_executor(self._executor, self._loader)
        except BaseException as err:
            self._gate.fail(err)
            raise
        self._batcher = Batcher(
            self._run_batch,
            self._batcher_config,
            key=lambda work: self.task.engine.batch_key(work.item),
            observer=lambda size, waits: self._metrics.observe_batch(self.name, size, waits),
        )
        for phase, seconds in self.report.phases.items():
            self._metrics.cold_start.labels(phase).set(seconds)
        self.ready = True
        self._metrics.model_ready.labels(self.name).set(1)
        self._gate.open()
        return self.report

    async def wait_ready(self) -> None:
        if not self.ready:
            await self._gate.wait()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def get_input_types(self) -> list[dict[str, Any]]:
        return self.task.tensor_metadata()[0]

    def get_output_types(self) -> list[dict[str, Any]]:
        return self.task.tensor_metadata()[1]

    async def predict(
        self, payload: Mapping[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        await self.wait_ready()
        task = self.task
        if isinstance(payload, InferRequest):
            return task.to_v2(await self.infer_items(task.from_v2(payload), headers), payload)
        if isinstance(payload, bytes | str):  # KServe passes non-JSON content types through raw
            try:
                payload = json.loads(payload)
            except ValueError as err:
                raise InvalidInput("body", f"not valid JSON: {err}") from err
        return task.to_v1(await self.infer_items(task.from_v1(payload), headers))

    def check_capacity(self, items: int) -> None:
        """Shed a request whose items do not all fit in the queue, before any of them is queued."""
        depth = self.queue_depth
        if items > self._batcher_config.max_queue - depth:
            raise Overloaded(f"model {self.name} is overloaded: {depth} requests queued", self._retry_after_s)

    async def infer_items(self, items: Sequence[Any], headers: Mapping[str, str] | None) -> list[Any]:
        """Run ``items`` of one request through the batcher; the first failure fails the request."""
        await self.wait_ready()
        self.check_capacity(len(items))
        assert self._batcher is not None
        parent = None if trace.get_current_span().get_span_context().is_valid else propagate.extract(headers or {})
        with self._tracer.start_as_current_span(
            f"infer {self.name}", context=parent, kind=SpanKind.SERVER,
            attributes={"kzero.model": self.name, "kzero.items": len(items)},
        ) as span:
            work = [Work(item, span.get_span_context()) for item in items]
            results = await asyncio.gather(*(self._batcher.submit(w) for w in work), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise self._translate(result)
        return list(results)

    def _translate(self, err: BaseException) -> BaseException:
        if isinstance(err, PredictorError):
            return err
        if isinstance(err, QueueFull):
            return Overloaded(f"model {self.name} is overloaded: {err}", self._retry_after_s)
        if isinstance(err, BatcherClosed):
            return Unavailable(f"model {self.name} is shutting down", self._retry_after_s)
        log.error("inference failed in model %s", self.name, exc_info=err)
        return InferenceFailed(f"inference failed: {type(err).__name__}: {err}")

    async def _run_batch(self, works: Sequence[Work]) -> Sequence[Any]:
        links = [Link(w.span_context) for w in works if w.span_context.is_valid]
        loop = asyncio.get_running_loop()
        engine = self.task.engine
        token = otel_context.attach(otel_context.Context())  # a batch is a root linked to its requests
        try:
            with self._tracer.start_as_current_span(
                f"batch {self.name}", links=links, attributes={"kzero.batch_size": len(works)}
            ):
                outputs = await loop.run_in_executor(self._executor, engine.run_batch, [w.item for w in works])
        finally:
            otel_context.detach(token)
        tokens = sum(getattr(out, "completion_tokens", 0) for out in outputs)
        if tokens:
            self._metrics.generated_tokens.labels(self.name).inc(tokens)
        return outputs
