"""Micro-batching of OpenAI embeddings requests: bodies equal apart from ``input`` become one call.

A merged ``/v1/embeddings`` call asks the predictor for each input's token count (kzero's own
``kzero`` body field, ``serving.openai_wire.KzeroEmbeddings``) and carries each input's trace
context there; ``split`` cuts the reply back into the body each request would have had alone (its
own ``data`` indexed from 0, its own ``usage``, no ``kzero`` key). Other routes, token-id inputs
and bodies that set ``kzero`` themselves go alone, unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from eventing.calls import Call, group, per_item
from serving import item_trace
from serving.openai_wire import KZERO_FIELD

EMBEDDINGS = "/v1/embeddings"


def _texts(body: Mapping[str, Any]) -> list[str] | None:
    """The inputs of a body whose inputs can be concatenated with others' (strings), else ``None``."""
    value = body.get("input")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(text, str) for text in value):
        return value
    return None


def _key(url: str, body: Mapping[str, Any], texts: list[str] | None) -> str | None:
    if url != EMBEDDINGS or KZERO_FIELD in body or texts is None:
        return None
    return json.dumps({name: value for name, value in body.items() if name != "input"}, sort_keys=True)


def plan(requests: Sequence[Mapping[str, Any]], max_inputs: int) -> list[Call]:
    """Calls for OpenAI requests (``{"url", "body"}``), in order: embeddings bodies equal apart from
    ``input`` share calls of at most ``max_inputs`` inputs; a larger one still goes alone, never split.

    A call of one member has that member's body as it is; ``counts`` are inputs (1 where not countable).
    """
    texts = [_texts(r["body"]) for r in requests]
    keys = [_key(r["url"], r["body"], t) for r, t in zip(requests, texts, strict=True)]
    sizes = [1 if t is None else len(t) for t in texts]
    calls = []
    for members in group(keys, sizes, max_inputs):
        first = requests[members[0]]["body"]
        body = dict(first) if len(members) == 1 else {
            **first, "input": [text for m in members for text in texts[m] or ()],
            KZERO_FIELD: {"input_tokens": True}}
        calls.append(Call(body, tuple(members), tuple(sizes[m] for m in members)))
    return calls


def traced_body(call: Call, carriers: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """A merged ``call.body`` with each input's trace context (member i's ``carriers[i]``); the body of a
    call of one member as it is (its context goes in the call's headers, and it may be any route's)."""
    traced = item_trace.encode(per_item(call, carriers)) if len(call.members) > 1 else {}
    if not traced:
        return call.body
    return {**call.body, KZERO_FIELD: {**call.body[KZERO_FIELD], **traced}}


def split(call: Call, response: Any) -> list[dict[str, Any]]:
    """Each member's own response body; a reply that does not fit the call is the predictor's fault."""
    if not isinstance(response, dict):
        raise ValueError(f"predictor answered {type(response).__name__}, not an object")
    if len(call.members) == 1:
        return [response]
    total = sum(call.counts)
    data = response.get("data")
    if not isinstance(data, list) or len(data) != total:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise ValueError(f"predictor returned {got} embeddings for {total} inputs")
    indexes = [item.get("index") if isinstance(item, dict) else None for item in data]
    if sorted(i for i in indexes if type(i) is int) != list(range(total)):
        raise ValueError(f"predictor's embeddings are not indexed 0 to {total - 1}")
    ordered = sorted(data, key=lambda item: item["index"])
    extension = response.get(KZERO_FIELD)
    tokens = extension.get("input_tokens") if isinstance(extension, dict) else None
    if not isinstance(tokens, list) or len(tokens) != total or not all(isinstance(t, int) for t in tokens):
        raise ValueError(f"predictor did not return {KZERO_FIELD}.input_tokens for {total} inputs")
    rest = {name: value for name, value in response.items() if name != KZERO_FIELD}
    out, start = [], 0
    for count in call.counts:
        used = sum(tokens[start : start + count])
        own = [{**item, "index": item["index"] - start} for item in ordered[start : start + count]]
        out.append({**rest, "data": own, "usage": {"prompt_tokens": used, "total_tokens": used}})
        start += count
    return out
