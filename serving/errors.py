"""Errors of every kzero server and client: one base, subclasses that also inherit the builtin.

Raised anywhere below the edge; ``serving.status`` maps them to HTTP and gRPC codes, and only the
edges (the server's handlers and interceptor, the OpenAI routes) call it.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error raised by kzero's servers (predictor and transformer) and their clients."""


class InvalidInput(ServingError, ValueError):
    """The request is malformed; ``field`` names the offending part (e.g. ``instances[2].prompt``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(ServingError, LookupError):
    """The request names something this server does not have (HTTP 404, gRPC NOT_FOUND)."""


class ModelNotFound(NotFound):
    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(f"model {name!r} is not served here; available: {', '.join(available) or 'none'}")
        self.name = name


class ModelUnloaded(NotFound):
    """The model was unloaded through the repository API and not loaded again."""

    def __init__(self, name: str) -> None:
        super().__init__(f"model {name!r} is unloaded; POST /v2/repository/models/{name}/load serves it again")
        self.name = name


class Unavailable(ServingError):
    """The request cannot be served now but may succeed later (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotReady(Unavailable):
    """The model is still loading and did not become ready within the request's wait deadline."""


class Overloaded(Unavailable):
    """The batch queue is full; the caller should back off."""
