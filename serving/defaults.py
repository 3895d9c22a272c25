"""A default read from the pydantic model that owns it, so parsers and other configs never restate one."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def default_of(model: type[BaseModel], field: str) -> Any:
    """``model``'s default for ``field``; a field without one is a programming error (KeyError)."""
    info = model.model_fields[field]
    if info.is_required():
        raise KeyError(f"{model.__name__}.{field} has no default")
    return info.get_default(call_default_factory=True)
