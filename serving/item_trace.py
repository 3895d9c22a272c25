"""Per-item trace context in a batched call: carried as request parameters, continued as item spans.

A caller that merges many requests into one call (the Kafka worker) can put only one ``traceparent``
in the call's headers, so each instance's own W3C context travels as a request parameter, in
instance order:

- v1: ``"parameters": {"traceparents": ["00-…-01", ...], "tracestates": ["k=v", ...]}`` (JSON lists);
- v2 REST and gRPC v2: the same names as *string* parameters holding those JSON lists (KServe's v2
  parameters are scalars);
- OpenAI embeddings: the same JSON lists in kzero's own body field, ``"kzero": {"traceparents": [...]}``,
  one entry per input (``serving.openai_wire.KzeroEmbeddings``).

``traceparents`` has exactly one entry per instance, else the request is a 400 naming
``parameters.traceparents``; an entry that is null or not a valid W3C traceparent only means that
item starts a trace of its own. ``tracestates`` is optional, same rules. Servers take both out
before the task reads its parameters and never put them in a response.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, Status, StatusCode

from observability import semconv
from observability.propagation import extract
from serving.errors import InvalidInput
from serving.validation import plain_parameters

if TYPE_CHECKING:  # the worker imports this module through the client; it needs no KServe
    from kserve.protocol.infer_type import InferRequest

TRACEPARENTS = "traceparents"
TRACESTATES = "tracestates"
NAMES = (TRACEPARENTS, TRACESTATES)


def encode(carriers: Sequence[Mapping[str, str]]) -> dict[str, list[str | None]]:
    """The parameters carrying one ``inject()`` carrier per instance; empty when none has a context."""
    parents = [carrier.get("traceparent") for carrier in carriers]
    if not any(parents):
        return {}
    encoded: dict[str, list[str | None]] = {TRACEPARENTS: parents}
    states = [carrier.get("tracestate") for carrier in carriers]
    if any(states):
        encoded[TRACESTATES] = states
    return encoded


def as_scalars(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """``parameters`` for v2 REST and gRPC, whose parameters are scalars: the trace lists as JSON text."""
    return {name: json.dumps(value) if name in NAMES and isinstance(value, list) else value
            for name, value in parameters.items()}


def split(parameters: Any) -> tuple[Any, dict[str, Any]]:
    """(``parameters`` without the trace ones, the trace ones); a non-mapping is left for the task to
    reject. Returns new objects and leaves ``parameters`` as it is."""
    if not isinstance(parameters, Mapping) or not any(name in parameters for name in NAMES):
        return parameters, {}
    plain = plain_parameters(parameters)
    return ({k: v for k, v in plain.items() if k not in NAMES}, {k: v for k, v in plain.items() if k in NAMES})


def split_v1(body: Any) -> tuple[Any, dict[str, Any]]:
    """A v1 body without the trace parameters, and those parameters."""
    if not isinstance(body, Mapping):
        return body, {}
    rest, traced = split(body.get("parameters"))
    return ({**body, "parameters": rest} if traced else body), traced


def split_v2(request: InferRequest) -> tuple[InferRequest, dict[str, Any]]:
    """A v2 request (REST or gRPC) without the trace parameters (a shallow copy), and those parameters."""
    rest, traced = split(request.parameters)
    if not traced:
        return request, {}
    stripped = copy.copy(request)
    stripped.parameters = rest
    return stripped, traced


def _entries(value: Any, name: str, count: int, where: str) -> list[str | None]:
    field = f"{where}.{name}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as err:
            raise InvalidInput(field, "expected a list, or a JSON list in a string") from err
    if not isinstance(value, list):
        raise InvalidInput(field, f"expected a list, got {type(value).__name__}")
    if len(value) != count:
        raise InvalidInput(field, f"{len(value)} entries for {count} instances; give one per instance")
    return [entry if isinstance(entry, str) else None for entry in value]


def contexts(traced: Mapping[str, Any], count: int, where: str = "parameters") -> list[Context] | None:
    """One parent context per item (empty where its entry is null or malformed); ``None`` when the
    request carried no ``traceparents``. Raises ``InvalidInput`` naming ``{where}.traceparents`` (or
    ``tracestates``) for a list of the wrong length or shape."""
    if TRACEPARENTS not in traced:
        return None
    parents = _entries(traced[TRACEPARENTS], TRACEPARENTS, count, where)
    states = (_entries(traced[TRACESTATES], TRACESTATES, count, where) if TRACESTATES in traced
              else [None] * count)
    return [
        extract({"traceparent": parent, **({"tracestate": state} if state else {})}) if parent else Context()
        for parent, state in zip(parents, states, strict=True)
    ]


def start_item_spans(
    tracer: trace.Tracer, name: str, parents: Sequence[Context], attributes: Mapping[str, Any]
) -> list[Span]:
    """One span per item, a child of the item's own context (a new trace where it has none), linked
    to the current span: the request that carried the item."""
    request = trace.get_current_span().get_span_context()
    links = [Link(request)] if request.is_valid else []
    return [tracer.start_span(name, context=parent, links=links, attributes=attributes) for parent in parents]


def item_failed(span: Span, error: BaseException) -> None:
    span.set_attribute(semconv.ERROR_TYPE, type(error).__qualname__)
    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
