"""The KServe model: a thin adapter from KServe's v1/v2/gRPC calls to a task behind a batcher.

The model registers before it is loaded so the server listens at once; loading runs in the
background on the model thread, and requests that arrive meanwhile wait up to ``load_wait_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link

from observability import semconv
from observability.propagation import extract
from predictors.batcher import Batcher, BatcherClosed, BatcherConfig, QueueFull
from predictors.engines.continuous import EngineStopped
from predictors.loading import LoadReport
from predictors.metrics import PredictorMetrics
from predictors.tasks import TaskAdapter
from predictors.tasks.embed import EmbedTask
from serving import item_trace
from serving.errors import InvalidInput, NotReady, Overloaded, ServingError, Unavailable
from serving.readiness import LoadGate

log = logging.getLogger(__name__)

Loader = Callable[[], tuple[TaskAdapter[Any, Any], LoadReport]]


@dataclass(frozen=True)
class Work:
    """One item in the batcher, with the span of the request it belongs to (its batch links to it
    and writes the queue wait and batch size there), when it was submitted (monotonic seconds) and,
    when the request carried per-item trace context, the item's own span in its own trace."""

    item: Any
    span: trace.Span
    submitted: float
    item_span: trace.Span | None = None


class InferenceFailed(ServingError, RuntimeError):
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
        # One model thread for loading and adapters. Forward passes run on ``_batch_executor``: this same
        # thread, or threads of their own for an engine that computes batches side by side.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"kzero-{name}")
        self._batch_executor = self._executor
        self._gate = LoadGate(name, load_wait_s, retry_after_s)
        self._task: TaskAdapter[Any, Any] | None = None
        self._batcher: Batcher[Work, Any] | None = None
        self.report: LoadReport | None = None
        metrics.model_ready(name, False)
        metrics.watch_queue(name, lambda: self.queue_depth)
        metrics.watch_generation(name, self._generation_stats)

    @property
    def task(self) -> TaskAdapter[Any, Any]:
        if self._task is None:
            raise NotReady(f"model {self.name} is not loaded", self._retry_after_s)
        return self._task

    @property
    def _scheduler(self) -> Any:
        """The task's engine when it schedules requests itself (continuous batching), else None."""
        engine = getattr(self._task, "engine", None)
        return engine if getattr(engine, "self_scheduling", False) else None

    @property
    def queue_depth(self) -> int:
        if (scheduler := self._scheduler) is not None:
            return int(scheduler.waiting)  # requests the running batch has not taken in yet
        return self._batcher.queue_depth if self._batcher else 0

    def _generation_stats(self) -> tuple[int, int, float] | None:
        if (scheduler := self._scheduler) is None:
            return None
        stats = scheduler.stats()
        return stats.running, stats.waiting, stats.kv_usage

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The LoRA adapters loaded beside the base model (none while it is not loaded)."""
        return tuple(getattr(self._task, "adapter_names", ()))

    @property
    def takes_adapters(self) -> bool:
        """Loaded, with an engine that applies LoRA adapters (static generation)."""
        return getattr(getattr(self._task, "engine", None), "adapters", None) is not None

    def _adapters(self) -> Any:
        if not self.takes_adapters:
            raise InvalidInput("model_name", f"model {self.name} takes no adapters now: LoRA adapters need "
                                             "--task generate with --engine static, and the model loaded")
        return self.task.engine.adapters

    async def load_adapter(self, name: str, path: Path) -> None:
        """Apply a LoRA adapter on the model thread, between batches; a directory peft cannot apply is a 400."""
        await self.wait_ready()
        adapters = self._adapters()
        await asyncio.get_running_loop().run_in_executor(self._executor, adapters.load, name, path)
        log.info("adapter %s of model %s loaded from %s", name, self.name, path)

    async def unload_adapter(self, name: str) -> None:
        """Queued rows of the adapter fail with 404 when their batch runs."""
        await self.wait_ready()
        adapters = self._adapters()
        await asyncio.get_running_loop().run_in_executor(self._executor, adapters.unload, name)
        log.info("adapter %s of model %s unloaded", name, self.name)

    def load(self) -> bool:
        # KServe calls this synchronously when a request finds the model not ready; loading
        # already runs in the background (``load_in_background``), so never block here.
        return self.ready

    async def load_in_background(self) -> LoadReport:
        self._gate.reset()  # a reload after ``unload``: requests wait for it again
        loop = asyncio.get_running_loop()
        try:
            self._task, self.report = await loop.run_in_executor(self._executor, self._loader)
        except BaseException as err:
            self._gate.fail(err)
            raise
        engine = self._task.engine
        concurrency = self._batcher_config.max_concurrent_batches or getattr(engine, "parallel_batches", 1)
        if self._batch_executor is not self._executor:  # a reload replaces the old threads
            self._batch_executor.shutdown(wait=False)
            self._batch_executor = self._executor
        if concurrency > 1:  # forward passes side by side, each on its own thread
            if hasattr(engine, "use_threads"):
                engine.use_threads(concurrency)
            self._batch_executor = ThreadPoolExecutor(concurrency, thread_name_prefix=f"kzero-{self.name}-batch")
        self._batcher = Batcher(
            self._run_batch,
            self._batcher_config.model_copy(update={"max_concurrent_batches": concurrency}),
            key=lambda work: self.task.engine.batch_key(work.item),
            observer=lambda size, waits: self._metrics.observe_batch(self.name, size, waits),
        )
        for phase, seconds in self.report.phases.items():
            self._metrics.cold_start(phase, seconds)
        self.ready = True
        self._metrics.model_ready(self.name, True)
        self._gate.open()
        return self.report

    async def wait_ready(self) -> None:
        if not self.ready:
            await self._gate.wait()

    async def unload(self) -> None:
        """Free the weights (the repository API's unload): requests get 404 until a reload.

        Items still queued, and requests already past the gate, fail with 503 (the closed batcher stays
        until a reload replaces it); the model thread stays for the reload.
        """
        self.ready = False
        self._metrics.model_ready(self.name, False)
        self._gate.unload()
        if self._batcher is not None:
            await self._batcher.close()
        await self._stop_scheduler()
        self._task = None

    async def _stop_scheduler(self) -> None:
        if (scheduler := self._scheduler) is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, scheduler.stop)

    def stop(self) -> None:
        """KServe's shutdown hook: the continuous engine's decoding thread would keep the process alive."""
        super().stop()
        if (scheduler := self._scheduler) is not None:
            scheduler.stop()

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self._stop_scheduler()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._batch_executor is not self._executor:
            self._batch_executor.shutdown(wait=False, cancel_futures=True)

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
            request, traced = item_trace.split_v2(payload)
            # Validation tokenizes: off the event loop, so a huge request never stalls probes and other clients.
            items = await asyncio.to_thread(task.from_v2, request)
            parents = item_trace.contexts(traced, len(items))
            return task.to_v2(await self.infer_items(items, headers, parents=parents), payload)
        body, traced = item_trace.split_v1(payload)
        chat = any(isinstance(i, Mapping) and "messages" in i for i in _instances(body))
        items = task.from_v1(body) if task.cheap_v1(body) else await asyncio.to_thread(task.from_v1, body)
        parents = item_trace.contexts(traced, len(items))
        return task.to_v1(await self.infer_items(items, headers, "chat" if chat else None, parents=parents))

    def check_capacity(self, items: int) -> None:
        """Shed a request whose items do not all fit in the queue, before any of them is queued.

        A request larger than the whole queue could never fit: that is the caller's error, not a 503.
        """
        if items > self._batcher_config.max_queue:
            raise InvalidInput("instances", f"{items} items can never fit the queue of "
                                            f"{self._batcher_config.max_queue}; send smaller requests")
        depth = self.queue_depth
        if items > self._batcher_config.max_queue - depth:
            raise Overloaded(f"model {self.name} is overloaded: {depth} requests queued", self._retry_after_s)

    def operation(self, requested: str | None = None) -> str:
        """``gen_ai.operation.name`` of a request: what the route says, else what the task does."""
        if requested is not None:
            return requested
        return "embeddings" if isinstance(self._task, EmbedTask) else "text_completion"

    async def infer_items(
        self, items: Sequence[Any], headers: Mapping[str, str] | None, operation: str | None = None,
        *, parents: Sequence[Context] | None = None,
    ) -> list[Any]:
        """Run ``items`` of one request through the batcher; the first failure fails the request.

        The request's span is a child of the current (server) span, or else of the trace context in
        ``headers`` when the model is called with no span around it. With ``parents`` (one per item,
        from a batched caller's ``traceparents``) each item also gets an ``item`` span in its own trace.
        """
        await self.wait_ready()
        self.check_capacity(len(items))
        assert self._batcher is not None or self._scheduler is not None
        parent = None if trace.get_current_span().get_span_context().is_valid else extract(headers)
        model = {semconv.KZERO_MODEL: self.name, semconv.GEN_AI_REQUEST_MODEL: self.name,
                 semconv.GEN_AI_OPERATION: self.operation(operation)}
        adapter = getattr(items[0], "adapter", None) if items else None  # one per request
        if adapter is not None:
            model[semconv.KZERO_ADAPTER] = adapter
        attributes = {**model, semconv.KZERO_ITEMS: len(items)}
        with self._tracer.start_as_current_span(f"infer {self.name}", context=parent, attributes=attributes) as span:
            submitted = time.monotonic()
            item_spans: Sequence[trace.Span | None] = (
                item_trace.start_item_spans(self._tracer, f"item {self.name}", parents, model) if parents
                else [None] * len(items))
            work = [Work(item, span, submitted, item_span) for item, item_span in zip(items, item_spans, strict=True)]
            results = await asyncio.gather(*(self._submit(w) for w in work), return_exceptions=True)
            usage = [r for r in results if hasattr(r, "completion_tokens")]
            if usage:
                span.set_attribute(semconv.GEN_AI_INPUT_TOKENS, sum(getattr(r, "prompt_tokens", 0) for r in usage))
                span.set_attribute(semconv.GEN_AI_OUTPUT_TOKENS, sum(r.completion_tokens for r in usage))
                span.set_attribute(semconv.GEN_AI_FINISH_REASONS, [getattr(r, "finish_reason", "") for r in usage])
        for result in results:
            if isinstance(result, BaseException):
                raise self._translate(result)
        return list(results)

    async def _run(self, work: Work) -> Any:
        if self._scheduler is not None:
            return await self._generate(work)
        assert self._batcher is not None
        return await self._batcher.submit(work)

    async def _generate(self, work: Work) -> Any:
        """One item into the continuous engine's running batch; cancelling this task takes it out at the next step."""
        scheduler = self._scheduler
        params = getattr(work.item, "params", None)
        spans = [s for s in (work.span, work.item_span) if s is not None]
        if params is not None:
            for s in spans:
                s.set_attribute(semconv.GEN_AI_REQUEST_MAX_TOKENS, params.max_new_tokens)

        def first_token() -> None:
            for s in spans:
                s.add_event(semconv.GEN_AI_FIRST_TOKEN_EVENT)

        try:
            result, timings = await scheduler.generate(work.item, first_token)
        except asyncio.CancelledError:
            # The caller went away (HTTP disconnect, stream closed, gRPC cancel) or its deadline passed.
            self._metrics.cancelled(self.name, "disconnect")
            raise
        self._metrics.generation_done(self.name, result.prompt_tokens, result.completion_tokens,
                                      timings.first_token_s, timings.per_token_s, timings.total_s)
        return result

    async def _submit(self, work: Work) -> Any:
        """One item through the batcher (or the continuous engine); its item span (if any) ends with it."""
        if work.item_span is None:
            return await self._run(work)
        try:
            result = await self._run(work)
            if hasattr(result, "completion_tokens"):
                work.item_span.set_attribute(semconv.GEN_AI_INPUT_TOKENS, getattr(result, "prompt_tokens", 0))
                work.item_span.set_attribute(semconv.GEN_AI_OUTPUT_TOKENS, result.completion_tokens)
            return result
        except BaseException as err:
            item_trace.item_failed(work.item_span, err)
            raise
        finally:
            work.item_span.end()

    def _translate(self, err: BaseException) -> BaseException:
        if isinstance(err, ServingError):
            return err
        if isinstance(err, QueueFull):
            return Overloaded(f"model {self.name} is overloaded: {err}", self._retry_after_s)
        if isinstance(err, BatcherClosed | EngineStopped):
            return Unavailable(f"model {self.name} is shutting down", self._retry_after_s)
        log.error("inference failed in model %s", self.name, exc_info=err)
        return InferenceFailed(f"inference failed: {type(err).__name__}: {err}")

    async def _run_batch(self, works: Sequence[Work]) -> Sequence[Any]:
        started = time.monotonic()
        # One link per request span and one per item span.
        spans = {id(s): s for w in works for s in (w.span, w.item_span) if s is not None}
        links = [Link(c) for s in spans.values() if (c := s.get_span_context()).is_valid]
        loop = asyncio.get_running_loop()
        engine = self.task.engine
        attributes: dict[str, Any] = {semconv.KZERO_BATCH_SIZE: len(works), semconv.GEN_AI_REQUEST_MODEL: self.name,
                                      semconv.GEN_AI_OPERATION: self.operation()}
        adapters = sorted({a for w in works if (a := getattr(w.item, "adapter", None)) is not None})
        if adapters:
            attributes[semconv.KZERO_ADAPTERS] = adapters
        token = otel_context.attach(otel_context.Context())  # a batch is a root linked to its requests
        try:
            with self._tracer.start_as_current_span(f"batch {self.name}", links=links, attributes=attributes) as span:
                batch_id = f"{span.get_span_context().span_id:016x}"
                for work in works:  # a request split over batches keeps the values of its last one
                    for s in (work.span, work.item_span):
                        if s is not None:
                            s.set_attributes({
                                semconv.KZERO_QUEUE_WAIT_MS: round((started - work.submitted) * 1000, 3),
                                semconv.KZERO_BATCH_SIZE: len(works), semconv.KZERO_BATCH_ID: batch_id})
                outputs = await loop.run_in_executor(self._batch_executor, engine.run_batch, [w.item for w in works])
                tokens = sum(getattr(out, "completion_tokens", 0) for out in outputs)
                if tokens:
                    span.set_attribute(semconv.GEN_AI_OUTPUT_TOKENS, tokens)
        finally:
            otel_context.detach(token)
        self._metrics.generated(self.name, tokens, time.monotonic() - started)
        for work, out in zip(works, outputs, strict=True):
            if (adapter := getattr(work.item, "adapter", None)) is not None and not isinstance(out, BaseException):
                self._metrics.adapter_generated(self.name, adapter, out.completion_tokens)
        return outputs


def _instances(payload: Any) -> list[Any]:
    instances = payload.get("instances") if isinstance(payload, Mapping) else None
    return instances if isinstance(instances, list) else []
