"""Query and chunk embeddings: a predictor over v1/v2/gRPC, or the packaged model in this process."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
from opentelemetry import trace
from pydantic import SecretStr

from serving.client import CallFailed, PredictorClient, TransientCallError, make_client
from serving.retry import RetryPolicy, call_with_retries
from transformers_pre.errors import PredictorUnavailable


class Embedder(Protocol):
    dimension: int
    """0 until ``start`` learned it."""
    model: str

    async def start(self) -> Embedder:
        """Learn ``dimension`` (and fail early if the embedder is unusable)."""
        ...

    async def embed(self, texts: Sequence[str], headers: Mapping[str, str] | None = None) -> np.ndarray:
        """Normalized float32 vectors, one row per text."""
        ...

    async def close(self) -> None: ...


class ClientEmbedder:
    """Embeds through any ``PredictorClient``: remote (v1, v2, gRPC) or ``InProcessClient``."""

    def __init__(
        self, client: PredictorClient, model: str, retry: RetryPolicy | None = None,
        on_retry: Callable[[int, TransientCallError], None] | None = None,
    ) -> None:
        self._client = client
        self.model = model
        self._retry = retry or RetryPolicy(max_attempts=3)
        self._on_retry = on_retry
        self.dimension = 0

    async def start(self) -> ClientEmbedder:
        """Learn the dimension (and fail early if the embedder is unusable)."""
        self.dimension = int((await self.embed(["dimension probe"])).shape[1])
        return self

    async def embed(self, texts: Sequence[str], headers: Mapping[str, str] | None = None) -> np.ndarray:
        body = {"instances": list(texts)}
        try:
            response, _ = await call_with_retries(
                lambda: self._client.predict(self.model, body, headers), self._retry, on_retry=self._on_retry)
        except CallFailed as err:
            raise PredictorUnavailable(f"embedder failed: {err}") from err
        vectors = np.asarray(response["predictions"], dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)

    async def close(self) -> None:
        await self._client.close()


def embedder_client(
    spec: str, protocol: str = "v1", timeout_s: float = 60.0, tracer: trace.Tracer | None = None,
    api_key: SecretStr | None = None,
) -> tuple[PredictorClient, str]:
    """``spec`` is a packaged model id (run in-process) or ``URL[#model]`` of an embedding predictor
    (called with ``api_key``, if any)."""
    if "://" not in spec and ":" not in spec:
        from predictors.inprocess import InProcessClient

        return InProcessClient.packaged(spec, "embed"), spec
    target, _, model = spec.partition("#")
    return make_client(protocol, target, timeout_s, tracer, api_key), model or "minilm"  # type: ignore[arg-type]
