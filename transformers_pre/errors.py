"""Errors of the RAG transformer; the server edge maps them like the predictors' (400/404/503)."""

from __future__ import annotations

from collections.abc import Sequence

from serving.errors import InvalidInput, NotFound, ServingError, Unavailable

RETRY_AFTER_S = 5


class TransformerError(ServingError):
    """Base of the transformer's own errors."""


class BadRequest(InvalidInput, TransformerError):
    """The question, filter or another request field is wrong (HTTP 400)."""


class UnknownCollection(NotFound, TransformerError):
    def __init__(self, collection: str) -> None:
        super().__init__(f"collection: {collection!r} does not exist in the vector store")
        self.collection = collection


class CollectionNotServed(NotFound, TransformerError):
    """The request names a collection outside the configured ones; whether it exists is never said."""

    def __init__(self, collection: str, served: Sequence[str]) -> None:
        super().__init__(f"collection {collection!r} is not served; served: {', '.join(served)}")
        self.collection = collection


class StoreUnavailable(Unavailable, TransformerError):
    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message, retry_after_s)


class PredictorUnavailable(Unavailable, TransformerError):
    def __init__(self, message: str, retry_after_s: int = RETRY_AFTER_S) -> None:
        super().__init__(message, retry_after_s)
