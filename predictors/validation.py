"""Turn pydantic validation errors and v2 tensors into ``InvalidInput`` naming the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from predictors.errors import InvalidInput

M = TypeVar("M", bound=BaseModel)


def field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


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
    if len(instances) > max_instances:
        raise InvalidInput("instances", f"{len(instances)} instances exceed the limit of {max_instances}")
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
    if len(values) > max_instances:
        raise InvalidInput(f"inputs.{name}", f"{len(values)} values exceed the limit of {max_instances}")
    texts = []
    for i, value in enumerate(values):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InvalidInput(f"inputs.{name}[{i}]", "not valid UTF-8") from err
        if not isinstance(value, str):
            raise InvalidInput(f"inputs.{name}[{i}]", f"expected a string, got {type(value).__name__}")
        texts.append(value)
    return texts


def plain_parameters(parameters: Any) -> dict[str, Any]:
    """Request parameters as plain Python values; gRPC sends ``InferParameter`` messages."""
    plain = {}
    for name, value in dict(parameters or {}).items():
        which = getattr(value, "WhichOneof", None)
        plain[name] = getattr(value, which("parameter_choice")) if which and which("parameter_choice") else value
    return plain
