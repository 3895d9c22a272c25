"""An uploaded batch input file, checked line by line before anything is sent.

Each line is ``{"custom_id", "method": "POST", "url", "body"}``; ``url`` must be the batch's endpoint and
``body.model`` a model with a topic. Every problem is a ``BatchError``-shaped dict naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_ERRORS = 100  # enough to fix a file by; the rest would only repeat


@dataclass(frozen=True)
class InputLine:
    number: int  # 1-based, as editors count
    custom_id: str
    model: str
    body: dict[str, Any]


def _error(number: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": f"line {number}: {message}", "param": param, "line": number}


def _check(number: int, text: str, endpoint: str, topics: Mapping[str, str]) -> InputLine | dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as err:
        return _error(number, "invalid_json_line", f"not valid JSON ({err})")
    if not isinstance(obj, dict):
        return _error(number, "invalid_json_line", "must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error(number, "missing_required_parameter", "custom_id: required, a non-empty string", "custom_id")
    if obj.get("method", "POST") != "POST":
        return _error(number, "invalid_request", f"method: must be POST, got {obj.get('method')!r}", "method")
    if obj.get("url") != endpoint:
        return _error(number, "mismatched_endpoint",
                      f"url: {obj.get('url')!r} is not the batch's endpoint {endpoint!r}", "url")
    body = obj.get("body")
    if not isinstance(body, dict):
        return _error(number, "invalid_request", "body: required, a JSON object", "body")
    if body.get("stream"):
        return _error(number, "invalid_request", "body.stream: a batch request cannot be streamed", "body.stream")
    model = body.get("model")
    if not isinstance(model, str) or model not in topics:
        known = ", ".join(sorted(topics))
        return _error(number, "model_not_found", f"body.model: {model!r} is not served here (known: {known})",
                      "body.model")
    return InputLine(number, custom_id, model, body)


def read_input(
    path: Path, endpoint: str, topics: Mapping[str, str], max_lines: int
) -> tuple[list[InputLine], list[dict[str, Any]]]:
    """The file's lines and its errors (at most ``MAX_ERRORS``); the batch may start only without errors."""
    lines: list[InputLine] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                errors.append(_error(number, "invalid_json_line", "not UTF-8"))
                continue
            if not text.strip():
                continue
            checked = _check(number, text, endpoint, topics)
            if isinstance(checked, dict):
                errors.append(checked)
            elif checked.custom_id in seen:
                errors.append(_error(number, "duplicate_custom_id",
                                     f"custom_id: {checked.custom_id!r} is already used on line "
                                     f"{seen[checked.custom_id]}", "custom_id"))
            else:
                seen[checked.custom_id] = number
                lines.append(checked)
            if len(errors) >= MAX_ERRORS:
                break
    if not lines and not errors:
        errors.append({"code": "empty_file", "message": "the input file has no requests", "param": "input_file_id",
                       "line": None})
    if len(lines) > max_lines:
        errors.append({"code": "too_many_requests", "message": f"{len(lines)} requests: at most {max_lines} per batch",
                       "param": "input_file_id", "line": None})
    return lines, errors
