"""Chain steps: small async callables over a per-request ``RagContext``.

A step is registered here by name with a factory ``(deps, **options) -> Step``; adding one (say, a
reranker) is one module plus one line in ``registry``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import trace

from serving.client import PredictorClient
from serving.metrics import ServerMetrics
from serving.openai_client import OpenAIClient
from transformers_pre.config import TransformerConfig
from transformers_pre.context import RagContext
from transformers_pre.embedder import Embedder
from transformers_pre.filters import ScopeRules
from transformers_pre.store import VectorStore


class Step(Protocol):
    name: str

    async def __call__(self, ctx: RagContext) -> None: ...


@dataclass(frozen=True)
class ChainDeps:
    config: TransformerConfig
    embedder: Embedder
    store: VectorStore
    scope: ScopeRules
    predictor: PredictorClient
    tracer: trace.Tracer
    chat: OpenAIClient  # the OpenAI chat relay's client (transformers_pre.openai_api), not a step's
    metrics: ServerMetrics


StepFactory = Callable[..., Step]


def registry() -> dict[str, StepFactory]:
    from transformers_pre.steps.cite import Cite
    from transformers_pre.steps.embed_query import EmbedQuery
    from transformers_pre.steps.generate import Generate
    from transformers_pre.steps.ground import Ground
    from transformers_pre.steps.no_repeat import NoRepeat
    from transformers_pre.steps.prompt import BuildPrompt
    from transformers_pre.steps.retrieve import Retrieve
    from transformers_pre.steps.trim import Trim
    from transformers_pre.steps.usage import Usage
    from transformers_pre.steps.validate import Validate

    return {
        "validate": Validate.create,
        "embed_query": EmbedQuery.create,
        "retrieve": Retrieve.create,
        "trim": Trim.create,
        "prompt": BuildPrompt.create,
        "generate": Generate.create,
        "no_repeat": NoRepeat.create,
        "cite": Cite.create,
        "ground": Ground.create,
        "usage": Usage.create,
    }


def build_step(name: str, deps: ChainDeps, options: dict[str, Any]) -> Step:
    factories = registry()
    if name not in factories:
        raise ValueError(f"unknown chain step {name!r}; known: {', '.join(factories)}")
    try:
        return factories[name](deps, **options)
    except TypeError as err:
        raise ValueError(f"chain step {name!r}: bad options {options}: {err}") from err
