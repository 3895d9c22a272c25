"""Micro-batching across events: requests with equal parameters become one predictor call.

Each instance of a merged call carries its own request's trace context in ``parameters.traceparents``
(``serving.item_trace``); the worker owns those parameters, so any in an event's data are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving import item_trace


@dataclass(frozen=True)
class Call:
    """One predictor call: the merged v1 body and which slice of the predictions is whose."""

    body: dict[str, Any]
    members: tuple[int, ...]  # indexes into the requests given to ``plan``
    counts: tuple[int, ...]  # instances contributed by each member


def _parameters(data: dict[str, Any]) -> Any:
    return item_trace.split(data.get("parameters"))[0]


def _parameters_key(data: dict[str, Any]) -> str:
    return json.dumps(_parameters(data) or {}, sort_keys=True)


def plan(requests: Sequence[dict[str, Any]], max_instances: int) -> list[Call]:
    """Group v1 request bodies by parameters, in order, into calls of at most ``max_instances``.

    A single request larger than the limit still gets a call of its own: it is never split.
    """
    keys = [_parameters_key(data) for data in requests]
    sizes = [len(data["instances"]) for data in requests]
    return [_call(requests, members) for members in group(keys, sizes, max_instances)]


def group(keys: Sequence[str | None], sizes: Sequence[int], limit: int) -> list[list[int]]:
    """Indexes whose keys are equal, in order, in runs whose sizes add up to at most ``limit``; one
    larger than ``limit`` runs alone, and a ``None`` key shares with nothing."""
    groups: dict[str, list[int]] = {}
    runs: list[list[int]] = []
    for index, key in enumerate(keys):
        if key is None:
            runs.append([index])
        else:
            groups.setdefault(key, []).append(index)
    for members in groups.values():
        current: list[int] = []
        size = 0
        for index in members:
            if current and size + sizes[index] > limit:
                runs.append(current)
                current, size = [], 0
            current.append(index)
            size += sizes[index]
        if current:
            runs.append(current)
    return runs


def _call(requests: Sequence[dict[str, Any]], members: list[int]) -> Call:
    instances = [instance for i in members for instance in requests[i]["instances"]]
    body: dict[str, Any] = {"instances": instances}
    parameters = _parameters(requests[members[0]])
    if parameters:
        body["parameters"] = parameters
    return Call(body, tuple(members), tuple(len(requests[i]["instances"]) for i in members))


def traced_body(call: Call, carriers: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """``call.body`` with each instance's trace context: member i's ``carriers[i]`` for each of its
    instances (unchanged when no member has a context)."""
    traced = item_trace.encode(per_item(call, carriers))
    if not traced:
        return call.body
    return {**call.body, "parameters": {**call.body.get("parameters", {}), **traced}}


def per_item(call: Call, carriers: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """Member i's ``carriers[i]`` once for each item (instance or input) it put in the call."""
    return [carrier for carrier, count in zip(carriers, call.counts, strict=True) for _ in range(count)]


def split(call: Call, response: dict[str, Any]) -> list[dict[str, Any]]:
    """Each member's own v1 response body; a count mismatch is the predictor's fault."""
    predictions = response.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != sum(call.counts):
        got = len(predictions) if isinstance(predictions, list) else type(predictions).__name__
        raise ValueError(f"predictor returned {got} predictions for {sum(call.counts)} instances")
    out, start = [], 0
    for count in call.counts:
        out.append({"predictions": predictions[start : start + count]})
        start += count
    return out
