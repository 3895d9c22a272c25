"""Handlers of consumed events: validate each, process a micro-batch, one outcome per event.

``Processor`` runs inference requests through a predictor (retries, isolation of bad requests);
other handlers (e.g. RAG document upserts) plug into the same worker through ``EventHandler``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Status, StatusCode

from eventing import openai_calls
from eventing.calls import Call, split, traced_body
from eventing.calls import plan as calls_plan
from eventing.config import WorkerConfig
from events.errors import BAD_RESPONSE, REJECTED, UNAUTHORIZED, UNAVAILABLE
from events.event import OPENAI_URL, Event, validate_openai_request, validate_request
from observability import propagation
from observability import semconv as sc
from serving.client import CallFailed, PermanentCallError, PredictorClient, TransientCallError, Unauthorized
from serving.defaults import default_of
from serving.retry import RetryPolicy, call_with_retries


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


class OpenAIRequest(dict[str, Any]):
    """A validated request event for an OpenAI route: ``{"url": ..., "body": ...}``. A type of its own so
    that no v1 body, whatever its keys, is ever taken for one."""


class EventHandler(Protocol):
    emits_results: bool
    """Whether a success produces a result event (inference) or nothing (e.g. a document upsert)."""

    def validate(self, event: Event) -> dict[str, Any]:
        """The event's data, checked; raises ``MalformedEvent`` for events to dead-letter at once."""
        ...

    async def process(
        self, requests: Sequence[dict[str, Any]], headers: Sequence[Mapping[str, str]] | None = None
    ) -> list[Outcome]:
        """One outcome per request; ``headers[i]`` carries request i's trace context."""
        ...


