"""Errors of the CloudEvents wire formats, and the error codes a dead letter or error reply carries.

One base, subclasses that also inherit the builtin. The codes are the ``errorcode`` extension of a
``dev.kzero.inference.error`` event: the Kafka worker's DLQ and the servers' CloudEvents batch
replies use the same ones.
"""

from __future__ import annotations

# errorcode values
INVALID_EVENT = "invalid-event"  # not a CloudEvent, or not valid for its type
REJECTED = "rejected"  # the predictor refused the request (the caller's fault): never retried
UNAVAILABLE = "unavailable"  # the predictor kept failing or was unreachable: retries exhausted
BAD_RESPONSE = "bad-response"  # the predictor answered something that does not fit the request
UNAUTHORIZED = "unauthorized"  # the predictor refused the worker's API key (KZERO_PREDICTOR_API_KEY)
WORKER_ERROR = "worker-error"  # a bug while processing a batch: dead-lettered rather than lost
STORE_UNAVAILABLE = "store-unavailable"  # document events: the vector store failed
EMBEDDER_UNAVAILABLE = "embedder-unavailable"  # document events: the embedder failed


class EventError(Exception):
    """Base of every error raised by the events package."""


class MalformedEvent(EventError, ValueError):
    """Input that is not a valid CloudEvent, or not valid for its event type.

    ``field`` names the attribute or part at fault ("specversion", "ce_id", "data.instances", "value",
    "[2].id" inside a batch) so the edge can report it without parsing the message.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[MalformedEvent], tuple[str, str]]:
        # The default pickles only the formatted message, which __init__ cannot take back.
        return type(self), (self.field, self.problem)
