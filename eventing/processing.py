"""Handlers of consumed events: validate each, process a micro-batch, one outcome per event.

``Processor`` runs inference requests through a predictor (retries, isolation of bad requests);
other handlers (e.g. RAG document upserts) plug into the same worker through ``EventHandler``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from eventing.calls import Call, plan, split
from eventing.events import Event, validate_request
from predictors.client import PermanentCallError, PredictorClient, TransientCallError
from predictors.retry import RetryPolicy, call_with_retries


@dataclass(frozen=True)
class Success:
    response: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class Failure:
    code: str
    message: str
    attempts: int


Outcome = Success | Failure

# DLQ error codes
INVALID_EVENT = "invalid-event"
INVALID_REQUEST = "invalid-request"
REJECTED = "rejected"
UNAVAILABLE = "unavailable"
BAD_RESPONSE = "bad-response"


class EventHandler(Protocol):
    emits_results: bool
    """Whether a success produces a result event (inference) or nothing (e.g. a document upsert)."""

    def validate(self, event: Event) -> dict[str, Any]:
        """The event's data, checked; raises ``MalformedEvent`` for events to dead-letter at once."""
        ...

    async def process(
        self, requests: Sequence[dict[str, Any]], headers: Sequence[Mapping[str, str]] | None = None
    ) -> list[Outcome]: ...


class Processor:
    """Turns request bodies into one outcome each; a permanent failure is isolated to its request."""

    emits_results = True

    def __init__(
        self, client: PredictorClient, model: str, policy: RetryPolicy, max_instances: int,
    ) -> None:
        self._client = client
        self._model = model
        self._policy = policy
        self._max_instances = max_instances

    def validate(self, event: Event) -> dict[str, Any]:
        return validate_request(event)

    async def process(
        self, requests: Sequence[dict[str, Any]], headers: Sequence[Mapping[str, str]] | None = None
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        calls = plan(requests, self._max_instances)
        await asyncio.gather(*(self._run(call, requests, outcomes, headers) for call in calls))
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    async def _run(
        self, call: Call, requests: Sequence[dict[str, Any]], outcomes: list[Outcome | None],
        headers: Sequence[Mapping[str, str]] | None,
    ) -> None:
        first = headers[call.members[0]] if headers else None
        try:
            response, attempts = await call_with_retries(
                lambda: self._client.predict(self._model, call.body, first), self._policy
            )
        except PermanentCallError as err:
            if len(call.members) == 1:
                outcomes[call.members[0]] = Failure(REJECTED, str(err), err.attempts)
                return
            # One member is bad: run each alone so only it fails.
            alone = [Call(requests[m], (m,), (len(requests[m]["instances"]),)) for m in call.members]
            await asyncio.gather(*(self._run(c, requests, outcomes, headers) for c in alone))
            return
        except TransientCallError as err:
            for member in call.members:
                outcomes[member] = Failure(UNAVAILABLE, str(err), err.attempts)
            return
        try:
            parts = split(call, response)
        except ValueError as err:
            for member in call.members:
                outcomes[member] = Failure(BAD_RESPONSE, str(err), attempts)
            return
        for member, part in zip(call.members, parts, strict=True):
            outcomes[member] = Success(part, attempts)
