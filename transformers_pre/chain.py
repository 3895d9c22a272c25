"""A chain: ordered async steps over one request's context, each timed and traced."""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry import trace

from observability import semconv
from transformers_pre.config import ChainConfig
from transformers_pre.context import RagContext
from transformers_pre.steps import ChainDeps, Step, build_step


class Chain:
    def __init__(self, steps: Sequence[Step], tracer: trace.Tracer | None = None) -> None:
        self.steps = tuple(steps)
        self._tracer = tracer or trace.get_tracer(__name__)

    async def run(self, ctx: RagContext) -> RagContext:
        for step in self.steps:
            started = time.perf_counter()
            with self._tracer.start_as_current_span(f"rag.{step.name}", attributes={semconv.KZERO_STEP: step.name}):
                await step(ctx)
            ctx.timings_ms[step.name] = (time.perf_counter() - started) * 1000
        return ctx

    def split(self, name: str) -> tuple[Chain, Chain]:
        """The steps before ``name`` and the steps after it (for streaming around generation)."""
        names = [s.name for s in self.steps]
        if name not in names:
            raise ValueError(f"the chain has no step {name!r}")
        at = names.index(name)
        return Chain(self.steps[:at], self._tracer), Chain(self.steps[at + 1 :], self._tracer)


def build_chain(config: ChainConfig, deps: ChainDeps, tracer: trace.Tracer | None = None) -> Chain:
    return Chain([build_step(spec.name, deps, spec.options) for spec in config.steps], tracer)
