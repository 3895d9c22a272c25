"""Task adapters: the wire formats (v1, v2) of one task around its engine.

A task is an engine module plus an adapter here; the server, batcher and routes are shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from kserve.protocol.infer_type import InferRequest, InferResponse

from predictors.config import EngineConfig, LimitsConfig
from predictors.device import Placement
from predictors.engines import Engine

In = TypeVar("In")
Out = TypeVar("Out")


class TaskAdapter(Protocol[In, Out]):
    engine: Engine[In, Out]

    def from_v1(self, body: Mapping[str, Any]) -> list[In]: ...

    def cheap_v1(self, body: Mapping[str, Any]) -> bool:
        """Whether ``from_v1(body)`` is cheap enough for the event loop (it never tokenizes): one small
        request then skips the thread hop, which cost more than the check under 64 embedding clients."""
        ...

    def to_v1(self, outputs: Sequence[Out]) -> dict[str, Any]: ...

    def from_v2(self, request: InferRequest) -> list[In]: ...

    def to_v2(self, outputs: Sequence[Out], request: InferRequest) -> InferResponse: ...

    def tensor_metadata(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """v2 model metadata: (inputs, outputs)."""
        ...


TaskLoader = Callable[[Any, Placement, LimitsConfig], TaskAdapter[Any, Any]]


def task_loaders(generation: EngineConfig | None = None, *, embed_graph: bool = True) -> dict[str, TaskLoader]:
    from predictors.tasks.embed import EmbedTask
    from predictors.tasks.generate import GenerateTask

    def embed(path: Any, placement: Placement, limits: LimitsConfig) -> TaskAdapter[Any, Any]:
        return EmbedTask.load(path, placement, limits, graph=embed_graph)

    def generate(path: Any, placement: Placement, limits: LimitsConfig) -> TaskAdapter[Any, Any]:
        return GenerateTask.load(path, placement, limits, generation)

    return {"embed": embed, "generate": generate}
