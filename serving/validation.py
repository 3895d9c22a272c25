"""Parse request bodies and turn pydantic errors, v2 tensors and bad text into ``InvalidInput`` naming the field."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from serving.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


# Below this size a body parses faster than a hop to a worker thread would take.
INLINE_JSON_BYTES = 64 << 10


def parse_json(body: bytes, prefix: str = "") -> Any:
    """A JSON body, parsed once by orjson: nesting beyond 1024 levels, NaN, numbers beyond float64,
    lone surrogates and invalid UTF-8 are a 400 (the stdlib parser accepts the last two and raises
    ``RecursionError`` on deep nesting). Text that is not Unicode is named by its field."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        where = _text_error_at(body)
        if where is not None:
            problem = "not valid Unicode text (a lone surrogate or invalid UTF-8)"
            raise InvalidInput(field_path(prefix, where), problem) from err
        raise InvalidInput(prefix or "body", f"not valid JSON: {err}") from err


async def read_json(body: bytes, prefix: str = "") -> Any:
    """``parse_json``, off the event loop for a large body so other requests and probes are not held up."""
    if len(body) <= INLINE_JSON_BYTES:
        return parse_json(body, prefix)
    return await asyncio.to_thread(parse_json, body, prefix)


def _text_error_at(body: bytes) -> tuple[int | str, ...] | None:
    """Where the first string that is not Unicode sits in a body orjson rejected, if that is why.

    The stdlib parser keeps lone surrogate escapes, and ``surrogateescape`` turns invalid UTF-8 bytes
    into lone surrogates too, so both show up as strings that do not encode.
    """
    try:
        value = json.loads(body.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return None
    pending: list[tuple[tuple[int | str, ...], Any]] = [((), value)]
    while pending:  # iterative: the document may be deep
        loc, item = pending.pop()
        if isinstance(item, str) and not _encodes(item):
            return loc
        if isinstance(item, dict):
            for key, child in reversed(item.items()):
                if not _encodes(key):
                    return loc
                pending.append(((*loc, key), child))
        elif isinstance(item, list):
            pending.extend(((*loc, i), child) for i, child in reversed(list(enumerate(item))))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def utf8_size(text: Any, field: str) -> int:
    """The UTF-8 size of a request string; anything else, or a string with a lone surrogate (which
    no tokenizer takes), is an ``InvalidInput`` naming ``field``."""
    if not isinstance(text, str):
        raise InvalidInput(field, f"expected a string, got {type(text).__name__}")
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise InvalidInput(field, f"not valid Unicode text: lone surrogate at character {err.start}") from err


def check_count(count: int, limit: int, field: str, what: str = "items") -> None:
    if count > limit:
        raise InvalidInput(field, f"{count} {what} exceed the limit of {limit}")


def parse_model(model: type[M], data: Any, prefix: str = "") -> M:
    if not isinstance(data, Mapping):
        raise InvalidInput(prefix or "body", f"expected a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        problem = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidInput(field_path(prefix, tuple(first["loc"])), problem) from err


def v1_instances(body: Any, max_instances: int) -> list[Any]:
    if not isinstance(body, Mapping):
        raise InvalidInput("body", f"expected a JSON object with 'instances', got {type(body).__name__}")
    instances = body.get("instances")
    if instances is None:
        raise InvalidInput("instances", "required")
    if not isinstance(instances, list):
        raise InvalidInput("instances", f"expected a list, got {type(instances).__name__}")
    if not instances:
        raise InvalidInput("instances", "must not be empty")
    check_count(len(instances), max_instances, "instances", "instances")
    return instances


def v2_texts(request: Any, name: str, max_instances: int) -> list[str]:
    """The strings of BYTES input ``name`` of a KServe ``InferRequest`` (REST or gRPC)."""
    tensor = next((i for i in request.inputs if i.name == name), None)
    if tensor is None:
        found = ", ".join(i.name for i in request.inputs) or "none"
        raise InvalidInput("inputs", f"expected an input named {name!r} (found: {found})")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"inputs.{name}.datatype", f"expected BYTES, got {tensor.datatype}")
    try:
        values = np.asarray(tensor.as_numpy(), dtype=object).reshape(-1).tolist()
    except Exception as err:  # malformed shape or data from the client
        raise InvalidInput(f"inputs.{name}", f"cannot read tensor: {err}") from err
    if list(tensor.shape) != [len(values)]:
        raise InvalidInput(f"inputs.{name}.shape", f"expected [N] matching {len(values)} values, got {tensor.shape}")
    if not values:
        raise InvalidInput(f"inputs.{name}", "must not be empty")
    check_count(len(values), max_instances, f"inputs.{name}", "values")
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInput(f"inputs.{name}[{i}]", "not valid UTF-8") from err
        utf8_size(value, f"inputs.{name}[{i}]")
        texts.append(value)
    return texts


def plain_parameters(parameters: Any) -> dict[str, Any]:
    """Request parameters as plain Python values; gRPC sends ``InferParameter`` messages."""
    plain = {}
    for name, value in dict(parameters or {}).items():
        which = getattr(value, "WhichOneof", None)
        plain[name] = getattr(value, which("parameter_choice")) if which and which("parameter_choice") else value
    return plain


def documented_body(schema: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that parses its JSON body itself (FastAPI would parse a declared
    body with the stdlib parser, outside these limits); the schema is inlined, as the app's
    components do not hold it."""
    if isinstance(schema, dict):
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
    raw = schema.model_json_schema()
    defs = raw.pop("$defs", {})

    def inline(node: Any) -> Any:  # our request models are not recursive
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    return documented_body(inline(raw))