class Processor:
    """Turns request bodies into one outcome each; a permanent failure is isolated to its request.

    Each request of a predictor call gets a ``predict {model}`` span in its own trace (retries as
    span events, the attempts as ``kzero.attempt``). The first request's span is current during the
    call, so the client's spans (one per attempt) and the server's request span join that trace; it
    links to the other requests, whose spans link back to it. Every instance's trace context goes in
    ``parameters.traceparents``, so the server continues each request's own trace per item.

    v1 requests with equal parameters share calls (``eventing.calls``); so do OpenAI embeddings
    requests equal apart from ``input`` (``eventing.openai_calls``: an ``openai {url}`` span each, the
    inputs' contexts in ``kzero.traceparents``). Other OpenAI requests go one per call.
    """

    emits_results = True

    def __init__(
        self, client: PredictorClient, model: str, policy: RetryPolicy, max_instances: int,
        *, tracer: trace.Tracer | None = None, on_retry: Callable[[int, TransientCallError], None] | None = None,
        max_openai_calls: int | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._policy = policy
        self._max_instances = max_instances
        self._tracer = tracer or trace.get_tracer(__name__)
        self._on_retry = on_retry
        # Hundreds of calls pending on one pooled HTTP client cost the worker more CPU than they save.
        self._openai_slots = asyncio.Semaphore(max_openai_calls or default_of(WorkerConfig, "max_openai_calls"))

    def validate(self, event: Event) -> dict[str, Any]:
        if event.get(OPENAI_URL) is not None:
            url, body = validate_openai_request(event)
            return OpenAIRequest(url=url, body=body)
        return validate_request(event)

    async def process(
        self, requests: Sequence[dict[str, Any]], headers: Sequence[Mapping[str, str]] | None = None
    ) -> list[Outcome]:
        outcomes: list[Outcome | None] = [None] * len(requests)
        calls = [*self._plan(requests, lambda r: not isinstance(r, OpenAIRequest), calls_plan),
                 *self._plan(requests, lambda r: isinstance(r, OpenAIRequest), openai_calls.plan)]
        await asyncio.gather(*(self._run(call, requests, outcomes, headers) for call in calls))
        assert all(o is not None for o in outcomes)
        return outcomes  # type: ignore[return-value]

    def _plan(
        self, requests: Sequence[dict[str, Any]], kind: Callable[[dict[str, Any]], bool],
        planner: Callable[[Sequence[dict[str, Any]], int], list[Call]],
    ) -> list[Call]:
        """Calls for the requests of one kind; their members index ``requests``."""
        chosen = [i for i, r in enumerate(requests) if kind(r)]
        return [Call(c.body, tuple(chosen[m] for m in c.members), c.counts)
                for c in planner([requests[i] for i in chosen], self._max_instances)]

    async def _run(
        self, call: Call, requests: Sequence[dict[str, Any]], outcomes: list[Outcome | None],
        headers: Sequence[Mapping[str, str]] | None,
    ) -> None:
        first = requests[call.members[0]]
        url = first["url"] if isinstance(first, OpenAIRequest) else None
        try:
            response, attempts = await self._call(call, headers, url)
        except Unauthorized as err:  # no member can pass: none is tried alone
            for member in call.members:
                outcomes[member] = Failure(UNAUTHORIZED, str(err), err.attempts)
            return
        except PermanentCallError as err:
            if len(call.members) == 1:
                outcomes[call.members[0]] = Failure(REJECTED, str(err), err.attempts)
                return
            # One member is bad: run each alone so only it fails.
            alone = [Call(_body(requests[m]), (m,), (count,)) for m, count in zip(call.members, call.counts,
                                                                                   strict=True)]
            await asyncio.gather(*(self._run(c, requests, outcomes, headers) for c in alone))
            return
        except TransientCallError as err:
            for member in call.members:
                outcomes[member] = Failure(UNAVAILABLE, str(err), err.attempts)
            return
        try:
            parts = (split if url is None else openai_calls.split)(call, response)
        except ValueError as err:
            for member in call.members:
                outcomes[member] = Failure(BAD_RESPONSE, str(err), attempts)
            return
        for member, part in zip(call.members, parts, strict=True):
            outcomes[member] = Success(part, attempts)

    async def _call(
        self, call: Call, headers: Sequence[Mapping[str, str]] | None, url: str | None,
    ) -> tuple[dict[str, Any], int]:
        """One call (v1, or the OpenAI route ``url``) with retries, in a span per member."""
        # Without per-request headers: one span in the current trace, and no per-item context.
        parents = ([propagation.extract(headers[m]) for m in call.members] if headers
                   else [otel_context.get_current()])
        attributes = {sc.KZERO_MODEL: self._model, sc.KZERO_BATCH_SIZE: len(call.members),
                      sc.KZERO_ITEMS: sum(call.counts)}
        name = f"predict {self._model}" if url is None else f"openai {url}"
        others = [Link(context) for p in parents[1:]
                  if (context := trace.get_current_span(p).get_span_context()).is_valid]
        lead = self._tracer.start_span(name, context=parents[0], links=others, attributes=attributes)
        back = [Link(lead.get_span_context())] if lead.get_span_context().is_valid else []
        spans = [lead, *(self._tracer.start_span(name, context=p, links=back, attributes=attributes)
                         for p in parents[1:])]
        carriers = [propagation.inject(trace.set_span_in_context(s)) for s in spans]
        try:
            send = self._sender(call, carriers if headers else None, url)
            async with self._openai_slots if url is not None else contextlib.nullcontext():
                with trace.use_span(lead, record_exception=False, set_status_on_exception=False):
                    # inject() runs per attempt, inside the lead span: the headers carry its context.
                    response, attempts = await call_with_retries(
                        lambda: send(propagation.inject()), self._policy,
                        on_retry=lambda attempt, error: self._retried(spans, attempt, error),
                    )
        except CallFailed as err:
            kind = str(err.status or type(err).__name__)
            for span in spans:
                span.set_attributes({sc.KZERO_ATTEMPT: err.attempts, sc.ERROR_TYPE: kind})
                span.set_status(Status(StatusCode.ERROR, kind))
            raise
        else:
            for span in spans:
                span.set_attribute(sc.KZERO_ATTEMPT, attempts)
            return response, attempts
        finally:
            for span in spans:
                span.end()

    def _sender(
        self, call: Call, carriers: Sequence[Mapping[str, str]] | None, url: str | None,
    ) -> Callable[[Mapping[str, str]], Awaitable[dict[str, Any]]]:
        """One attempt of ``call``, given the attempt's headers; each member's context per item."""
        if url is None:
            body = traced_body(call, carriers) if carriers else call.body
            return lambda headers: self._client.predict(self._model, body, headers)
        openai = getattr(self._client, "openai", None)
        if openai is None:  # the in-process client speaks v1 only
            raise PermanentCallError(f"{url}: this worker's protocol carries v1 requests only", status=400)
        body = openai_calls.traced_body(call, carriers) if carriers else call.body
        return lambda headers: openai(url, body, headers)

    def _retried(self, spans: Sequence[trace.Span], attempt: int, error: TransientCallError) -> None:
        attributes = {sc.KZERO_ATTEMPT: attempt, sc.ERROR_TYPE: str(error.status or type(error).__name__)}
        for span in spans:
            span.add_event("retry", attributes)
        if self._on_retry is not None:
            self._on_retry(attempt, error)


def _body(request: dict[str, Any]) -> dict[str, Any]:
    """What a request sends when it is called alone: a v1 body, or an OpenAI request's own body."""
    return request["body"] if isinstance(request, OpenAIRequest) else request
