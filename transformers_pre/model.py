"""The KServe transformer model: questions in, answers with sources out, through the chain.

A thin adapter: parsing the v1/v2 wire formats and running one chain per question, concurrently.
No per-request state lives on the model; each question gets its own ``RagContext``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferRequest, InferResponse, to_http_parameters
from opentelemetry import trace
from opentelemetry.context import Context

from observability import semconv
from serving import item_trace
from serving.readiness import LoadGate
from serving.v2_wire import tensor, v2_response
from serving.validation import parse_model, v1_instances, v2_texts
from transformers_pre.chain import Chain, build_chain
from transformers_pre.config import TransformerConfig
from transformers_pre.context import RagContext, RagInstance
from transformers_pre.filters import SearchScope, from_text
from transformers_pre.steps import ChainDeps

log = logging.getLogger(__name__)

DepsFactory = Callable[[], Awaitable[ChainDeps]]


class RagModel(Model):
    def __init__(self, config: TransformerConfig, deps: DepsFactory, tracer: trace.Tracer) -> None:
        super().__init__(config.model_name)
        self._config = config
        self._deps_factory = deps
        self._tracer = tracer
        self._gate = LoadGate(config.model_name, config.load_wait_s, retry_after_s=5)
        self.deps: ChainDeps | None = None
        self.chain: Chain | None = None

    def load(self) -> bool:
        return self.ready  # loading runs in the background; never block KServe's request path

    async def load_in_background(self) -> None:
        try:
            self.deps = await self._deps_factory()
            self.chain = build_chain(self._config.chain, self.deps, self._tracer)
        except BaseException as err:
            self._gate.fail(err)
            raise
        self.ready = True
        self._gate.open()
        log.info("transformer %s ready: chain %s", self.name, " -> ".join(s.name for s in self.chain.steps))

    async def wait_ready(self) -> None:
        if not self.ready:
            await self._gate.wait()

    def context(
        self, raw: Any, field: str, headers: Mapping[str, str] | None, scope: SearchScope | None = None
    ) -> RagContext:
        if isinstance(raw, str):
            raw = {"question": raw}
        return RagContext(parse_model(RagInstance, raw, field), field, dict(headers or {}), scope)

    async def v2_scope(self, request: InferRequest) -> SearchScope:
        """``filter`` and ``collection`` of a v2 or gRPC request: its parameters, shared by its questions."""
        await self.wait_ready()
        assert self.deps is not None
        parameters = to_http_parameters(request.parameters or {})  # gRPC's arrive as protobuf messages
        filter_ = parameters.get("filter")
        if isinstance(filter_, str):  # a gRPC parameter can only be text: JSON for a structured filter
            filter_ = from_text(filter_, "parameters.filter")
        return self.deps.scope.resolve(filter_, parameters.get("collection"), "parameters")

    async def answer(self, contexts: list[RagContext], parents: Sequence[Context] | None = None) -> list[RagContext]:
        """Run the chain for each question; with ``parents`` (a batched caller's ``traceparents``) each
        chain runs in an ``item`` span in its question's own trace, and its predictor calls continue it."""
        await self.wait_ready()
        assert self.chain is not None
        if parents is None:
            return list(await asyncio.gather(*(self.chain.run(ctx) for ctx in contexts)))
        attributes = {semconv.KZERO_MODEL: self.name}
        spans = item_trace.start_item_spans(self._tracer, f"item {self.name}", parents, attributes)
        return list(await asyncio.gather(*(self._run_in(s, ctx) for s, ctx in zip(spans, contexts, strict=True))))

    async def _run_in(self, span: trace.Span, ctx: RagContext) -> RagContext:
        assert self.chain is not None
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                return await self.chain.run(ctx)
            except BaseException as err:
                item_trace.item_failed(span, err)
                raise

    async def predict(
        self, payload: Mapping[str, Any] | InferRequest, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            names = {i.name for i in payload.inputs}
            name = "question" if "question" in names else "text"
            texts = v2_texts(payload, name, self._config.max_top_k * 10)
            scope = await self.v2_scope(payload)
            parents = item_trace.contexts(item_trace.split(payload.parameters)[1], len(texts))
            done = await self.answer(
                [self.context(t, f"inputs.{name}[{i}]", headers, scope) for i, t in enumerate(texts)], parents)
            return _v2_response(done, payload)
        instances = v1_instances(payload, max_instances=64)
        contexts = [self.context(raw, f"instances[{i}]", headers) for i, raw in enumerate(instances)]
        parents = item_trace.contexts(item_trace.split_v1(payload)[1], len(instances))
        return {"predictions": [ctx.prediction() for ctx in await self.answer(contexts, parents)]}


def _v2_response(done: list[RagContext], request: InferRequest) -> InferResponse:
    answers = tensor("answer", "BYTES", np.array([c.answer for c in done], dtype=object))
    sources = tensor("sources", "BYTES", np.array([json.dumps(c.prediction()["sources"]) for c in done], dtype=object))
    modes = tensor("mode", "BYTES", np.array([c.mode for c in done], dtype=object))  # generative | extractive
    return v2_response(request, [answers, sources, modes])
