"""Micro-batching across events: requests with equal parameters become one predictor call."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Call:
    """One predictor call: the merged v1 body and which slice of the predictions is whose."""

    body: dict[str, Any]
    members: tuple[int, ...]  # indexes into the requests given to ``plan``
    counts: tuple[int, ...]  # instances contributed by each member


def _parameters_key(data: dict[str, Any]) -> str:
    return json.dumps(data.get("parameters") or {}, sort_keys=True)


def plan(requests: Sequence[dict[str, Any]], max_instances: int) -> list[Call]:
    """Group v1 request bodies by parameters, in order, into calls of at most ``max_instances``.

    A single request larger than the limit still gets a call of its own: it is never split.
    """
    groups: dict[str, list[int]] = {}
    for index, data in enumerate(requests):
        groups.setdefault(_parameters_key(data), []).append(index)
    calls = []
    for members in groups.values():
        current: list[int] = []
        size = 0
        for index in members:
            n = len(requests[index]["instances"])
            if current and size + n > max_instances:
                calls.append(_call(requests, current))
                current, size = [], 0
            current.append(index)
            size += n
        if current:
            calls.append(_call(requests, current))
    return calls


def _call(requests: Sequence[dict[str, Any]], members: list[int]) -> Call:
    instances = [instance for i in members for instance in requests[i]["instances"]]
    body: dict[str, Any] = {"instances": instances}
    parameters = requests[members[0]].get("parameters")
    if parameters:
        body["parameters"] = parameters
    return Call(body, tuple(members), tuple(len(requests[i]["instances"]) for i in members))


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
